"""Embed one batch: quota, retry, bisection of bad requests, and the counts.

One ``Embedder`` per worker process serves every shard that process works on,
through a thread pool of ``max_in_flight`` requests, so that latency does not
cap throughput whether shards are large or tiny. Counts are kept here, thread
safe, and handed to Beam's metrics by the DoFn (Beam counters only count on
the thread that runs the DoFn).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from beamvec import counters as c
from beamvec import records as r
from beamvec.backends.base import Backend
from beamvec.backends.google_errors import TextTooLong
from beamvec.embed.bisection import embed_with_bisection
from beamvec.errors import BackendError, ErrorKind, Interrupted, SystemicError
from beamvec.interrupt import STOP
from beamvec.progress import PROGRESS
from beamvec.quota import AdaptiveLimiter
from beamvec.records import DeadLetter, Embedded, Record
from beamvec.retry import RetriesExhausted, RetryPolicy, error_status, is_bad_input


@dataclass(frozen=True)
class EmbedSettings:
    max_in_flight: int = 4
    retry: RetryPolicy = RetryPolicy()
    fail_on_exhausted: bool = False


class Stats:
    """Thread-safe counters, read as deltas by whoever reports them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, key: str, amount: float = 1) -> None:
        with self._lock:
            self._counts[key] += amount

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._counts)


def estimated_tokens(items: Sequence[Record]) -> float:
    """What a request will count against a tokens-per-minute quota, as the
    limiter books it: the records' token estimates (``prepare``). The limiter
    learns how the server's count differs (``quota/scale.py``), from the
    counts the backend reports where the service tells them."""
    return float(sum(item.tokens for item in items))


class Embedder:
    def __init__(
        self,
        backend: Backend,
        settings: EmbedSettings,
        limiter: AdaptiveLimiter | None = None,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.limiter = limiter
        self.stats = Stats()
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, settings.max_in_flight), thread_name_prefix="beamvec-embed"
        )

    def submit(self, batch: list[Record]) -> Future[tuple[list[Embedded], list[DeadLetter]]]:
        return self._pool.submit(self.embed_batch, batch)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- one request -------------------------------------------------------

    def _request(self, items: Sequence[Record]) -> np.ndarray:
        estimate = estimated_tokens(items)
        gate = _Gate(self, estimate)
        titles = [item.title for item in items]
        try:
            vectors = self.backend.embed_paced(
                [item.text for item in items], titles if any(titles) else None, gate
            )
        except BackendError as exc:
            self.stats.add(c.status_of(exc.status))
            if exc.throttled:
                self.stats.add(c.THROTTLED_429)
                if self.limiter is not None:
                    self.limiter.on_throttled(exc.retry_after, floor=exc.hint_floor, quota=exc.quota)
            raise
        finally:
            self.stats.add(c.IN_FLIGHT, -gate.sent)
        if self.limiter is not None:
            self.limiter.on_success()
            counted = self.backend.server_tokens()
            if counted is not None:
                self.limiter.calibrate(estimate, counted)
        self.stats.add(c.TEXTS, len(items))
        self.stats.add(c.TOKENS, sum(item.tokens for item in items))
        return vectors

    def _on_retry(self, exc: BaseException, attempt: int, wait: float) -> None:
        self.stats.add(c.retries_of(error_status(exc) or type(exc).__name__))
        self.stats.add(c.RETRIES)

    def _call(self, items: list[Record]) -> np.ndarray:
        return self.settings.retry.call(self._request, items, on_retry=self._on_retry, sleep=_sleep)

    # -- one batch ---------------------------------------------------------

    def embed_batch(self, batch: list[Record]) -> tuple[list[Embedded], list[DeadLetter]]:
        """Vectors for the batch's records, or dead letters with the reason.

        The backend's error kinds decide: bad input is bisected so that only
        the offending texts are dead-lettered; a systemic fault stops the run
        with the backend's one-line message; exhausted retries dead-letter the
        batch (or stop the run with ``fail_on_exhausted``)."""
        # With --fail-on-exhausted the first exhausted part stops the run at
        # once; otherwise it is dead-lettered and its siblings carry on.
        gave_up = None if self.settings.fail_on_exhausted else _is_exhausted
        try:
            done, failed = embed_with_bisection(batch, self._call, is_bad_input, gave_up, _longest)
        except RetriesExhausted as exc:
            raise SystemicError(
                f"retries exhausted ({exc}) and --fail-on-exhausted is set; committed "
                "shards stay committed: rerun the same command when the API is back"
            ) from exc
        except BackendError as exc:
            if exc.kind is ErrorKind.SYSTEMIC:
                raise SystemicError(str(exc).splitlines()[0]) from exc
            raise
        embedded = [
            Embedded(rec, vec) for items, vectors in done for rec, vec in zip(items, vectors, strict=True)
        ]
        letters = [_dead_letter(rec, exc) for rec, exc in failed]
        if letters:
            self.stats.add(c.DEAD_LETTERS, len(letters))
        return embedded, letters


