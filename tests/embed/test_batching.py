"""Batching: never more than N items or T tokens, order kept, nothing dropped."""

from __future__ import annotations

import random

import pytest

from beamvec.embed.batching import batches
from beamvec.records import Record


def rec(i: int, tokens: int) -> Record:
    return Record(str(i), "x", "h", tokens, False, i)


def test_limits_hold_and_order_is_kept():
    rng = random.Random(7)
    items = [rec(i, rng.randint(1, 300)) for i in range(1000)]
    out = list(batches(items, max_items=100, max_tokens=2000))
    assert [x.id for b in out for x in b] == [x.id for x in items]
    assert all(len(b) <= 100 for b in out)
    assert all(sum(x.tokens for x in b) <= 2000 for b in out)
    # greedy: a batch is cut only when the next item would not fit
    for b, nxt in zip(out, out[1:], strict=False):
        assert len(b) == 100 or sum(x.tokens for x in b) + nxt[0].tokens > 2000


def test_101_items_never_make_one_batch():
    out = list(batches([rec(i, 1) for i in range(101)], max_items=100, max_tokens=10**6))
    assert [len(b) for b in out] == [100, 1]


def test_oversized_item_travels_alone():
    out = list(batches([rec(0, 5), rec(1, 50), rec(2, 5)], max_items=10, max_tokens=20))
    assert [[x.id for x in b] for b in out] == [["0"], ["1"], ["2"]]


def test_empty_input_and_bad_limits():
    assert list(batches([], 10, 10)) == []
    with pytest.raises(ValueError):
        list(batches([rec(0, 1)], 0, 10))
