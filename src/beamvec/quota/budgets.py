"""A worker's budgets of requests and tokens per window, and the buckets that pace them.

A budget is told (``rpm``/``tpm`` times the worker's share) or found from
429s (``settle``); either is paced at the controller's current fraction
(pacing.py) by one reservation bucket each (bucket.py). Requests are booked
at one common time in both buckets: the later of what each allows.

Not thread-safe: the limiter calls it under its lock.
"""

from __future__ import annotations

from beamvec.quota.bucket import Clock, TokenBucket
from beamvec.quota.pacing import Pace, pace


class Budgets:
    """Per-window budgets at fraction 1 (None: not limited, or not yet known) and their buckets."""

    def __init__(self, requests: float | None, tokens: float | None, *, window_s: float, margin: float,
                 burst_requests: float, clock: Clock) -> None:
        self.requests, self.tokens = requests, tokens
        self.window_s, self.margin, self.burst_requests = window_s, margin, burst_requests
        self.fraction = 1.0
        self.largest_tokens = 1.0  # the largest request's tokens: the token bucket's burst
        self._clock = clock
        self.requests_bucket = self._bucket(self._pace(requests, burst_requests))
        self.tokens_bucket = self._bucket(self._pace(tokens, self.largest_tokens))
        self._applied = self._state()

    @property
    def paced(self) -> bool:
        """Whether a bucket spaces requests (told a quota, or one discovered)."""
        return self.requests_bucket is not None or self.tokens_bucket is not None

    def _pace(self, budget: float | None, burst: float) -> Pace | None:
        return None if budget is None else pace(budget, self.window_s, self.fraction, self.margin, burst)

    def _bucket(self, p: Pace | None) -> TokenBucket | None:
        return None if p is None else TokenBucket(p.rate_per_s, p.capacity, self._clock)

    def _state(self) -> tuple[float, float | None, float | None, float]:
        return self.fraction, self.requests, self.tokens, self.largest_tokens

    def apply(self, fraction: float, largest_tokens: float = 0.0) -> None:
        """Hand a changed fraction, budget or largest request to the buckets."""
        self.fraction = fraction
        self.largest_tokens = max(self.largest_tokens, largest_tokens)
        state = self._state()
        if state == self._applied:
            return
        self._applied = state
        for bucket, p in ((self.requests_bucket, self._pace(self.requests, self.burst_requests)),
                          (self.tokens_bucket, self._pace(self.tokens, self.largest_tokens))):
            if bucket is not None and p is not None:
                bucket.set_rate(p.rate_per_s, p.capacity)

    def earliest(self, at: float, tokens: float) -> tuple[float, bool | None]:
        """The earliest send time from ``at`` for one request of ``tokens``, and
        whether the token bucket (not the request bucket) set it (None: no
        token bucket had a say)."""
        if self.requests_bucket is not None:
            at = self.requests_bucket.earliest(1.0, at)
        if self.tokens_bucket is None or tokens <= 0:
            return at, None
        by_tokens = self.tokens_bucket.earliest(tokens, at)
        return by_tokens, by_tokens > at + 1e-6

    def book(self, at: float, tokens: float) -> None:
        if self.requests_bucket is not None:
            self.requests_bucket.book(1.0, at)
        if self.tokens_bucket is not None and tokens > 0:
            self.tokens_bucket.book(tokens, at)

    def push_back(self, seconds: float) -> None:
        """Every later booking leaves ``seconds`` later (a request left late)."""
        for bucket in (self.requests_bucket, self.tokens_bucket):
            if bucket is not None:
                bucket.push_back(seconds)

    def settle(self, per_s: float, *, tokens: bool) -> bool:
        """Discovery: pace requests (or tokens) at ``per_s``, the rate the server
        accepted, at fraction 1. Returns whether a bucket was created (pacing starts)."""
        self.fraction = 1.0
        if tokens:
            self.tokens = per_s * self.window_s
        else:
            self.requests = per_s * self.window_s
        self._applied = self._state()
        bucket = self.tokens_bucket if tokens else self.requests_bucket
        p = self._pace(self.tokens, self.largest_tokens) if tokens else self._pace(self.requests, self.burst_requests)
        assert p is not None
        if bucket is not None:
            bucket.set_rate(p.rate_per_s, p.capacity)
            return False
        if tokens:
            self.tokens_bucket = self._bucket(p)
        else:
            self.requests_bucket = self._bucket(p)
        return True

    def per_minute(self, budget: float | None) -> float | None:
        return None if budget is None else budget * self.fraction * 60.0 / self.window_s
