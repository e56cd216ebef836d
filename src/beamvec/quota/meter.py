"""The rate a server actually accepted, measured from our own successes.

On a 429 the question is "how fast does the server let me send?". The answer
is in the requests it accepted: those sent over the last ``span`` seconds,
plus the server's hint of how long until it accepts again. From an empty
window this is exact whatever the window's length: L requests accepted,
the first at t0, the 429 at t1 saying "retry in h" mean L per (t1 + h - t0).
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
        self._sent: deque[float] = deque()
        self._booked: deque[tuple[float, bool]] = deque()  # (send time, whether pacing held it)
        self._held_since: float | None = None  # first send of the current run of held bookings
        self._busy_since: float | None = None
        self._last_ask: float | None = None
        self.latency_s: float | None = None  # a moving average of send to success

    def settled_after(self, now: float) -> float:
        """When the replies to requests sent by ``now`` should all be in."""
        return now + 2.0 * (self.latency_s or 0.0) + 0.05

    def on_send(self, asked: float, at: float) -> None:
        """A request asked for at ``asked`` is booked to leave at ``at``. Busy
        periods go by when requests are asked for: a hold delays sends, not demand."""
        held = at - asked > 1e-3
        if not held:
            self._held_since = None
        elif self._held_since is None:
            self._held_since = at
        self._booked.append((at, held))
        while self._booked and self._booked[0][0] < at - 2 * self.span_s:
            self._booked.popleft()
        if self._last_ask is None or asked - self._last_ask > self.idle_s:
            self._busy_since = at
        self._last_ask = asked if self._last_ask is None else max(self._last_ask, asked)

    def on_success(self, sent_at: float, now: float) -> None:
        self._sent.append(sent_at)
        took = max(0.0, now - sent_at)
        self.latency_s = took if self.latency_s is None else 0.9 * self.latency_s + 0.1 * took
        while self._sent and self._sent[0] < sent_at - 2 * self.span_s:
            self._sent.popleft()

    def busy_for(self, now: float) -> float:
        """Seconds since the current busy period began (0: none yet)."""
        return 0.0 if self._busy_since is None else max(0.0, now - self._busy_since)

    @property
    def held_since(self) -> float | None:
        """Since when every booking waited for pacing (None: the last one did not)."""
        return self._held_since

    def _span(self, until: float, hint_s: float, since: float | None = None) -> tuple[float, float] | None:
        """(start, seconds) of a measurement up to ``until``: from the latest
        of ``span_s`` ago, the start of the busy period and ``since``, to the
        end of the server's hint. None before any request."""
        if self._busy_since is None:
            return None
        start = max(until - self.span_s, self._busy_since, -math.inf if since is None else since)
        return start, until - start + max(0.0, hint_s)

    def sent_rate(self, until: float, hint_s: float) -> float | None:
        """Requests sent in ``[start, until)`` of the busy period, per second of
        ``until - start + hint_s``: at the first 429 of a burst the server
        accepted what arrived before it, though few replies are in yet."""
        span = self._span(until, hint_s)
        if span is None:
            return None
        start, seconds = span
        count = sum(1 for t, _ in self._booked if start <= t < until)
        return count / seconds if count and seconds > 0 else None

    def accepted_rate(
        self, until: float, hint_s: float, since: float | None = None, min_count: int = 5,
        min_span_s: float = 0.2,
    ) -> float | None:
        """Successes sent in ``[start, until]`` per second of ``until - start + hint_s``,
        where ``start`` is the latest of ``span_s`` ago, the start of the busy
        period and ``since``; None when too few requests were seen to say."""
        span = self._span(until, hint_s, since)
        if span is None:
            return None
        start, seconds = span
        count = sum(1 for t in self._sent if start <= t <= until)
        if count < min_count or seconds < min_span_s:
            return None
        return count / seconds