def _is_exhausted(exc: BaseException) -> bool:
    return isinstance(exc, RetriesExhausted)


def _dead_letter(rec: Record, exc: BaseException) -> DeadLetter:
    """Why ``rec`` was not embedded: its retries ran out (transient, worth a
    retry later) or the API refused its text (for good)."""
    if isinstance(exc, RetriesExhausted):
        return DeadLetter(
            rec.id, rec.position, r.EMBED_FAILED, f"retries exhausted: {exc.last_exception}",
            attempts=exc.attempts, status=exc.status if isinstance(exc.status, int) else None,
            content_hash=rec.content_hash,
        )
    if isinstance(exc, TextTooLong):  # cut by the safe bound, yet over the server's count
        return DeadLetter(
            rec.id, rec.position, r.TEXT_TOO_LONG, f"too long for the API: {exc}", rec.text[:200],
            attempts=1, status=exc.status, content_hash=rec.content_hash,
        )
    return DeadLetter(
        rec.id, rec.position, r.BAD_REQUEST, f"rejected by the API: {exc}", rec.text[:200],
        attempts=1, status=getattr(exc, "status", None), content_hash=rec.content_hash,
    )


def _longest(part: list[Record]) -> int:
    """The record likeliest to be the one a server counts over its limit."""
    return max(range(len(part)), key=lambda i: (part[i].tokens, len(part[i].text)))


def _sleep(seconds: float) -> None:
    """A wait between retries that a stopping run cuts short."""
    if STOP.wait(seconds):
        raise Interrupted("the run stopped while a batch waited to be retried")


class _Gate:
    """What runs around each request of one batch (see ``Backend.embed_paced``):
    the limiter's wait and the request counts before it leaves, and the
    limiter told when it left.

    A batch is usually one request; where a backend sends several (one per
    title, or one per text), each waits its turn and the batch's tokens are
    booked with the first."""

    def __init__(self, embedder: Embedder, tokens: float) -> None:
        self._embedder = embedder
        self._tokens = tokens
        self.sent = 0

    def __call__(self) -> None:
        embedder = self._embedder
        STOP.check()
        if embedder.limiter is not None:
            waited = embedder.limiter.acquire(0.0 if self.sent else self._tokens)
            if waited:
                embedder.stats.add(c.THROTTLED_MS, waited * 1000.0)  # summed over threads
                PROGRESS.waited(waited)  # as wall time, for the line and the summary
        STOP.check()  # nothing leaves once the run is stopping
        self.sent += 1
        embedder.stats.add(c.REQUESTS)
        embedder.stats.add(c.IN_FLIGHT)  # a gauge: up now, down when the answer is in

    def left(self, at: float) -> None:
        if self._embedder.limiter is not None:
            self._embedder.limiter.on_left(at)
