"""Holding requests after a 429: for the server's hint, or until a probe gets through.

An exact hint (RetryInfo to the millisecond) says when the server accepts
again: every request waits until then. A vague one does not: a whole-second
hint is rounded down ("58s" for 58.93 s; Google's rule), and Vertex often
gives none, while a fixed window frees only at its boundary and a bucket one
request's refill later. Sending every held request when a guess runs out
meets a 429 each; so after a vague 429 one request (the probe) leaves at the
hint's floor plus a step, the others wait for its answer, and each refused
probe makes the step longer (from ``first_step_s`` by ``growth``, up to ``max_step_s``): a few
429s find any boundary. A refused probe is the same event as the 429 that
began the hold (the rate is not cut again); its answer tells how long the
window took to free (``freed_after``), which discovery measures with.

Pure and single-threaded: the limiter calls it under its lock.
"""

from __future__ import annotations

import math

#: Requests waiting for the probe's answer look again this often while it is out.
_RECHECK_S = 0.05
#: A probe unanswered this long (its caller stopped, or it failed otherwise) is given up.
_STALE_S = 10.0


class Hold:
    """When new requests may leave after 429s."""

    def __init__(self, first_step_s: float = 0.25, max_step_s: float = 60.0, growth: float = 1.5) -> None:
        self.first_step_s = first_step_s
        self.growth = growth
        self.max_step_s = max_step_s
        self.until = -math.inf  # no request leaves before this
        self.set_at = -math.inf  # when a 429 last moved ``until`` on
        self.probing = False  # after a vague hint: one probe, the others wait for its answer
        self.probe_at: float | None = None  # the probe's booked send time, while it is out
        self._failures = 0  # probes refused in this hold
        self._began: float | None = None  # the 429 that began the vague hold
        self._last_refused: float | None = None  # send time of the last probe refused
        self._wait_from: float | None = None  # the first booking that only waited for the probe's answer
        self._waited = (math.inf, -math.inf)  # [from, to): bookings that waited for the last answer, booked nothing

    def refuse(self, now: float, hint: float | None, *, vague: bool) -> None:
        """A 429 with ``hint`` (None: none); ``vague``: the hint is a floor, or missing."""
        before = self.until
        if not vague:
            self.until = max(self.until, now + (hint or 0.0))
        else:
            if not self.probing:
                self.probing, self._failures, self._began, self._last_refused = True, 0, now, None
            step = min(self.max_step_s, self.first_step_s * self.growth ** self._failures)
            self.until = max(self.until, now + (hint or 0.0) + step)
            if self.probe_at is not None and now < self.probe_at < self.until:
                self.probe_at = None  # booked, not sent, now inside the hold: void (held, it books again)
        if self.until > before:
            self.set_at = now

    @property
    def began(self) -> float | None:
        """The 429 that began the vague hold (None: none yet)."""
        return self._began

    def is_probe(self, sent_at: float | None) -> bool:
        return self.probing and sent_at is not None and self.probe_at is not None and abs(sent_at - self.probe_at) < 1e-9

    def probe_refused(self, now: float, hint: float | None) -> None:
        """The probe met a 429: the window is still full; try again a longer step on."""
        self._last_refused, self.probe_at = self.probe_at, None
        self._failures += 1
        self.refuse(now, hint, vague=True)

    def probe_accepted(self, now: float) -> float | None:
        """The probe got through: the hold is over. Returns how long after the
        429 the window freed (between the last refused probe and this one), or None."""
        sent, began = self.probe_at, self._began
        self.probing, self.probe_at = False, None
        if self._wait_from is not None:
            self._waited, self._wait_from = (self._wait_from, now), None
        if sent is None or began is None:
            return None
        low = began if self._last_refused is None else self._last_refused
        return max(0.0, (low + sent) / 2.0 - began)

    def book(self, at: float, now: float, answer_s: float) -> float:
        """When a request booked for ``at`` may leave: while probing, the first
        one after the hold is the probe; the others wait for its answer."""
        at = max(at, self.until)
        if not self.probing:
            return at
        if self.probe_at is not None and now > self.probe_at + max(_STALE_S, 10.0 * answer_s):
            self.probe_at = None
        if self.probe_at is None:
            self.probe_at = at
            return at
        if self._wait_from is None:
            self._wait_from = now
        return max(at, self.probe_at + answer_s, now + _RECHECK_S)

    def held(self, asked_at: float, at: float | None, now: float, last_cut: float) -> bool:
        """Whether a request booked at ``asked_at`` to leave at ``at`` must book
        again: a 429 since it was booked (its slot is void), or a probe still
        out (or refused) that is not this request."""
        if self.until > now and asked_at < max(last_cut, self.set_at):
            return True
        if self._waited[0] <= asked_at < self._waited[1]:
            return True  # it only waited for the probe's answer: it books now
        return self.probing and not self.is_probe(at)
