"""Quota meters in the three ways real servers count: a sliding window, a
fixed window that resets at wall-clock boundaries, and a token bucket.

Each meters requests and tokens per ``window_s`` (None: unlimited) and answers
``try_acquire(now, tokens)`` with (accepted, seconds until it would fit, which
limit it hit: "requests" or "tokens"). ``now`` is wall-clock seconds, so fixed
windows start on the minute as Google's do. Not thread-safe: the server calls
these under its own lock.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

from beamvec.emulator.config import WINDOW_KINDS


class Quota(Protocol):
    def try_acquire(self, now: float, tokens: int) -> tuple[bool, float, str]: ...


def _verdict(wait_requests: float, wait_tokens: float) -> tuple[bool, float, str]:
    if wait_requests > 0 or wait_tokens > 0:
        limit = "requests" if wait_requests >= wait_tokens else "tokens"
        return False, max(wait_requests, wait_tokens, 0.001), limit
    return True, 0.0, ""


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
        ok, wait, limit = _verdict(wait_requests, wait_tokens)
        if ok:
            self._events.append((now, tokens))
            self._tokens += tokens
        return ok, wait, limit


class FixedWindowQuota:
    """Counters that reset at every multiple of ``window_s`` of wall-clock time."""

    def __init__(self, window_s: float, max_requests: int | None, max_tokens: int | None) -> None:
        self.window_s = window_s
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self._window = -1
        self._requests = 0
        self._tokens = 0

    def try_acquire(self, now: float, tokens: int) -> tuple[bool, float, str]:
        window = math.floor(now / self.window_s)
        if window != self._window:
            self._window, self._requests, self._tokens = window, 0, 0
        boundary = (window + 1) * self.window_s - now
        wait_requests = 0.0
        if self.max_requests is not None and self._requests + 1 > self.max_requests:
            wait_requests = boundary
        wait_tokens = 0.0
        if self.max_tokens is not None and self._tokens + tokens > self.max_tokens:
            # a request larger than the whole quota never fits: say a window
            wait_tokens = boundary if tokens <= self.max_tokens else self.window_s
        ok, wait, limit = _verdict(wait_requests, wait_tokens)
        if ok:
            self._requests += 1
            self._tokens += tokens
        return ok, wait, limit


class TokenBucketQuota:
    """Buckets holding ``limit`` at most, refilled continuously at ``limit /
    window_s`` a second; a request takes one from the request bucket and its
    tokens from the token bucket. They start full, so a burst of a whole
    window's quota is accepted at once."""

    def __init__(self, window_s: float, max_requests: int | None, max_tokens: int | None) -> None:
        self.window_s = window_s
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self._level_requests = float(max_requests or 0)
        self._level_tokens = float(max_tokens or 0)
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        if self._last is not None:
            elapsed = max(0.0, now - self._last)
            if self.max_requests is not None:
                rate = self.max_requests / self.window_s
                self._level_requests = min(self.max_requests, self._level_requests + elapsed * rate)
            if self.max_tokens is not None:
                rate = self.max_tokens / self.window_s
                self._level_tokens = min(self.max_tokens, self._level_tokens + elapsed * rate)
        self._last = now

    def try_acquire(self, now: float, tokens: int) -> tuple[bool, float, str]:
        self._refill(now)
        wait_requests = 0.0
        if self.max_requests is not None and self._level_requests < 1:
            wait_requests = (1 - self._level_requests) * self.window_s / self.max_requests
        wait_tokens = 0.0
        if self.max_tokens is not None and self._level_tokens < tokens:
            if tokens > self.max_tokens:
                wait_tokens = self.window_s
            else:
                wait_tokens = (tokens - self._level_tokens) * self.window_s / self.max_tokens
        ok, wait, limit = _verdict(wait_requests, wait_tokens)
        if ok:
            if self.max_requests is not None:
                self._level_requests -= 1
            if self.max_tokens is not None:
                self._level_tokens -= tokens
        return ok, wait, limit


def make_quota(
    kind: str, window_s: float, max_requests: int | None, max_tokens: int | None
) -> Quota:
    """The meter of a kind: "sliding", "fixed" or "bucket"."""
    if kind == "sliding":
        return SlidingWindowQuota(window_s, max_requests, max_tokens)
    if kind == "fixed":
        return FixedWindowQuota(window_s, max_requests, max_tokens)
    if kind == "bucket":
        return TokenBucketQuota(window_s, max_requests, max_tokens)
    raise ValueError(f"quota_window must be one of {', '.join(WINDOW_KINDS)}, not {kind!r}")
