"""Token counts per script and per model, checked against published facts.

The expected figures are Google's, written here (never read from
``beamvec.backends.tokens``): "a token is about 4 characters for Gemini
models; 100 tokens are about 60-80 English words" (ai.google.dev, "Understand
and count tokens"); Chinese, Japanese and Korean about one token a character;
input limits 2,048 tokens (gemini-embedding-001, text-embedding-005) and 8,192
(gemini-embedding-2).
"""

from __future__ import annotations

import pytest

from beamvec import records as r
from beamvec.backends import tokens
from beamvec.records import DeadLetter, RawRecord, Record
from beamvec.route.prepare import PrepareConfig, prepare

ENGLISH = (
    "The committee met on Tuesday to review the budget for the coming year. "
    "Several members argued that the maintenance of the old bridge should come first, "
    "since inspectors had found cracks in two of its supports last winter. Others wanted "
    "the money spent on the library, which has not been renovated since it opened. "
    "After a long discussion, they agreed to ask the engineers for a detailed estimate "
    "before making a decision, and to meet again in three weeks."
)
CHINESE = (
    "北京是中华人民共和国的首都，也是全国的政治、文化和国际交往中心。"
    "这座城市有三千多年的建城史，保存着大量的历史遗迹，例如故宫、天坛和长城。"
    "每年都有数以百万计的游客来到这里参观。"
)
JAPANESE = "東京は日本の首都であり、世界でも有数の大都市です。多くの人々が毎日電車で通勤しています。"
KOREAN = "서울은 대한민국의 수도이며 가장 큰 도시입니다. 한강이 도시를 가로질러 흐릅니다."
SAMPLES = [ENGLISH, CHINESE, JAPANESE, KOREAN, "Москва — столица России.", "नमस्ते दुनिया",
           "مرحبا بالعالم", "emoji 🙂🎉 and symbols ★→∑", "0123456789", "a\n\n\tb", "ÀÉÎõü"]


def test_english_matches_googles_four_characters_and_60_to_80_words_per_100_tokens():
    n = tokens.estimate(ENGLISH)
    words = len(ENGLISH.split())
    assert words * 100 / 80 <= n <= words * 100 / 60
    assert abs(n - len(ENGLISH) / 4) <= 0.10 * len(ENGLISH) / 4


@pytest.mark.parametrize("text", [CHINESE, JAPANESE, KOREAN])
def test_cjk_is_about_one_token_a_character(text):
    letters = sum(1 for ch in text if not ch.isspace())
    assert abs(tokens.estimate(text) - letters) <= 0.10 * letters


def test_the_same_characters_cost_more_in_cjk_than_in_english():
    """The fixed 3-characters-a-token ratio undercounted Chinese threefold."""
    assert tokens.estimate(CHINESE) > 2.5 * len(CHINESE) / 3


def test_each_digit_is_a_token():
    """The Gemini tokenizer splits numbers into digits (Gemini report, 2023)."""
    assert tokens.estimate("0123456789") == 10 == tokens.upper_bound("0123456789")


@pytest.mark.parametrize("text", SAMPLES)
def test_the_upper_bound_is_never_below_the_estimate(text):
    for end in range(1, len(text) + 1, 7):
        assert tokens.upper_bound(text[:end]) >= tokens.estimate(text[:end])


def test_the_upper_bound_covers_byte_fallback_of_rare_characters():
    """A tokenizer that falls back to bytes spends at most one token per UTF-8 byte."""
    for ch in ("🙂", "𠀀", "★"):
        assert tokens.upper_bound(ch) >= len(ch.encode("utf-8"))


@pytest.mark.parametrize("text", SAMPLES)
@pytest.mark.parametrize("limit", [1, 5, 17])
def test_cut_keeps_the_longest_prefix_that_surely_fits(text, limit):
    kept = tokens.cut(text, limit)
    assert text.startswith(kept)
    assert tokens.upper_bound(kept) <= limit
    if kept != text:
        assert tokens.upper_bound(text[: len(kept) + 1]) > limit


def test_a_text_that_fits_is_not_cut():
    assert tokens.cut(ENGLISH, 2048) is ENGLISH


@pytest.mark.parametrize(
    ("script", "published_tokens_per_char"), [(ENGLISH, 1 / 4), (CHINESE, 1.0)]
)
def test_a_cut_text_is_within_the_limit_by_published_ratios_and_not_wasteful(script, published_tokens_per_char):
    long = script * (9000 // len(script) + 2)
    kept = tokens.cut(long, 2048)
    published = len(kept) * published_tokens_per_char
    assert published <= 2048  # the server, counting as Google says, accepts it
    assert published >= 0.70 * 2048  # and at most 30 % of the allowance is given up


@pytest.mark.parametrize(
    ("model", "limit"),
    [("gemini-embedding-001", 2048), ("models/gemini-embedding-001", 2048),
     ("text-embedding-005", 2048), ("text-multilingual-embedding-002", 2048),
     ("gemini-embedding-2", 8192), ("gemini-embedding-2-preview", 8192),
     ("publishers/google/models/gemini-embedding-2", 8192)],
)
def test_published_input_limits_per_model(model, limit):
    assert tokens.max_text_tokens(model) == limit


def test_prepare_cuts_a_cjk_text_the_old_ratio_let_through():
    """3,000 Chinese characters (~3,000 tokens) were sent whole under the old
    3-characters-a-token rule (1,000 'tokens') and answered 400."""
    text = (CHINESE * 30)[:3000]
    out = prepare(RawRecord(1, "a", text), PrepareConfig(max_text_tokens=2048), tokens.estimate, tokens.cut)
    assert isinstance(out, Record) and out.truncated
    assert len(out.text) <= 2048 and text.startswith(out.text)
    assert out.content_hash == r.content_hash(out.text)
    assert out.tokens <= 2048


def test_prepare_dead_letters_a_long_cjk_text_when_asked():
    text = (CHINESE * 30)[:3000]
    out = prepare(
        RawRecord(1, "a", text), PrepareConfig(max_text_tokens=2048, on_long_text="dead-letter"),
        tokens.estimate, tokens.cut,
    )
    assert isinstance(out, DeadLetter) and out.reason == r.TEXT_TOO_LONG
    assert "too long" in out.message and "\n" not in out.message


def test_prepare_leaves_english_under_the_limit_alone():
    text = (ENGLISH + " ") * 12  # ~5,000 characters: ~1,250 tokens at Google's 4 a token
    out = prepare(RawRecord(1, "a", text), PrepareConfig(max_text_tokens=2048), tokens.estimate, tokens.cut)
    assert isinstance(out, Record) and not out.truncated
    assert abs(out.tokens - len(out.text) / 4) <= 0.10 * len(out.text) / 4
