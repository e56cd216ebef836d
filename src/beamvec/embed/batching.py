"""API-sized batches: at most N items and at most T estimated tokens each.

Written by hand rather than with Beam's BatchElements because batches must be
token-aware and are filled, inside one worker process, from every shard that
process has open (see collector.py), while each shard is read, embedded and
written by that one worker, streaming.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from beamvec.records import Record

T = TypeVar("T", bound=Record)


def batches(records: Iterable[T], max_items: int, max_tokens: int) -> Iterator[list[T]]:
    """Greedy, order-preserving batches within both limits.

    A single record over ``max_tokens`` (only possible when the per-text limit
    exceeds the per-request one) travels alone rather than being dropped.
    """
    if max_items < 1 or max_tokens < 1:
        raise ValueError("batch limits must be positive")
    batch: list[T] = []
    tokens = 0
    for record in records:
        if batch and (len(batch) >= max_items or tokens + record.tokens > max_tokens):
            yield batch
            batch, tokens = [], 0
        batch.append(record)
        tokens += record.tokens
    if batch:
        yield batch


def by_length(records: list[T]) -> list[T]:
    """Records in order of token count: a batch of similar lengths pads less,
    which is what the local model's time goes on. Stable, so ties keep input order."""
    return sorted(records, key=lambda record: record.tokens)
