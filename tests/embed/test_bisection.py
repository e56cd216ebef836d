"""Bisection keeps every result that was paid for.

When a batch is refused for one bad text and, while it is split, one half
runs out of retries, the other half's vectors were already billed: they must
be written, and only the exhausted half dead-lettered as ``embed_failed``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from beamvec import records as r
from beamvec.backends.base import Backend, Limits
from beamvec.embed.bisection import embed_with_bisection
from beamvec.embed.embedder import Embedder, EmbedSettings
from beamvec.errors import BackendError, ErrorKind, SystemicError
from beamvec.records import Record, content_hash
from beamvec.retry import RetriesExhausted, RetryPolicy, is_bad_input

TEXTS = [f"text number {i}" for i in range(8)]
BAD = "text number 1"  # the one text the API refuses (a 400)
DOWN = {"text number 5"}  # a part holding this text only ever gets 503s


def vector_of(text: str) -> np.ndarray:
    return np.full(4, float(len(text) + TEXTS.index(text)), dtype=np.float32)


class HalfDown(Backend):
    """400 for any request holding BAD; 503 for any request holding a DOWN
    text; vectors otherwise. Records every request it answered with vectors."""

    name = "half-down"

    def __init__(self) -> None:
        self.billed: list[list[str]] = []
        self.requests = 0

    @property
    def limits(self) -> Limits:
        return Limits(max_items=100, max_request_tokens=10_000, max_text_tokens=1000, dimension=4)

    @property
    def model(self) -> str:
        return "stub"

    def embed(self, texts: Sequence[str], titles: Sequence[str | None] | None = None) -> np.ndarray:
        self.requests += 1
        if BAD in texts:
            raise BackendError("400 invalid text", kind=ErrorKind.BAD_INPUT, status=400)
        if DOWN & set(texts):
            raise BackendError("503 unavailable", kind=ErrorKind.TRANSIENT, status=503)
        self.billed.append(list(texts))
        return np.stack([vector_of(t) for t in texts])


def batch() -> list[Record]:
    return [Record(f"r{i}", t, content_hash(t), 3, False, i) for i, t in enumerate(TEXTS)]


FAST = RetryPolicy(max_attempts=2, base_delay=0.0, max_delay=0.0)


def test_a_half_that_succeeded_is_kept_when_its_sibling_runs_out_of_retries() -> None:
    backend = HalfDown()
    embedder = Embedder(backend, EmbedSettings(max_in_flight=1, retry=FAST))
    try:
        embedded, letters = embedder.embed_batch(batch())
    finally:
        embedder.close()
    # [0..7] 400 -> [0..3] 400 -> [0,1] 400 -> [0] ok, [1] 400; [2,3] ok; [4..7] 503 x2
    by_id = {e.record.id: e.vector for e in embedded}
    assert sorted(by_id) == ["r0", "r2", "r3"]
    for rid, vec in by_id.items():
        np.testing.assert_array_equal(vec, vector_of(TEXTS[int(rid[1:])]))
    reasons = {d.id: d.reason for d in letters}
    assert reasons == {
        "r1": r.BAD_REQUEST,
        "r4": r.EMBED_FAILED, "r5": r.EMBED_FAILED, "r6": r.EMBED_FAILED, "r7": r.EMBED_FAILED,
    }
    assert {d.status for d in letters if d.reason == r.EMBED_FAILED} == {503}
    assert all(d.attempts == 2 for d in letters if d.reason == r.EMBED_FAILED)
    # every record accounted for once; every text billed at most once
    assert len(embedded) + len(letters) == len(TEXTS)
    billed = [t for part in backend.billed for t in part]
    assert sorted(billed) == sorted(TEXTS[i] for i in (0, 2, 3))
    assert embedder.stats.snapshot()["dead_letters"] == 5


def test_fail_on_exhausted_still_stops_the_run() -> None:
    embedder = Embedder(HalfDown(), EmbedSettings(max_in_flight=1, retry=FAST, fail_on_exhausted=True))
    try:
        with pytest.raises(SystemicError, match="--fail-on-exhausted"):
            embedder.embed_batch(batch())
    finally:
        embedder.close()


def test_bisection_reports_an_exhausted_part_item_by_item() -> None:
    gave_up = RetriesExhausted(TimeoutError("slow"), 3, "timeout")

    def call(part: list[int]) -> list[int]:
        if 1 in part:
            raise BackendError("400", kind=ErrorKind.BAD_INPUT, status=400)
        if 6 in part:
            raise gave_up
        return [x * 10 for x in part]

    done, failed = embed_with_bisection(
        list(range(8)), call, is_bad_input, lambda e: isinstance(e, RetriesExhausted)
    )
    assert [x for part, _ in done for x in part] == [0, 2, 3]
    assert [res for _, res in done] == [[0], [20, 30]]
    assert [item for item, _ in failed] == [1, 4, 5, 6, 7]
    assert [exc is gave_up for _, exc in failed] == [False, True, True, True, True]
    # without gave_up, the exhausted part still propagates (the caller stops)
    with pytest.raises(RetriesExhausted):
        embed_with_bisection(list(range(8)), call, is_bad_input)


class TooLong(HalfDown):
    """The server names the text it counts over its limit (a 400 about length)."""

    def embed(self, texts: Sequence[str], titles: Sequence[str | None] | None = None) -> np.ndarray:
        from beamvec.backends.google_errors import TextTooLong

        self.requests += 1
        if BAD in texts:
            raise TextTooLong("400 the input token count exceeds the maximum", culprit=texts.index(BAD))
        self.billed.append(list(texts))
        return np.stack([vector_of(t) for t in texts])


def test_a_text_the_server_counts_too_long_is_dead_lettered_as_too_long_without_bisection() -> None:
    backend = TooLong()
    embedder = Embedder(backend, EmbedSettings(max_in_flight=1, retry=FAST))
    try:
        embedded, letters = embedder.embed_batch(batch())
    finally:
        embedder.close()
    assert [d.reason for d in letters] == [r.TEXT_TOO_LONG] and letters[0].id == "r1"
    assert "too long" in letters[0].message
    assert sorted(e.record.id for e in embedded) == [f"r{i}" for i in range(8) if i != 1]
    assert backend.requests == 2  # the batch, then the rest together: no bisection
