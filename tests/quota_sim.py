"""A discrete-event simulation of workers, their limiters and a metering server.

Each worker has ``slots`` request threads (started at once, or over ``ramp``
seconds): book (``reserve``), wait, book
again if a 429 came meanwhile (``held``), wait for what late requests pushed
it back (``pushed``), as ``Limiter.acquire`` does; leave, ``late`` seconds late
on average (exponentially; reported with ``on_left``, as the HTTP trace
does), and arrive after a little jitter; the
server meters accepted requests over a sliding window (the emulator's own
``SlidingWindowQuota``) and answers at once with a 429 and its retry hint, or
after ``latency`` with a success; the thread then reports to its limiter, with
the send time it booked, and books its next request (a 429 is retried after
its hint). All on simulated time; no threads, no sleeping.
"""

from __future__ import annotations

import heapq
import random
import threading
from dataclasses import dataclass, field

from beamvec.emulator.window import SlidingWindowQuota
from beamvec.quota import Limiter
from beamvec.quota.limiter import Due


class FakeClock:
    """Simulated time: moves only when a test (or a fake sleep) moves it.
    Sleeps from several threads add up (the lock), as real ones would not:
    tests of concurrent callers count on each sleep moving time on."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@dataclass
class Outcome:
    accepted: list[float] = field(default_factory=list)  # arrival times of accepted requests
    rejected: int = 0
    by_worker: dict[int, int] = field(default_factory=dict)  # accepted per worker
    finished: dict[int, float] = field(default_factory=dict)  # when each worker's work was done

    def rate(self, start: float, end: float) -> float:
        return sum(1 for t in self.accepted if start <= t < end) / (end - start)

    def throttled_fraction(self) -> float:
        total = len(self.accepted) + self.rejected
        return self.rejected / total if total else 0.0


def simulate(
    limiters: list[Limiter],
    clock: FakeClock,
    *,
    server_limit: int,
    window_s: float,
    seconds: float,
    slots: int = 8,
    latency: float = 0.2,
    jitter: float = 0.005,
    busy_until: list[float] | None = None,
    work: list[int] | None = None,
    late: float = 0.0,
    ramp: float = 0.0,
    starts: list[float] | None = None,
    seed: int = 0,
    preflight: float | None = None,
) -> Outcome:
    """Run until ``seconds`` of simulated time have passed; worker w starts
    ``starts[w]`` seconds in (default: at once) and has work until
    ``busy_until[w]`` seconds (default: all along), or until ``work[w]`` of its
    requests were accepted. ``ramp``: a worker's threads start one by one over
    that many seconds, as a pipeline's do while its shards open (pacing then
    holds only the last of its first requests). ``preflight``: each job's
    driver sent one request that many seconds before its worker started,
    which the server counts and the limiter is told of (``sent_before``)."""
    rng = random.Random(seed)
    server = SlidingWindowQuota(window_s, server_limit, None)
    start = clock.now
    out = Outcome()
    # (time, seq, kind, worker, asked, sent, retry hint, ok, due): kind "book", "send", "leave", "arrive" or "reply"
    events: list[tuple[float, int, str, int, float, float, float | None, bool, Due | None]] = []
    seq = 0
    unbooked = list(work) if work is not None else [-1] * len(limiters)  # -1: no end

    def push(t: float, kind: str, w: int, sent: float = 0.0, asked: float = 0.0,
             hint: float | None = None, ok: bool = True, due: Due | None = None) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, w, asked, sent, hint, ok, due))

    for w in range(len(limiters)):
        offset = starts[w] if starts is not None else 0.0
        for k in range(slots):
            push(start + offset + ramp * k / slots + rng.uniform(0, 0.05), "book", w)
    if preflight is not None:  # sent before the simulation starts, in the order they were
        offsets = sorted((starts[w] if starts is not None else 0.0, w) for w in range(len(limiters)))
        assert preflight >= offsets[-1][0], "preflights are sent before the simulation starts"
        for offset, w in offsets:
            accepted, _, _ = server.try_acquire(start + offset - preflight, 0)
            assert accepted, "a preflight into an empty window always fits"
            limiters[w].sent_before(preflight - offset)
    end = start + seconds
    while events:
        t, _, kind, w, asked, sent, hint, ok, due = heapq.heappop(events)
        if t > end:
            break
        clock.now = t
        limiter = limiters[w]
        if kind == "book":
            if busy_until is not None and t - start > busy_until[w] or unbooked[w] == 0:
                continue
            unbooked[w] -= 1
            wait = limiter.reserve()
            push(t + wait, "send", w, asked=t, due=limiter.due())
        elif kind == "send":
            if limiter.held(asked):  # as Limiter.acquire: a 429 while it waited, book again
                unbooked[w] += 1
                push(t, "book", w)
                continue
            push(t, "leave", w, sent=t, asked=asked, due=due)
        elif kind == "leave":
            assert due is not None
            due, extra = limiter.pushed(due)
            if extra > 0:  # late requests before it pushed it back: wait that
                push(t + extra, "leave", w, sent=sent, asked=asked, due=due)
                continue
            left = t + (rng.expovariate(1.0 / late) if late > 0 else 0.0)
            limiter.on_left(left, due=due)
            # reported with its booked send time, as acquire's on_success does
            push(left + abs(rng.gauss(0, jitter)), "arrive", w, sent=sent, asked=asked)
        elif kind == "arrive":
            accepted, wait, _ = server.try_acquire(t, 0)
            if accepted:
                out.accepted.append(t)
                out.by_worker[w] = out.by_worker.get(w, 0) + 1
                push(t + latency, "reply", w, sent=sent, asked=asked, ok=True)
            else:
                out.rejected += 1
                push(t + 0.002, "reply", w, sent=sent, asked=asked, hint=wait, ok=False)
        else:
            if ok:
                limiter.on_success(booked=(asked, sent))
                if work is not None and out.by_worker[w] == work[w]:
                    out.finished[w] = t
                push(t, "book", w)
            else:
                limiter.on_throttled(hint, booked=(asked, sent))
                unbooked[w] += 1
                push(t + (hint or 0.0), "book", w)
    return out
