"""Request and token buckets with adaptive throttling, shared per process.

Embedding APIs meter a project in requests and tokens per minute, counted over
60-second windows. Each worker gets a ``share`` of those quotas (1/N for N
workers) and paces its requests with two reservation buckets, so the N workers
together stay under the quota without talking to each other. When the server
still answers 429 (another job uses the same project, or the quota is lower
than configured) the rate is cut multiplicatively and recovers additively
(AIMD), the way TCP shares a link.

Pure Python, no Beam: the DoFn reports the seconds waited to Beam's
``throttling-msecs`` counter itself.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]
Sleep = Callable[[float], None]

#: Waits shorter than this are rounding noise of summed float intervals, not pacing.
_EPS = 1e-9


class TokenBucket:
    """A reservation token bucket (GCRA): callers book amounts and are told
    how long to wait, instead of polling.

    Booking first and waiting afterwards makes concurrent callers queue in
    the order they asked (no thundering herd when tokens come back), and a
    booking may drive the balance negative: an amount larger than the
    capacity is never refused, it waits until the bucket has refilled enough
    to cover it. The amount sent in any interval of length T is at most
    ``max(capacity, largest amount) + rate * T``.

    State is one number, ``tat``: the time at which the bucket is full again.
    """

    def __init__(self, rate_per_s: float, capacity: float, clock: Clock = time.monotonic) -> None:
        _check_positive(rate_per_s, "rate_per_s")
        _check_positive(capacity, "capacity")
        self._rate = float(rate_per_s)
        self._capacity = float(capacity)
        self._clock = clock
        self._lock = threading.Lock()
        self._tat = clock()  # full at creation
        self._last_at = -math.inf  # the latest send time booked so far

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def capacity(self) -> float:
        return self._capacity

    def available(self) -> float:
        """Tokens available now (negative while reservations are outstanding)."""
        with self._lock:
            now = self._clock()
            return self._capacity - max(0.0, self._tat - now) * self._rate

    # The two halves of a reservation, for callers (AdaptiveLimiter) that must
    # book several buckets at one common time. Call them under your own lock
    # if the buckets are shared; each is atomic on its own.

    def earliest(self, amount: float, not_before: float) -> float:
        """The earliest time, not before ``not_before``, at which ``amount`` may be sent."""
        with self._lock:
            return self._earliest(amount, not_before)

    def _earliest(self, amount: float, not_before: float) -> float:
        threshold = self._tat + (amount - self._capacity) / self._rate
        return threshold if threshold > not_before + _EPS else not_before

    def _book(self, amount: float, at: float) -> None:
        # An oversized amount is debited early by its excess, so that the
        # balance climbs from (capacity - amount) back to 0 exactly at ``at``.
        excess = max(0.0, amount - self._capacity) / self._rate
        self._tat = max(self._tat, at - excess) + amount / self._rate
        self._last_at = max(self._last_at, at)

    def book(self, amount: float, at: float) -> None:
        """Book ``amount`` as sent at ``at`` (which must be ≥ ``earliest``)."""
        with self._lock:
            self._book(amount, at)

    def reserve(self, amount: float = 1.0) -> float:
        """Book ``amount`` and return the seconds to wait before sending it."""
        with self._lock:
            now = self._clock()
            at = self._earliest(amount, now)
            self._book(amount, at)
            return at - now

    def try_acquire(self, amount: float = 1.0) -> bool:
        """Take ``amount`` if it may be sent now; never waits, never books otherwise."""
        with self._lock:
            now = self._clock()
            if self._earliest(amount, now) > now:
                return False
            self._book(amount, now)
            return True

    def set_rate(self, rate_per_s: float, capacity: float | None = None) -> None:
        """Change the refill rate (and capacity), keeping outstanding debt in tokens.

        Sends already booked keep their times. A faster rate therefore only
        speeds up the repayment of debt after the last booked send (speeding up
        earlier debt would squeeze new sends between booked ones); a slower
        rate applies from now, which is the conservative side. A larger
        capacity starts empty."""
        _check_positive(rate_per_s, "rate_per_s")
        with self._lock:
            now = self._clock()
            if self._tat > now:
                pivot = now if rate_per_s < self._rate else max(now, self._last_at)
                self._tat = pivot + (self._tat - pivot) * self._rate / rate_per_s
            self._rate = float(rate_per_s)
            if capacity is not None:
                _check_positive(capacity, "capacity")
                if capacity > self._capacity:
                    # A bigger burst is earned by refilling, not granted at once:
                    # otherwise every small step up would hand out free tokens.
                    self._tat = max(self._tat, now) + (capacity - self._capacity) / self._rate
                self._capacity = float(capacity)


@dataclass(frozen=True)
class LimiterStats:
    """What a limiter did: for progress lines and the end-of-run summary."""

    waited_s: float  # total seconds callers were held back
    requests: int  # acquisitions granted
    tokens: float  # tokens granted
    throttled: int  # 429s reported
    cuts: int  # rate cuts (congestion events)
    fraction: float  # current rate as a fraction of the configured rate
    rpm: float | None  # current requests per minute of this limiter (None: unlimited)
    tpm: float | None  # current tokens per minute of this limiter (None: unlimited)


class AdaptiveLimiter:
    """The per-worker limiter: a request bucket, a token bucket and AIMD.

    Rates are ``rpm * share / 60`` requests and ``tpm * share / 60`` tokens per
    second (None means unlimited). The burst capacity is small, about one
    second of rate (at least one request): the server counts requests per
    60-second window, so a fresh worker must not fire a whole minute's quota
    at once. The burst is paid for out of the minute's budget (the refill rate
    is ``(budget - burst) / 60``; for tokens, ``burst`` is at least the largest
    request seen) so that the count in ANY 60-second window stays within
    ``rpm * share``, and N workers at share 1/N together stay within the
    quota. That costs about 1/60 of throughput. The guarantee needs a share of
    at least 2 requests a minute and requests of at most half the token share;
    below that a worker still sends (slowly) rather than stall.

    Adaptation: ``on_throttled()`` (a 429) halves the rate, at most once per
    ``cut_window`` seconds, because the 429s of requests already in flight
    report the same congestion event; the rate never drops below
    ``min_fraction`` of the configured rate. ``on_success()`` recovers
    additively in time, ``1 / recovery_s`` of the configured rate per second
    of successes, so a halved rate is back to full in about 30 s. Time-based
    recovery (not per-success) recovers equally fast at any request rate and
    does not snap back to the rate that was just throttled.

    Thread-safe; share one instance per process with ``shared_limiter``.
    """

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None = None,
        share: float = 1.0,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        burst_s: float = 1.0,
        slack_s: float = 0.5,
        decrease: float = 0.5,
        min_fraction: float = 0.05,
        cut_window: float = 1.0,
        recovery_s: float = 60.0,
        max_hold_s: float = 60.0,
        window_s: float = 60.0,
    ) -> None:
        _check_positive(window_s, "window_s")
        if rpm is not None:
            _check_positive(rpm, "rpm")
        if tpm is not None:
            _check_positive(tpm, "tpm")
        _check_positive(share, "share")
        if not 0.0 < decrease < 1.0:
            raise ValueError("decrease must be in (0, 1)")
        if not 0.0 < min_fraction <= 1.0:
            raise ValueError("min_fraction must be in (0, 1]")
        self.rpm = rpm
        self.tpm = tpm
        self.share = share
        self.burst_s = burst_s
        self.slack_s = slack_s
        self.decrease = decrease
        self.min_fraction = min_fraction
        self.cut_window = cut_window
        self.recovery_s = recovery_s
        self.max_hold_s = max_hold_s
        self.window_s = window_s  # the server's metering window; rpm/tpm are per window
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()

        self._request_budget = rpm * share if rpm is not None else None  # per minute
        self._token_budget = tpm * share if tpm is not None else None
        self._fraction = 1.0
        self._largest_tokens = 1.0
        self._last_send = -math.inf
        self._hold_until = -math.inf
        self._last_cut = -math.inf
        self._last_adjust = clock()

        self._waited = 0.0
        self._requests = 0
        self._tokens = 0.0
        self._throttled = 0
        self._cuts = 0

        self._requests_bucket = self._make_bucket(self._request_budget, 1.0)
        self._tokens_bucket = self._make_bucket(self._token_budget, self._largest_tokens)

    # -- rates ---------------------------------------------------------------

    def _rates(self, budget: float, unit: float) -> tuple[float, float]:
        """(refill per second, capacity) for a per-minute ``budget`` at the
        current fraction, such that ``max(capacity, unit) + 60 * refill`` stays
        within the budget (with a floor of half the rate for tiny budgets)."""
        effective = budget * self._fraction
        window = self.window_s
        capacity = max(1.0, effective * self.burst_s / window)
        reserved = max(capacity, unit)
        # A send booked at t reaches the server at t + a jitter (a busy GIL, thread
        # scheduling, the network): pace over a window ``slack_s`` longer, so that
        # arrivals, not only bookings, stay within the quota.
        refill = max(effective / (2 * window), (effective - reserved) / (window + self.slack_s))
        return refill, capacity

    def _make_bucket(self, budget: float | None, unit: float) -> TokenBucket | None:
        if budget is None:
            return None
        refill, capacity = self._rates(budget, unit)
        return TokenBucket(refill, capacity, self._clock)

    def _apply_rates(self) -> None:
        if self._requests_bucket is not None and self._request_budget is not None:
            self._requests_bucket.set_rate(*self._rates(self._request_budget, 1.0))
        if self._tokens_bucket is not None and self._token_budget is not None:
            self._tokens_bucket.set_rate(*self._rates(self._token_budget, self._largest_tokens))

    # -- acquiring -----------------------------------------------------------

    def reserve(self, tokens: float = 0.0) -> float:
        """Book one request of ``tokens`` and return the seconds to wait before
        sending it, without sleeping. Callers are served first come, first served."""
        tokens = max(0.0, float(tokens))
        with self._lock:
            now = self._clock()
            if self._tokens_bucket is not None and tokens > self._largest_tokens:
                self._largest_tokens = tokens
                self._apply_rates()
            at = max(now, self._hold_until, self._last_send)
            if self._requests_bucket is not None:
                at = self._requests_bucket.earliest(1.0, at)
            if self._tokens_bucket is not None and tokens > 0:
                at = self._tokens_bucket.earliest(tokens, at)
            if self._requests_bucket is not None:
                self._requests_bucket.book(1.0, at)
            if self._tokens_bucket is not None and tokens > 0:
                self._tokens_bucket.book(tokens, at)
            self._last_send = at
            wait = at - now
            self._waited += wait
            self._requests += 1
            self._tokens += tokens
            return wait

    def acquire(self, tokens: float = 0.0) -> float:
        """Block until one request of ``tokens`` may be sent; return the
        seconds waited (for Beam's ``throttling-msecs`` counter)."""
        wait = self.reserve(tokens)
        if wait > 0:
            self._sleep(wait)
        return wait

    # -- adapting ------------------------------------------------------------

    def on_throttled(self, retry_after: float | None = None) -> bool:
        """A 429: cut the rate, once per ``cut_window``. With the server's
        ``retry_after`` hint, also hold every new request until then (capped
        at ``max_hold_s``): the other threads would only collect more 429s.
        Returns whether the rate was cut."""
        with self._lock:
            now = self._clock()
            self._throttled += 1
            if retry_after is not None and retry_after > 0:
                self._hold_until = max(self._hold_until, now + min(retry_after, self.max_hold_s))
            if now - self._last_cut < self.cut_window:
                return False
            self._last_cut = now
            self._last_adjust = now
            new = max(self.min_fraction, self._fraction * self.decrease)
            if new == self._fraction:
                return False
            self._fraction = new
            self._cuts += 1
            self._apply_rates()
            return True

    def on_success(self) -> None:
        """A request succeeded: grow the rate by ``elapsed / recovery_s`` of the
        configured rate, never above it."""
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._last_adjust)
            self._last_adjust = now
            if self._fraction >= 1.0:
                return
            self._fraction = min(1.0, self._fraction + elapsed / self.recovery_s)
            self._apply_rates()

    # -- reporting -----------------------------------------------------------

    @property
    def fraction(self) -> float:
        with self._lock:
            return self._fraction

    @property
    def cuts(self) -> int:
        with self._lock:
            return self._cuts

    @property
    def waited_seconds(self) -> float:
        with self._lock:
            return self._waited

    @property
    def current_rpm(self) -> float | None:
        with self._lock:
            return None if self._request_budget is None else self._request_budget * self._fraction

    def stats(self) -> LimiterStats:
        with self._lock:
            f = self._fraction
            return LimiterStats(
                waited_s=self._waited,
                requests=self._requests,
                tokens=self._tokens,
                throttled=self._throttled,
                cuts=self._cuts,
                fraction=f,
                rpm=None if self._request_budget is None else self._request_budget * f,
                tpm=None if self._token_budget is None else self._token_budget * f,
            )

    def __repr__(self) -> str:
        return f"AdaptiveLimiter(rpm={self.rpm}, tpm={self.tpm}, share={self.share})"


# -- one limiter per key per process ------------------------------------------

_SHARED: dict[str, AdaptiveLimiter] = {}
_SHARED_LOCK = threading.Lock()


def shared_limiter(key: str, factory: Callable[[], AdaptiveLimiter]) -> AdaptiveLimiter:
    """The process-wide limiter for ``key``, built by ``factory`` on first use.

    Beam may run several DoFn instances (and threads) in one worker process;
    they must draw from one budget, or the process would take several shares.
    Limiters hold locks and clocks, so they are built on the worker (in
    ``DoFn.setup``), never pickled."""
    with _SHARED_LOCK:
        limiter = _SHARED.get(key)
        if limiter is None:
            limiter = factory()
            _SHARED[key] = limiter
        return limiter


def reset_shared_limiters() -> None:
    """Forget every shared limiter (tests, or a new job in the same process)."""
    with _SHARED_LOCK:
        _SHARED.clear()


def _check_positive(value: float, name: str) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
