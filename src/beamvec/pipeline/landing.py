"""Where a part's sent texts land: results come back from any thread (the
one that finished a batch) through a queue, so that only the part's own
thread writes its files."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from beamvec.interrupt import SETTLE_S, STOP
from beamvec.pipeline.shard_files import ShardSink
from beamvec.records import DeadLetter, Embedded, Record


class Landing:
    """Where a shard's sent and followed texts land, from any thread.

    A shard waiting for its texts never waits on a worker that failed
    (``fault``) and, once the run is stopping, at most ``SETTLE_S`` more:
    whatever cannot land by then is not coming."""

    def __init__(self, fault: Callable[[], BaseException | None] = lambda: None) -> None:
        self.queue: queue.SimpleQueue[tuple[Record, Any]] = queue.SimpleQueue()
        self.outstanding = 0  # touched by the shard's own thread only
        self.fault = fault

    def deliver(self, record: Record, outcome: np.ndarray | DeadLetter | BaseException) -> None:
        self.queue.put((record, outcome))

    def _waited(self, stopping_since: float | None) -> float | None:
        """After a second with nothing landed: raise what ended the wait, if anything did."""
        fault = self.fault()
        if fault is not None:
            raise fault
        if not STOP.requested:
            return None
        now = time.monotonic()
        if stopping_since is not None and now - stopping_since > SETTLE_S:
            STOP.check()
        return stopping_since if stopping_since is not None else now

    def drain(self, sink: ShardSink, block: bool) -> None:
        stopping_since: float | None = None
        while self.outstanding:
            try:
                record, outcome = self.queue.get(block=block, timeout=1.0 if block else None)
            except queue.Empty:
                if block:
                    stopping_since = self._waited(stopping_since)
                    continue
                return
            self.outstanding -= 1
            if isinstance(outcome, BaseException):
                raise outcome
            if isinstance(outcome, DeadLetter):
                sink.failed[outcome.reason] += 1
                sink.dead_letter(_for(record, outcome))
            else:
                sink.add(Embedded(record, outcome))


def _for(record: Record, letter: DeadLetter) -> DeadLetter:
    """The sent text's dead letter, addressed to a record that shares the text."""
    if letter.id == record.id and letter.position == record.position:
        return letter
    return DeadLetter(
        record.id, record.position, letter.reason, f"same text as {letter.id}: {letter.message}",
        letter.raw, letter.attempts, letter.status, record.content_hash,
    )
