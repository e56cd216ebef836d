"""A discrete-event simulation of workers, their limiters and a metering server.

Each worker has ``slots`` request threads (started at once, or over ``ramp``
seconds): book (``reserve``), wait, book
again if a 429 came meanwhile (``held``), wait for what late requests pushed
it back (``pushed``), as ``Limiter.acquire`` does; leave, ``late`` seconds late
on average (exponentially; reported with ``on_left``, as the HTTP trace
does), and arrive after a little jitter; the
server meters accepted requests (and tokens) over a window that slides, resets
at its boundaries or refills as a bucket (``QuotaServer``), and answers at
once with a 429 and its retry hint (to the millisecond, in whole seconds, or
none), or after ``latency`` with a success; the thread then reports to its
limiter, with the send time it booked, and books its next request (a 429 is
retried after its hint). Requests carry the client's token estimate; the
server counts ``count_factor`` times that (its tokenizer is not ours). All on
simulated time; no threads, no sleeping.
"""

from __future__ import annotations

import heapq
import math
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from beamvec.quota import Limiter
from beamvec.quota.lateness import Due


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


WindowKind = Literal["sliding", "fixed", "bucket"]
HintShape = Literal["exact", "seconds", "none"]


class QuotaServer:
    """A server's quota of ``max_requests`` and ``max_tokens`` per ``window_s``,
    metered as real servers do: a sliding window (the emulator's rule: an
    event at t counts in every window (s - W, s] with t <= s), a window that
    resets at multiples of ``window_s`` from ``origin``, or a bucket holding a
    window's worth that refills evenly. ``try_acquire`` answers (accepted,
    the exact wait until the request would fit, and which limit it hit)."""

    def __init__(self, kind: WindowKind, window_s: float, max_requests: int | None,
                 max_tokens: float | None = None, origin: float = 0.0) -> None:
        self.kind, self.window_s, self.origin = kind, window_s, origin
        self.max_requests, self.max_tokens = max_requests, max_tokens
        self._events: deque[tuple[float, float]] = deque()
        self._requests, self._tokens = 0.0, 0.0  # in the window (sliding, fixed) or spent (bucket)
        self._period = -math.inf
        self._last = -math.inf

    def _advance(self, now: float) -> None:
        if self.kind == "sliding":
            while self._events and self._events[0][0] <= now - self.window_s:
                _, tokens = self._events.popleft()
                self._requests -= 1
                self._tokens -= tokens
        elif self.kind == "fixed":
            period = math.floor((now - self.origin) / self.window_s)
            if period != self._period:
                self._period, self._requests, self._tokens = period, 0.0, 0.0
        else:
            dt = 0.0 if self._last == -math.inf else max(0.0, now - self._last)
            self._last = now
            if self.max_requests is not None:
                self._requests = max(0.0, self._requests - dt * self.max_requests / self.window_s)
            if self.max_tokens is not None:
                self._tokens = max(0.0, self._tokens - dt * self.max_tokens / self.window_s)

    def _wait(self, used: float, amount: float, limit: float, spent: int) -> float:
        """How long until ``amount`` more fits under ``limit`` (0: it fits now)."""
        if used + amount <= limit + 1e-9:
            return 0.0
        if self.kind == "fixed":
            return self.origin + (self._period + 1) * self.window_s - self._now
        if self.kind == "bucket":
            return (used + amount - limit) * self.window_s / limit
        excess, freed = used + amount - limit, 0.0
        for when, tokens in self._events:  # sliding: until enough leaves the window
            freed += 1 if spent == 0 else tokens
            if freed >= excess - 1e-9:
                return when + self.window_s - self._now
        return self.window_s

    def try_acquire(self, now: float, tokens: float = 0.0) -> tuple[bool, float, str]:
        self._now = now
        self._advance(now)
        wait_r = wait_t = 0.0
        if self.max_requests is not None:
            wait_r = self._wait(self._requests, 1.0, self.max_requests, 0)
        if self.max_tokens is not None:
            wait_t = self._wait(self._tokens, tokens, self.max_tokens, 1)
        if wait_r > 0 or wait_t > 0:
            return False, max(wait_r, wait_t, 0.001), "requests" if wait_r >= wait_t else "tokens"
        self._events.append((now, tokens))
        self._requests += 1
        self._tokens += tokens
        return True, 0.0, ""


def shaped(wait: float, hint: HintShape) -> float | None:
    """The retry hint a server gives for an exact ``wait``: as is (RetryInfo
    to the millisecond), rounded down to whole seconds as the Gemini API's
    retryDelay is ("58s" for 58.93 s; the limiter is told it is a floor), or
    none (Vertex, often)."""
    if hint == "exact":
        return wait
    if hint == "seconds":
        return float(math.floor(wait))
    return None


