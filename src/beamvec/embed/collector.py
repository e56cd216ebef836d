"""Requests filled from every shard a worker process has open.

Shards hand the texts they must send to one ``Collector`` per process (shared
by every copy of the DoFn there, each bundle counted); it cuts
API-sized batches across them (``batching.batches``), sends a partial batch
only when no open shard is still reading, or after a short linger, and hands
each result back to the shard that asked. Tiny shards thus share requests:
1,000 shards of 20 texts cost 200 requests, not 1,000. The local model sorts
a window of texts by length before cutting batches (less padding); a partial
batch goes early only when the backend has a free slot.

A stopping run (``interrupt.STOP``) sends nothing more: texts not yet sent
are handed back to their shards as ``Interrupted`` at once, so no shard
waits for them. A result callback that raises is kept as ``fault``: the
shards waiting on this collector raise it rather than wait forever.

Back-pressure: ``add`` blocks while the process holds more unsent and
in-flight texts than ``max_outstanding``, so memory stays bounded by what is
in flight whatever the shard sizes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from beamvec.embed.batching import batches, by_length
from beamvec.errors import Interrupted
from beamvec.interrupt import STOP
from beamvec.records import DeadLetter, Embedded, Record

#: Seconds a partial batch waits for more texts while some shard is still reading.
LINGER_S = 0.25

Result = tuple[list[Embedded], list[DeadLetter]]
Submit = Callable[[list[Record]], "Future[Result]"]
#: Called with each finished batch's results (or what its call raised: a
#: systemic fault that stops the run), on the thread that finished it.
OnResult = Callable[[list[Record], "Result | BaseException"], None]


class Collector:
    def __init__(
        self,
        submit: Submit,
        on_result: OnResult,
        max_items: int,
        max_tokens: int,
        max_outstanding: int,
        sort_window: int = 0,
        linger_s: float = LINGER_S,
        max_in_flight: int = 1,
    ) -> None:
        self._submit = submit
        self._on_result = on_result
        self.max_items = max_items
        self.max_tokens = max_tokens
        self.max_outstanding = max(max_outstanding, max_items)
        self.window = max(sort_window, max_items)
        self.sort = sort_window > 0
        self.linger_s = linger_s
        self.max_in_flight = max(1, max_in_flight)
        self._batches = 0  # submitted and not yet done
        self._cond = threading.Condition()
        self._pending: list[Record] = []
        self._oldest = 0.0
        self._outstanding = 0  # pending + in flight
        self._readers = 0
        self._bundles = 0  # bundles still handing over shards, of every DoFn copy sharing this
        self._draining = False
        self._closed = False
        #: What a result callback raised: the shards waiting here raise it.
        self.fault: BaseException | None = None
        self._timer = threading.Thread(target=self._linger, name="beamvec-linger", daemon=True)
        self._timer.start()

    # -- shards ------------------------------------------------------------------

    def reader_started(self) -> None:
        with self._cond:
            self._readers += 1

    def reader_done(self) -> None:
        """A shard has read its last record: once no more shards are coming and
        none is reading, nothing can join the partial batch, so it goes now."""
        with self._cond:
            self._readers -= 1
            if self._readers <= 0 and self._draining:
                self._send(flush=True)

    def bundle_started(self) -> None:
        """A bundle of shards is arriving, on any of the DoFn copies that share
        this collector: a partial batch may still fill from it."""
        with self._cond:
            self._bundles += 1
            self._draining = False

    def bundle_ending(self) -> None:
        """A bundle has handed over its last shard. Once every bundle has (and
        no shard is reading), nothing can join the partial batch: it goes now.
        Called with no bundle open, it says no more shards are coming."""
        with self._cond:
            self._bundles = max(0, self._bundles - 1)
            if self._bundles == 0:
                self._draining = True
                if self._readers <= 0:
                    self._send(flush=True)

    def add(self, record: Record) -> None:
        with self._cond:
            while self._outstanding >= self.max_outstanding and not self._closed:
                STOP.check()
                self._cond.wait(0.5)
            STOP.check()
            if not self._pending:
                self._oldest = time.monotonic()
            self._pending.append(record)
            self._outstanding += 1
            if len(self._pending) >= self.window:
                self._send(flush=False)

    def flush(self) -> None:
        with self._cond:
            self._send(flush=True)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- batches -------------------------------------------------------------------

    def _send(self, flush: bool) -> None:
        """Cut batches from the pending texts; keep the last partial one unless flushing."""
        if not self._pending:
            return
        records = by_length(self._pending) if self.sort else self._pending
        cut = list(batches(records, self.max_items, self.max_tokens))
        keep = [] if flush else cut.pop()
        if not flush and len(keep) >= self.max_items:
            cut.append(keep)
            keep = []
        self._pending = keep
        self._oldest = time.monotonic()
        for batch in cut:
            self._batches += 1
            if STOP.requested:  # nothing more leaves: its shards learn it now
                self._finish(batch, Interrupted("the run stopped before this batch was sent"))
                continue
            future = self._submit(batch)
            future.add_done_callback(lambda f, b=batch: self._done(b, f))

    def _done(self, batch: list[Record], future: Future[Result]) -> None:
        if future.cancelled():
            self._finish(batch, RuntimeError("the batch was cancelled"))
        else:
            exc = future.exception()
            self._finish(batch, exc if exc is not None else future.result())

    def _finish(self, batch: list[Record], result: Result | BaseException) -> None:
        try:
            self._on_result(batch, result)
        except BaseException as exc:  # noqa: BLE001 - kept: the waiting shards raise it
            self.fault = self.fault or exc
        finally:
            with self._cond:
                self._outstanding -= len(batch)
                self._batches -= 1
                self._cond.notify_all()

    def _linger(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                # A partial batch goes early only to a backend with room for it:
                # while every slot is busy, waiting costs nothing and fills it.
                idle = self._batches < self.max_in_flight
                stale = time.monotonic() - self._oldest >= self.linger_s
                if self._pending and (STOP.requested or (idle and stale)):
                    self._send(flush=True)
            time.sleep(self.linger_s / 2)

