"""Late requests: how much a request that left late pushes back those after it.

A request that leaves later than booked (its thread waited for the GIL, its
client was slow to write it) would squeeze the window it opens: the next
requests still leave on time, and a short server window sees one too many.
Once a 429 has come while pacing (the one sign that the server's window is
short enough for that to matter: over 60 s, the margin absorbs any lateness),
lateness beyond ``slack_s`` pushes every later booking back by the excess:
being late costs time, not a 429. The slack is what the margin absorbs in the
shortest window a quota is metered over (one second): paced ``margin`` under
the limit, ``L + 1`` requests span more than the window by at least
``margin`` of it, so a request that much late cannot squeeze it. Pushing for
less would only cost time: with two jobs on two cores, most requests leave a
few milliseconds late.

Pure and single-threaded: the limiter calls it under its lock.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple


class Due(NamedTuple):
    """One booking as the lateness rules see it."""

    booking: int  # its number, in booking order
    at: float  # when it is due to leave, pushes included
    seen: int  # the pushes made before this was last brought up to date


class Lateness:
    """The pushes late requests made: (the late booking, the last booking
    made before the push, seconds); the bookings between them wait that much more."""

    def __init__(self, slack_s: float) -> None:
        self.slack_s = slack_s
        self.guarding = False  # set by the first 429 while paced
        self._pushes: deque[tuple[int, int, float]] = deque(maxlen=256)
        self._pushed = 0  # pushes so far

    def due(self, booking: int, at: float) -> Due:
        return Due(booking, at, self._pushed)

    def pushed(self, due: Due) -> tuple[Due, float]:
        """The seconds that late requests booked before ``due`` pushed it back
        since it was last brought up to date, and the booking brought up to date."""
        fresh = list(self._pushes)[due.seen - self._pushed:] if due.seen < self._pushed else []
        extra = sum(seconds for late, last, seconds in fresh if late < due.booking <= last)
        return Due(due.booking, due.at + extra, self._pushed), extra

    def excess(self, due: Due, left_at: float) -> float:
        """Seconds that a request due at ``due.at`` and written at ``left_at``
        must push the later ones back (0: none, or not guarding yet)."""
        return max(0.0, left_at - due.at - self.slack_s) if self.guarding else 0.0

    def push(self, due: Due, last_booking: int, seconds: float) -> None:
        self._pushes.append((due.booking, last_booking, seconds))
        self._pushed += 1