@dataclass
class Outcome:
    accepted: list[float] = field(default_factory=list)  # arrival times of accepted requests
    rejected: int = 0
    by_worker: dict[int, int] = field(default_factory=dict)  # accepted per worker
    finished: dict[int, float] = field(default_factory=dict)  # when each worker's work was done
    counted: list[float] = field(default_factory=list)  # tokens the server counted, per accepted request
    refused_for: list[str] = field(default_factory=list)  # the limit each 429 hit ("requests", "tokens")

    def rate(self, start: float, end: float) -> float:
        return sum(1 for t in self.accepted if start <= t < end) / (end - start)

    def token_rate(self, start: float, end: float) -> float:
        """Tokens per second the server accepted (as it counts them) in [start, end)."""
        return sum(n for t, n in zip(self.accepted, self.counted, strict=True) if start <= t < end) / (end - start)

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
    window: WindowKind = "sliding",
    hint: HintShape = "exact",
    server_tpm: float | None = None,
    tokens: float | Callable[[random.Random], float] = 0.0,
    count_factor: float = 1.0,
    reports_counts: bool = False,
    says_quota: bool = True,
) -> Outcome:
    """Run until ``seconds`` of simulated time have passed; worker w starts
    ``starts[w]`` seconds in (default: at once) and has work until
    ``busy_until[w]`` seconds (default: all along), or until ``work[w]`` of its
    requests were accepted. ``ramp``: a worker's threads start one by one over
    that many seconds, as a pipeline's do while its shards open (pacing then
    holds only the last of its first requests). ``preflight``: each job's
    driver sent one request that many seconds before its worker started,
    which the server counts and the limiter is told of (``sent_before``).
    ``window``, ``hint``: how the server meters and what its 429 says;
    ``server_tpm``: its token limit per ``window_s`` (``server_limit`` None:
    no request limit); ``tokens``: each request's estimate, as booked with
    the limiter; the server counts ``count_factor`` times that and, with
    ``reports_counts``, says so in each reply (``Limiter.calibrate``); with
    ``says_quota`` a 429 says which limit it hit (the Gemini API's QuotaFailure)."""
    rng = random.Random(seed)
    origin = clock.now + random.Random(seed + 1).uniform(0, window_s)  # the fixed windows' phase
    server = QuotaServer(window, window_s, server_limit, server_tpm, origin=origin)
    start = clock.now
    out = Outcome()
    # (time, seq, kind, worker, asked, sent, retry hint, ok, due, estimated tokens):
    # kind "book", "send", "leave", "arrive" or "reply"
    events: list[tuple[float, int, str, int, float, float, float | None, bool, Due | None, float | None]] = []
    seq = 0
    refused: dict[tuple[int, float], str] = {}  # the limit a 429 hit, by (worker, send time)
    unbooked = list(work) if work is not None else [-1] * len(limiters)  # -1: no end

    def push(t: float, kind: str, w: int, sent: float = 0.0, asked: float = 0.0,
             hint: float | None = None, ok: bool = True, due: Due | None = None,
             est: float | None = None) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, w, asked, sent, hint, ok, due, est))

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
        t, _, kind, w, asked, sent, wait_s, ok, due, est = heapq.heappop(events)
        if t > end:
            break
        clock.now = t
        limiter = limiters[w]
        if kind == "book":
            if busy_until is not None and t - start > busy_until[w]:
                continue
            if est is None:  # a new request (a refused or held one is booked again with its tokens)
                if unbooked[w] == 0:
                    continue
                unbooked[w] -= 1
                est = tokens(rng) if callable(tokens) else float(tokens)
            wait = limiter.reserve(est)
            push(t + wait, "send", w, asked=t, due=limiter.due(), est=est)
        elif kind == "send":
            if limiter.held(asked, t):  # as Limiter.acquire: a 429 while it waited, book again
                push(t, "book", w, est=est)
                continue
            push(t, "leave", w, sent=t, asked=asked, due=due, est=est)
        elif kind == "leave":
            assert due is not None
            due, extra = limiter.pushed(due)
            if extra > 0:  # late requests before it pushed it back: wait that
                push(t + extra, "leave", w, sent=sent, asked=asked, due=due, est=est)
                continue
            left = t + (rng.expovariate(1.0 / late) if late > 0 else 0.0)
            limiter.on_left(left, due=due)
            # reported with its booked send time, as acquire's on_success does
            push(left + abs(rng.gauss(0, jitter)), "arrive", w, sent=sent, asked=asked, est=est)
        elif kind == "arrive":
            counted = round((est or 0.0) * count_factor)
            accepted, wait, limit = server.try_acquire(t, counted)
            if accepted:
                out.accepted.append(t)
                out.counted.append(counted)
                out.by_worker[w] = out.by_worker.get(w, 0) + 1
                push(t + latency, "reply", w, sent=sent, asked=asked, ok=True, est=est)
            else:
                out.rejected += 1
                out.refused_for.append(limit)
                refused[(w, sent)] = limit
                push(t + 0.002, "reply", w, sent=sent, asked=asked, hint=shaped(wait, hint), ok=False, est=est)
        else:
            if ok:
                limiter.on_success(booked=(asked, sent), tokens=est or 0.0)
                if reports_counts and est:
                    limiter.calibrate(est, round(est * count_factor))
                if work is not None and out.by_worker[w] == work[w]:
                    out.finished[w] = t
                push(t, "book", w)
            else:
                said = refused.pop((w, sent), None) if says_quota else None
                limiter.on_throttled(wait_s, booked=(asked, sent), floor=hint == "seconds", quota=said)
                push(t + (wait_s or 0.0), "book", w, est=est)
    return out
