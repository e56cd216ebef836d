"""A reservation token bucket (GCRA): the one place that turns a rate into waits.

Pure Python, no Beam, thread-safe; time comes from an injected clock so that
tests run on simulated time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

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
        check_positive(rate_per_s, "rate_per_s")
        check_positive(capacity, "capacity")
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

    # The two halves of a reservation, for callers (the limiter) that must
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

    def push_back(self, seconds: float) -> None:
        """Move every send after the latest booked one ``seconds`` later (a
        request left late: the ones after it keep their spacing from it)."""
        with self._lock:
            self._tat += max(0.0, seconds)

    def set_rate(self, rate_per_s: float, capacity: float | None = None) -> None:
        """Change the refill rate (and capacity), keeping outstanding debt in tokens.

        Sends already booked keep their times. A faster rate therefore only
        speeds up the repayment of debt after the last booked send (speeding up
        earlier debt would squeeze new sends between booked ones); a slower
        rate applies from now, which is the conservative side. A larger
        capacity starts empty."""
        check_positive(rate_per_s, "rate_per_s")
        with self._lock:
            now = self._clock()
            if self._tat > now:
                pivot = now if rate_per_s < self._rate else max(now, self._last_at)
                self._tat = pivot + (self._tat - pivot) * self._rate / rate_per_s
            self._rate = float(rate_per_s)
            if capacity is not None:
                check_positive(capacity, "capacity")
                if capacity > self._capacity:
                    # A bigger burst is earned by refilling, not granted at once:
                    # otherwise every small step up would hand out free tokens.
                    self._tat = max(self._tat, now) + (capacity - self._capacity) / self._rate
                self._capacity = float(capacity)


def check_positive(value: float, name: str) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
