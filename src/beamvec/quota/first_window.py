"""Discovery's first window: how long the unpaced start's burst fills the server's window.

Told nothing, a limiter sends unpaced until the first 429, and that burst
fills the server's window. Paced from then on at the rate it measured, its
next requests still meet a window full of the burst until the burst has
left it (over a sliding window, a window after it was sent). A 429 in that
time is the burst's, not others' traffic: cutting the rate in half for it
(a congestion cut, aimd.py) cost 0.2 of the limit for ~12 s in the
simulation. So until the burst can have left, 429s cut only at the edge.
Not so over a window that refills (a bucket, or a fixed window's
boundary: the first exact hint was shorter than the burst took): the burst
is gone at the first 429, and a 429 after it says that the first
estimate, the burst's rate, was too high (against the emulator's bucket,
cut 5 % at a time, a 429 came at every refill for 3.5 s).

The window is as long as from the request that opened it (our first, or
the driver's preflight when it was still in the window) to when the first
slot freed: the first 429's exact hint, or the time a probe found it free
(hold.py). A later probe that found the window free later, while the burst
was still in it, moves that on. The first 429 also says where later
measurements start (``measured_from``).

Pure and single-threaded: the limiter calls it under its lock.
"""

from __future__ import annotations

import math

from beamvec.quota.meter import SuccessMeter

#: A first exact hint under this share of the burst's time means the window refills
#: (a bucket); longer, it may be a sliding window a slow ramp or the preflight opened
#: (a ramp over 3 s of a 6-s window, then its hint of 1.4 s, is no bucket).
_REFILL_HINT = 0.25


class FirstWindow:
    """Until when the unpaced start's burst may still be in the server's window."""

    def __init__(self) -> None:
        self.began: float | None = None  # the first 429 of discovery
        self._opener = 0.0  # when the request that opened the window was sent
        self.until = -math.inf
        self._refills = False  # the first 429's exact hint was shorter than the burst

    def start(self, now: float, meter: SuccessMeter, hint: float, vague: bool) -> None:
        """The first 429 while unpaced, at ``now``, with ``hint`` (``vague``: a
        probe finds when the first slot frees). The window opened with the
        burst, or with the driver's preflight if still in it (meter.py)."""
        if self.began is not None:
            return
        burst_s = meter.busy_for(now)
        self.began, self._opener = now, now - burst_s - meter.gap_before(now, hint)
        if not vague:
            self.freed_at(now, now + hint)
            self._refills = hint < burst_s * _REFILL_HINT

    def probed(self, began: float | None, freed: float | None) -> None:
        """A probe got through ``freed`` seconds after the 429 at ``began`` (None: unknown)."""
        if began is not None and freed is not None:
            self.freed_at(began, began + freed)

    def freed_at(self, held_from: float, at: float) -> None:
        """A slot of the window freed at ``at`` after a 429 at ``held_from``:
        if the burst was still in the window then, the window is at least
        as long as from its opener to ``at``."""
        if self.began is None or held_from >= max(self.until, self.began + 1e-9):
            return
        self.until = max(self.until, self.began + (at - self._opener))

    def burst_in_window(self, now: float) -> bool:
        return now < self.until and not self._refills

    def measured_from(self, at: float, after_hold: float | None) -> float | None:
        """Where a discovery measurement up to ``at`` starts (None: with the
        busy period), never before ``after_hold`` (the last probing hold).
        When the window refills faster than the burst came (the first exact
        hint was shorter than the burst: a bucket, or a fixed window's
        boundary), at the first 429: from the burst's start, its first fill
        counts on top of the refill (a bucket measured ~2,000 a minute for
        240, and each measurement undid the congestion cut before it). A
        sliding window we opened turns the burst over a window later, and
        is measured from the start."""
        if not self._refills or self.began is None or self.began >= at:
            return after_hold
        return self.began if after_hold is None else max(self.began, after_hold)
