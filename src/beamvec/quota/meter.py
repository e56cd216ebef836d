"""The rate a server actually accepted, measured from our own successes.

On a 429 the question is "how fast does the server let me send?". The answer
is in the requests it accepted: those sent over the last ``span`` seconds,
plus the server's hint of how long until it accepts again. From an empty
window this is exact whatever the window's length: L requests accepted,
the first at t0, the 429 at t1 saying "retry in h" mean L per (t1 + h - t0).
The window is empty at t0 only if nobody sent before: the driver's preflight
did, and when it is still in the window, t0 is its send time (``on_before``).
"""

from __future__ import annotations

import math
from collections import deque


class SuccessMeter:
    """Send times of the requests that succeeded, over the last ``span_s``.

    Not thread-safe: the limiter calls it under its own lock."""

    def __init__(self, span_s: float = 60.0, idle_s: float = 5.0) -> None:
        self.span_s = span_s
        self.idle_s = idle_s  # a gap this long without sends starts a new busy period
        self._sent: deque[tuple[float, float]] = deque()  # (send time, tokens)
        self._booked: deque[tuple[float, bool, float]] = deque()  # (send time, whether pacing held it, tokens)
        self._held_since: float | None = None  # first send of the current run of held bookings
        self._busy_since: float | None = None
        self._demand_until: float | None = None  # the latest ask or booked send
        self._before: float | None = None  # a request sent for this quota by someone else first
        self._before_weight = 0.0  # how much of it counts as ours
        self.latency_s: float | None = None  # a moving average of send to success

    def settled_after(self, now: float) -> float:
        """When the replies to requests sent by ``now`` should all be in."""
        return now + 2.0 * (self.latency_s or 0.0) + 0.05

    def on_send(self, asked: float, at: float, tokens: float = 0.0) -> None:
        """A request asked for at ``asked`` is booked to leave at ``at``. Busy
        periods go by demand: asks, and callers waiting for their booked
        time. A hold delays sends, not demand: after a 429's 30-s hint the
        busy period goes on, and the 429 can be measured."""
        held = at - asked > 1e-3
        if not held:
            self._held_since = None
        elif self._held_since is None:
            self._held_since = at
        self._booked.append((at, held, tokens))
        while self._booked and self._booked[0][0] < at - 2 * self.span_s:
            self._booked.popleft()
        if self._demand_until is None or asked - self._demand_until > self.idle_s:
            self._busy_since = at
        self._demand_until = at if self._demand_until is None else max(self._demand_until, at)

    def on_refused(self, retry_at: float) -> None:
        """A request was refused and waits to be sent again at ``retry_at``: demand until then."""
        if self._demand_until is not None:
            self._demand_until = max(self._demand_until, retry_at)

    def on_before(self, at: float, weight: float = 1.0) -> None:
        """One request was sent for this quota at ``at``, before any of this
        meter's (the driver's preflight; ``weight`` of it counts as ours: a
        worker's share of its job). If the server's window began with it, a
        measurement from the start of the busy period counts it and its time:
        from ``at`` the window is the server's own, which two jobs share
        exactly, where from the first request of ours it is short by the gap
        between them (1 s before a 6-s window: 17 %)."""
        self._before, self._before_weight = at, weight

    def on_success(self, sent_at: float, now: float, tokens: float = 0.0) -> None:
        self._sent.append((sent_at, tokens))
        took = max(0.0, now - sent_at)
        self.latency_s = took if self.latency_s is None else 0.9 * self.latency_s + 0.1 * took
        while self._sent and self._sent[0][0] < sent_at - 2 * self.span_s:
            self._sent.popleft()

    def busy_for(self, now: float) -> float:
        """Seconds since the current busy period began (0: none yet)."""
        return 0.0 if self._busy_since is None else max(0.0, now - self._busy_since)

    @property
    def held_since(self) -> float | None:
        """Since when every booking waited for pacing (None: the last one did not)."""
        return self._held_since

    def _span(self, until: float, hint_s: float, since: float | None = None,
              tokens: bool = False, counts_before: bool = True) -> tuple[float, float, float] | None:
        """(start, seconds, requests before ours) of a measurement up to
        ``until``: from the latest of ``span_s`` ago, the start of the busy
        period and ``since`` (or from the request before ours, see
        ``_opened_by_before``), to the end of the server's hint. None before
        any request. Without ``counts_before``, never from the request before ours."""
        if self._busy_since is None:
            return None
        start = max(until - self.span_s, self._busy_since, -math.inf if since is None else since)
        hint_s = max(0.0, hint_s)
        # The request before ours is one request, but a handful of tokens: a
        # token window refuses when ours fill it, and frees when ours leave it.
        before = None if tokens or not counts_before else self._opened_by_before(start, until, hint_s)
        if before is not None:
            return before, until - before + hint_s, self._before_weight
        return start, until - start + hint_s, 0.0

    def gap_before(self, until: float, hint_s: float) -> float:
        """Seconds from the request before ours to our first, if the server's
        window began with it (0 if not): after a 429 at ``until``, its slot
        frees at the hint, and the next only this much later."""
        busy = self._busy_since
        before = None if busy is None else self._opened_by_before(busy, until, max(0.0, hint_s))
        return 0.0 if busy is None or before is None else busy - before

    def _opened_by_before(self, start: float, until: float, hint_s: float) -> float | None:
        """When the request before ours was sent, if the server's window began
        with it. Our first request opened the window (the measurement's usual
        assumption) only if the one before had left it by ``until``, which
        its hint rules out when longer than the gap between the two: the
        window then started with the request before. The measurement must
        start with our busy period, which is the one right after that request
        (only its first booking, let through at once, was not held)."""
        before, busy = self._before, self._busy_since
        if before is None or busy is None or until - self.span_s > before:
            return None
        if not 0.0 <= busy - before < min(hint_s, self.idle_s):
            return None
        if sum(1 for t, _, _ in self._booked if busy <= t < start) > 1:
            return None
        return before

    def sent_rate(self, until: float, hint_s: float, tokens: bool = False, counts_before: bool = True) -> float | None:
        """Requests (or their ``tokens``) sent in ``[start, until)`` of the busy
        period, per second of ``until - start + hint_s``: at the first 429 of a
        burst the server accepted what arrived before it, though few replies are in yet."""
        span = self._span(until, hint_s, tokens=tokens, counts_before=counts_before)
        if span is None:
            return None
        start, seconds, before = span
        count = before + sum(n if tokens else 1 for t, _, n in self._booked if start <= t < until)
        return count / seconds if count and seconds > 0 else None

    def accepted_rate(
        self, until: float, hint_s: float, since: float | None = None, min_count: int = 5,
        min_span_s: float = 0.2, tokens: bool = False, counts_before: bool = True,
    ) -> float | None:
        """Successes sent in ``[start, until]`` per second of ``until - start + hint_s``,
        where ``start`` is the latest of ``span_s`` ago, the start of the busy
        period and ``since`` (with ``tokens``: their tokens); None when too few
        requests were seen to say."""
        span = self._span(until, hint_s, since, tokens, counts_before)
        if span is None:
            return None
        start, seconds, before = span
        count = before + sum(1 for t, _ in self._sent if start <= t <= until)
        if count < min_count or seconds < min_span_s:
            return None
        if tokens:
            return sum(n for t, n in self._sent if start <= t <= until) / seconds
        return count / seconds
