"""Prepare: every kind of bad text becomes a dead letter with its own reason."""

from __future__ import annotations

import pytest

from beamvec import records as r
from beamvec.records import DeadLetter, RawRecord, ReadError, Record
from beamvec.route.prepare import PrepareConfig, normalize, prepare


def count(text: str) -> int:
    return len(text.split())


def cut(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


def run(raw: RawRecord | ReadError, **config) -> Record | DeadLetter:
    return prepare(raw, PrepareConfig(max_text_tokens=5, **config), count, cut)


def test_good_record_hashes_exactly_the_text_sent():
    out = run(RawRecord(3, "a", "  Caf\u0065\u0301 au lait  ", {"k": 1}))
    assert isinstance(out, Record)
    assert out.text == "Caf\u00e9 au lait"  # NFC and stripped
    assert out.content_hash == r.content_hash("Caf\u00e9 au lait")
    assert (out.tokens, out.truncated, out.position, out.metadata) == (3, False, 3, {"k": 1})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (RawRecord(1, "a", ""), r.EMPTY_TEXT),
        (RawRecord(1, "a", " \t\n "), r.EMPTY_TEXT),
        (RawRecord(1, "a", None), r.MISSING_TEXT),
        (RawRecord(1, "a", 42), r.NON_STRING_TEXT),
        (RawRecord(1, "a", ["x"]), r.NON_STRING_TEXT),
        (RawRecord(1, "a", "bad \ud800 surrogate"), r.INVALID_UTF8),
        (ReadError(1, None, r.INVALID_JSON, detail="Expecting value"), r.INVALID_JSON),
    ],
)
def test_bad_input_is_dead_lettered_with_its_reason(raw, reason):
    out = run(raw)
    assert isinstance(out, DeadLetter)
    assert out.reason == reason
    assert out.position == raw.position
    assert out.message


def test_long_text_is_truncated_and_flagged_by_default():
    out = run(RawRecord(1, "a", "one two three four five six seven"))
    assert isinstance(out, Record)
    assert out.truncated and out.tokens == 5
    assert out.text == "one two three four five"
    assert out.content_hash == r.content_hash("one two three four five")


def test_long_text_can_be_dead_lettered_instead():
    out = run(RawRecord(1, "a", "one two three four five six"), on_long_text="dead-letter")
    assert isinstance(out, DeadLetter) and out.reason == r.TEXT_TOO_LONG


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("none", " a  b\u0065\u0301 "), ("strip", "a  b\u0065\u0301"), ("nfc", "a  b\u00e9"), ("collapse", "a b\u00e9")],
)
def test_normalization_modes(mode, expected):
    assert normalize(" a  b\u0065\u0301 ", mode) == expected
