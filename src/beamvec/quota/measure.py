"""The 429 events a limiter measures from, once the replies in flight are in.

After a 429 that cut the rate, the limiter asks the meter (meter.py) what
rate the server accepted, but only once the replies of the requests sent
before it are in (``at``), or, after a vague hint, once a probe has found
how long the window took to free (hold.py): that time is the hint the
measurement needs. A measurement never spans a probing hold, where nothing
was sent: later ones start where the probe got through.

Pure and single-threaded: the limiter calls it under its lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Pending:
    """A 429 event to measure from."""

    sent_at: float  # its request's send time
    hint: float  # how long after it the server accepted again
    since: float | None  # since when pacing held every request
    at: float  # when to measure (inf: once the probe gets through)
    tokens: bool  # the token quota refused (measure tokens, not requests)


class Measurements:
    def __init__(self) -> None:
        self._pending: Pending | None = None
        self._resumed: float | None = None  # when the last probe got through

    def expect(self, pending: Pending) -> None:
        self._pending = pending

    def await_probe(self) -> None:
        """A probing hold began after the event: its measurement waits for the probe."""
        if self._pending is not None:
            self._pending = replace(self._pending, at=math.inf)

    def probe_through(self, sent: float, freed: float | None, settle_at: float) -> None:
        """The probe sent at ``sent`` got through, ``freed`` seconds after the
        429 (None: unknown): a measurement waiting for it is due at ``settle_at``."""
        self._resumed = sent
        p = self._pending
        if p is not None and p.at == math.inf:
            self._pending = replace(p, hint=p.hint if freed is None else freed, at=settle_at)

    def take(self, now: float) -> tuple[Pending, float | None] | None:
        """The event due by ``now``, if any, with where its measurement may start at the
        earliest (after the last probing hold; None: anywhere)."""
        p = self._pending
        if p is None or now < p.at:
            return None
        self._pending = None
        return p, self._resumed if self._resumed is not None and self._resumed < p.sent_at else None


def window_seen(window_s: float, hint: float, busy_s: float) -> float:
    """How long the server's window is, at least, by a 429 with ``hint`` after
    ``busy_s`` of sending. Filled from empty, a window refuses once full, and
    its hint runs until the first request leaves it: the busy time plus the
    hint is the window. The hint alone (a window is never shorter than its
    wait) bounds that when the window was not empty, as after minutes of
    pacing at the quota, where the busy time says nothing. Never longer than
    the quota's stated window (``window_s``)."""
    return min(window_s, hint + min(hint, busy_s))
