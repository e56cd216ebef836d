"""Sliding windows: the quota a server enforces, and the peak it observed.

An event at time ``t`` counts in every window ``(s - window_s, s]`` with
``t <= s``; quota and peak use the same rule, so an emulator that enforces
``rpm`` per window never reports a peak above it. Not thread-safe: the
server calls these under its own lock.
"""

from __future__ import annotations

from collections import deque


class SlidingWindowQuota:
    """Requests and tokens per window over the requests it accepted."""

    def __init__(self, window_s: float, max_requests: int | None, max_tokens: int | None) -> None:
        self.window_s = window_s
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self._events: deque[tuple[float, int]] = deque()
        self._tokens = 0

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.window_s:
            _, tokens = self._events.popleft()
            self._tokens -= tokens

    def try_acquire(self, now: float, tokens: int) -> tuple[bool, float, str]:
        """Accept (and record) a request, or say how long until it would fit
        and which limit it hit ("requests" or "tokens")."""
        self._expire(now)
        wait_requests = 0.0
        if self.max_requests is not None and len(self._events) + 1 > self.max_requests:
            # The request that must leave the window first.
            leaving = len(self._events) + 1 - self.max_requests
            wait_requests = self._events[leaving - 1][0] + self.window_s - now
        wait_tokens = 0.0
        if self.max_tokens is not None and self._tokens + tokens > self.max_tokens:
            excess = self._tokens + tokens - self.max_tokens
            freed = 0
            wait_tokens = self.window_s  # a request larger than the whole quota
            for when, spent in self._events:
                freed += spent
                if freed >= excess:
                    wait_tokens = when + self.window_s - now
                    break
        if wait_requests > 0 or wait_tokens > 0:
            limit = "requests" if wait_requests >= wait_tokens else "tokens"
            return False, max(wait_requests, wait_tokens, 0.001), limit
        self._events.append((now, tokens))
        self._tokens += tokens
        return True, 0.0, ""


class WindowPeak:
    """The most events, and the largest weight, seen in any one window."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self._weight = 0
        self.peak_count = 0
        self.peak_weight = 0

    def add(self, now: float, weight: int = 0) -> None:
        while self._events and self._events[0][0] <= now - self.window_s:
            _, old = self._events.popleft()
            self._weight -= old
        self._events.append((now, weight))
        self._weight += weight
        self.peak_count = max(self.peak_count, len(self._events))
        self.peak_weight = max(self.peak_weight, self._weight)
