"""ASCII texts are counted without numpy (a C string pass instead of ~10 µs
of array calls a text): the counts must be exactly the weights' sums.

The weights are written here from the module's stated sources, never read
from ``beamvec.backends.tokens``: Latin letters, spaces and ASCII punctuation
4 characters a token (Google, "Understand and count tokens"), upper bound 3
characters; each digit one token (Gemini report: "splits digits") and each
newline one token, both weights; any other character (here: ASCII control
characters) 1 token, upper bound 3 (its bytes).
"""

from __future__ import annotations

import math
import random
import string
from fractions import Fraction

import pytest

from beamvec.backends import tokens

LATIN = set(string.ascii_letters + " \t\r" + string.punctuation)
CONTROL = [chr(c) for c in range(32) if chr(c) not in "\t\r\n"] + ["\x7f"]


def weight(ch: str, upper: bool) -> Fraction:
    if ch in LATIN:
        return Fraction(1, 3) if upper else Fraction(1, 4)
    if ch.isdigit() or ch == "\n":
        return Fraction(1)
    assert ch in CONTROL
    return Fraction(3) if upper else Fraction(1)


def expected_estimate(text: str) -> int:
    return max(1, round(sum(weight(ch, False) for ch in text))) if text else 0


def expected_cut(text: str, limit: int) -> str:
    running, keep = Fraction(0), 0
    for ch in text:
        running += weight(ch, True)
        if running > limit:
            break
        keep += 1
    return text[:keep]


def ascii_texts(seed: int, count: int) -> list[str]:
    """Short and long texts of letters with some digits, newlines, punctuation and control characters."""
    rnd = random.Random(seed)
    texts = ["", "a", "0", "\n", "\x01", "ab", "abcde", "aaaaaa"]  # halves round to even
    for _ in range(count):
        pool = (string.ascii_lowercase * 4 + " " * 3 + string.digits[: rnd.randint(0, 10)]
                + "\n" * rnd.randint(0, 2) + string.punctuation[: rnd.randint(0, 32)]
                + "".join(CONTROL[: rnd.randint(0, 3)]))
        texts.append("".join(rnd.choice(pool) for _ in range(rnd.choice([3, 40, 600, 1500, 6200, 9000]))))
    return texts


@pytest.mark.parametrize("text", ascii_texts(31, 60))
def test_ascii_estimate_is_the_weights_sum(text):
    assert tokens.estimate(text) == expected_estimate(text)


@pytest.mark.parametrize("limit", [1, 7, 512, 2048])
def test_ascii_cut_keeps_the_longest_prefix_within_the_upper_bound(limit):
    for text in ascii_texts(limit, 40):
        kept = tokens.cut(text, limit)
        assert kept == expected_cut(text, limit)
        assert tokens.upper_bound(kept) <= limit


def test_texts_at_the_limit_fit_exactly():
    """2,048 tokens of Latin letters at 3 a token: all 6,144 kept, one more is cut."""
    assert tokens.cut("a" * 6144, 2048) == "a" * 6144
    assert tokens.cut("a" * 6145, 2048) == "a" * 6144
    assert tokens.cut("7" * 2048, 2048) == "7" * 2048
    assert tokens.cut("7" * 2049, 2048) == "7" * 2048
    assert tokens.cut("\x01" * 700, 2048) == "\x01" * 682  # control characters: 3 each
    assert tokens.cut("a\n" * 1100, 2048) == ("a\n" * 1100)[:1536 * 2]  # 4/3 a pair
    assert math.isclose(tokens.estimate("a" * 6144), 1536)
