"""How fast to pace, as a pure calculation: (refill per second, burst capacity).

The server's metering window is unknown (quotas are stated per minute; the
server may count over 60 s, 6 s or 1 s), so pacing must not lean on it: the
request bucket holds at most ``burst`` requests (one by default), so requests
leave evenly spaced and any window, however short, sees the configured rate.
A ``margin`` (2 %) below the rate absorbs the jitter between booking a send
and its arrival. The burst is also paid for out of the configured window's
budget, so that N workers at share 1/N never exceed the quota in any window
of that length, even at a handful of requests a minute.

Tokens: a request's tokens arrive at once, so the bucket must hold the largest
request; that amount is reserved from the window's budget for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pace:
    """A bucket's settings: tokens refilled per second and the burst it holds."""

    rate_per_s: float
    capacity: float


def pace(budget: float, window_s: float, fraction: float, margin: float, burst: float) -> Pace:
    """Pacing for ``budget`` units per ``window_s`` at ``fraction`` of it.

    ``burst`` is the bucket's capacity (one request, or the largest request's
    tokens). The refill leaves room for that burst in every window, with a
    floor of half the rate for budgets too small to pay for it: a worker still
    sends, slowly, rather than stall."""
    effective = budget * fraction
    capacity = max(1.0, burst)
    refill = (effective * (1.0 - margin) - capacity) / window_s
    return Pace(max(effective / (2.0 * window_s), refill), capacity)
