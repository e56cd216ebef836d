"""The per-process limiter: buckets paced by pacing.py, steered by aimd.py.

Told a quota (``rpm``/``tpm`` per ``window_s``) and this worker's ``share``
of it, the limiter starts at that share; ``elastic`` lets it grow, by
probing, into quota other workers leave unused (up to the whole quota), and
AIMD brings it back when the server answers 429. Told nothing
(``discover``), it sends unpaced until the first 429, then paces at the rate
the server accepted (meter.py) and settles near it the same way.

Interface for callers (the embedder): ``acquire(tokens) -> seconds waited``
before a request, ``on_left(at)`` once it is written, then ``on_success()`` or
``on_throttled(retry_after)`` from the same thread; ``sent_before(seconds)``
once, for the driver's preflight. The send time booked by
``acquire`` is remembered per thread, so that 429s of requests sent before a
cut count as that cut's event, and successes measure the accepted rate.
(``reserve`` books without sleeping; who uses it asks ``held`` and ``pushed``
before sending, as ``acquire`` does, and passes ``due()`` to ``on_left``.)

Late requests push later bookings back (lateness.py); budgets and their
buckets live in budgets.py, holds after 429s in hold.py, the events to
measure in measure.py, what a 429's hint means in throttled.py, the
discovering start's burst in first_window.py, and the arguments' checks in
limiter_args.py.

Thread-safe; share one per process (``transforms.PerProcess``, through Beam's ``Shared``).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import astuple

from beamvec.quota.aimd import AimdController, AimdSettings, Cut
from beamvec.quota.bucket import Clock, Sleep
from beamvec.quota.budgets import Budgets
from beamvec.quota.first_window import FirstWindow
from beamvec.quota.hold import Hold
from beamvec.quota.lateness import Due, Lateness
from beamvec.quota.limiter_args import checked_late_slack
from beamvec.quota.measure import Measurements, Pending, window_seen
from beamvec.quota.meter import SuccessMeter
from beamvec.quota.scale import ScaleSettings, TokenScale
from beamvec.quota.stats import LimiterStats
from beamvec.quota.throttled import DEFAULT_HOLD_S, hold_hint, settles_tokens

#: (asked at, sent at) of one request: when a caller asked, and the send time it was given.
Booking = tuple[float, float]


class Limiter:
    """Request and token pacing for one worker process, adapting to 429s."""

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None = None,
        share: float = 1.0,
        *,
        window_s: float = 60.0,
        elastic: bool = True,
        discover: bool = False,
        burst_requests: float = 1.0,
        margin: float = 0.02,
        aimd: AimdSettings | None = None,
        scale: ScaleSettings | None = None,
        max_hold_s: float = 60.0,
        measure_s: float = 60.0,
        late_slack_s: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        late_slack_s = checked_late_slack(rpm, tpm, share, window_s, burst_requests, margin, late_slack_s)
        self.rpm, self.tpm, self.share = rpm, tpm, min(1.0, share)
        self.window_s, self.burst_requests, self.margin = window_s, burst_requests, margin
        self.max_hold_s, self.late_slack_s = max_hold_s, late_slack_s
        self.discover = discover and rpm is None and tpm is None
        self.discover_tokens = discover and tpm is None  # a token quota found from 429s that say so
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._local = threading.local()
        now = clock()
        self._budgets = Budgets(rpm * self.share if rpm is not None else None,
                                tpm * self.share if tpm is not None else None,
                                window_s=window_s, margin=margin, burst_requests=burst_requests, clock=clock)
        max_fraction = self._max_fraction = 1.0 / self.share if elastic else 1.0
        self._aimd = AimdController(aimd or AimdSettings(), now, max_fraction, probe_scale=1.0 / self.share)
        self._meter = SuccessMeter(measure_s)
        self._scale = TokenScale(scale or ScaleSettings(), now)
        self._token_bound = False  # the last held booking waited for the token bucket
        self._tokens_measured = False  # a discovered token quota was measured after its first 429
        self._last_send = -math.inf
        self._hold = Hold(max_step_s=min(window_s, max_hold_s))
        self._measurements = Measurements()
        self._first = FirstWindow()  # discovery: the unpaced start's burst in the server's window
        self._lateness = Lateness(late_slack_s)
        self._waited, self._requests, self._tokens, self._throttled = 0.0, 0, 0.0, 0

    def sent_before(self, seconds_ago: float) -> None:
        """One request was sent for this quota ``seconds_ago``, before this
        limiter's first (the driver's preflight, of which this worker counts
        its share): still in a short server window, it is part of what the
        first 429 measures (meter.py)."""
        with self._lock:
            self._meter.on_before(self._clock() - max(0.0, seconds_ago), weight=self.share)

    # -- acquiring -------------------------------------------------------------

    def reserve(self, tokens: float = 0.0) -> float:
        """Book one request of ``tokens`` and return the seconds to wait before
        sending it, without sleeping. Callers are served first come, first served."""
        tokens = max(0.0, float(tokens))
        with self._lock:
            now = self._clock()
            self._measure(now)
            self._aimd.tick(now)
            # A measured token budget is in the units charged: the factor stays put.
            self._scale.tick(now, self._token_bound and not self._tokens_measured)
            charge = tokens * self._scale.factor  # tokens as the server counts them
            self._budgets.apply(self._aimd.fraction, charge)
            self._local.charge = charge
            if self._hold.probing and self._hold.probe_at is not None:
                # A probe is out: wait for its answer, booking nothing meanwhile.
                at = self._hold.book(now, now, self._meter.settled_after(0.0))
                self._local.booked = (now, at)
                self._waited += at - now
                return at - now
            at = max(now, self._hold.until)
            if self._budgets.paced:
                at = max(at, self._last_send)  # paced sends keep their booked order
            at, by_tokens = self._budgets.earliest(at, charge)
            if by_tokens or (by_tokens is not None and at > now + 1e-6):
                self._token_bound = by_tokens
            at = self._hold.book(at, now, self._meter.settled_after(0.0))
            self._budgets.book(at, charge)
            self._last_send = max(self._last_send, at)
            self._meter.on_send(now, at, charge)
            self._local.booked = (now, at)
            self._local.due = self._lateness.due(self._requests + 1, at)
            wait = at - now
            self._waited += wait
            self._requests += 1
            self._tokens += tokens
            return wait

    def acquire(self, tokens: float = 0.0) -> float:
        """Block until one request of ``tokens`` may be sent; return the
        seconds waited (for Beam's ``throttling-msecs`` counter)."""
        waited = 0.0
        while True:
            wait = self.reserve(tokens)
            if wait > 0:
                self._sleep(wait)
            waited += wait
            if not self.held(*self._local.booked):
                return waited + self._wait_pushes()

    def held(self, asked_at: float, at: float | None = None) -> bool:
        """Whether a request booked at ``asked_at`` (to leave at ``at``) must
        book again before it leaves: a 429 since then holds every request
        (the caller slept through the cut, or through a hint that a 429 of
        the same event gave, and its booked slot is void), and after a vague
        hint only the probe leaves until it gets through (hold.py)."""
        with self._lock:
            return self._hold.held(asked_at, at, self._clock(), self._aimd.last_cut)

    def due(self) -> Due | None:
        """This thread's last booking: for a caller that books several
        requests with ``reserve`` (the simulation) and then reports each with
        ``pushed`` and ``on_left(due=...)``, as ``acquire`` does for one."""
        return getattr(self._local, "due", None)

    def pushed(self, due: Due) -> tuple[Due, float]:
        """The seconds that late requests booked before ``due`` pushed it back
        since it was last brought up to date, and the booking brought up to date."""
        with self._lock:
            due, extra = self._lateness.pushed(due)
            self._waited += extra
            return due, extra

    def _wait_pushes(self) -> float:
        """Wait as long as late requests booked before this one pushed it back."""
        waited = 0.0
        for _ in range(16):  # each round waits only for the pushes made during the last
            self._local.due, extra = self.pushed(self._local.due)
            if extra <= 0:
                break
            self._sleep(extra)
            waited += extra
        return waited

    def on_left(self, at: float, *, due: Due | None = None) -> None:
        """A request (``due``, default this thread's booked by ``acquire``) was
        written at ``at``. Later than due by more than ``late_slack_s``, once
        lateness matters: push later bookings back."""
        due = self.due() if due is None else due
        if due is None:
            return
        with self._lock:
            excess = self._lateness.excess(due, at)
            if excess <= 0:
                return
            self._budgets.push_back(excess)
            self._lateness.push(due, self._requests, excess)

    # -- adapting --------------------------------------------------------------

    def _booked(self, given: Booking | None) -> Booking | None:
        booked = getattr(self._local, "booked", None)
        self._local.booked = None
        return booked if given is None else given

    def on_success(self, *, booked: Booking | None = None, tokens: float | None = None) -> None:
        """A request succeeded: count it towards the accepted rate; time passes.
        ``booked`` (asked at, sent at) and ``tokens`` (its estimate) default to
        what ``acquire`` booked on this thread."""
        charge = getattr(self._local, "charge", 0.0) if tokens is None else None
        booked = self._booked(booked)
        with self._lock:
            now = self._clock()
            sent = now if booked is None else booked[1]
            if charge is None:
                charge = (tokens or 0.0) * self._scale.factor
            if self._hold.is_probe(sent):
                self._probe_through(sent, now)
            self._meter.on_success(sent, now, charge)
            self._scale.on_success(now)
            self._measure(now)
            self._aimd.tick(now)
            self._budgets.apply(self._aimd.fraction)

    def _probe_through(self, sent: float, now: float) -> None:
        """The probe after a vague hint got through: the hold is over, and
        the time the window took to free is the hint to measure with."""
        began, freed = self._hold.began, self._hold.probe_accepted(now)
        self._first.probed(began, freed)
        self._measurements.probe_through(sent, freed, self._meter.settled_after(now))

    def on_throttled(
        self, retry_after: float | None = None, *, booked: Booking | None = None, floor: bool = False,
        quota: str | None = None,
    ) -> bool:
        """A 429. Hold every new request for the server's hint (capped at
        ``max_hold_s``): the other threads would only collect more 429s. A
        hint rounded down to whole seconds (``floor``), or none while
        discovering, is vague: one probe finds when the server accepts again
        (hold.py). A new event cuts the rate (edge or congestion, see aimd.py)
        and, once the hold is over, the accepted rate is measured: of tokens
        when ``quota`` says the token quota refused and no TPM was told.
        Returns whether the rate was cut."""
        booked = self._booked(booked)
        asked_at, sent_at = (None, None) if booked is None else booked
        with self._lock:
            now = self._clock()
            self._throttled += 1
            hint, vague = hold_hint(retry_after, floor=floor, max_hold_s=self.max_hold_s,
                                    unpaced_discovery=self.discover and not self._budgets.paced,
                                    paced_discovery=self.discover and self._budgets.paced)
            if self._hold.is_probe(sent_at):  # the window is still full: same event, a longer step
                self._hold.probe_refused(now, hint)
                self._meter.on_refused(self._hold.until)
                self._scale.quiet_after(self._hold.until)
                self._aimd.quiet_after(self._hold.until)
                return False
            extra = 0.0  # held past the hint
            if hint is not None and not vague and self._throttled == 1:
                # In a window the preflight opened, the first hint is when
                # its slot frees; ours free only from the gap after it.
                extra = min(self._meter.gap_before(now, hint), self.max_hold_s - hint)
            if hint is not None or vague:
                self._hold.refuse(now, None if hint is None else hint + extra, vague=vague)
            until = self._hold.until
            self._meter.on_refused(max(now, until))
            self._scale.quiet_after(until)
            if self._aimd.is_same_event(now, asked_at):
                self._aimd.quiet_after(until)
                if vague:  # the window is still full after the event's hold: measure once a probe gets through
                    self._measurements.await_probe()
                return False
            return self._new_event(now, asked_at, sent_at, hint, vague, extra,
                                   quota == "tokens" and self.discover_tokens, guessed=retry_after is None)

    def _new_event(
        self, now: float, asked_at: float | None, sent_at: float | None, hint: float | None,
        vague: bool, extra: float, tokens: bool, guessed: bool = False,
    ) -> bool:
        """The first 429 of an event (under the lock): cut the rate, and
        expect the accepted rate to be measured once the hold is over."""
        until = self._hold.until
        probed_too_far = False  # the token scale's edge: never congestion (aimd.py)
        if self._budgets.tokens_bucket is not None and not self._tokens_measured:
            probed_too_far = self._scale.on_throttled(now, self._token_bound, self._aimd.at_full_rate)
        before = self._aimd.fraction
        if hint is not None:
            seen = window_seen(self.window_s, hint, self._meter.busy_for(now))
            self._aimd.window_s = max(self._aimd.window_s, seen)
        # While the unpaced start's burst fills the window, its 429s are its own, not others' traffic.
        cut = self._aimd.on_throttled(now, asked_at, edge_only=probed_too_far or self._first.burst_in_window(now))
        self._aimd.quiet_after(until)
        if cut is not Cut.NONE:
            if vague:  # a first guess at the wait; the probe measures it
                hint = (hint + 0.5) if hint is not None else DEFAULT_HOLD_S
                at = math.inf
            else:
                hint = max(0.0, until - extra - now)
                at = max(until, self._meter.settled_after(now))
            sent = now if sent_at is None else sent_at
            self._measurements.expect(Pending(sent, hint, self._meter.held_since, at, tokens))
            if tokens and self._budgets.tokens_bucket is None:
                self._settle(self._meter.sent_rate(sent, hint, tokens=True), until, tokens=True)
            elif self.discover and not tokens and self._budgets.requests_bucket is None:
                # Requests booked during the hold need a pace now: a first
                # estimate from what was sent before this one (few replies
                # are in yet); the measurement once they are in corrects it.
                if not guessed:  # with no hint, nothing shows how long the window is
                    self._first.start(now, self._meter, hint, vague)
                self._settle(self._meter.sent_rate(sent, hint), until,
                             ceiling=self._meter.sent_rate(sent, hint, counts_before=False))
            self._lateness.guarding = self._lateness.guarding or self._budgets.paced
        self._budgets.apply(self._aimd.fraction)
        return self._aimd.fraction < before

    def calibrate(self, estimated: float, counted: float) -> None:
        """The server reported counting ``counted`` tokens for a request we
        estimated at ``estimated``: pace tokens as it counts them."""
        with self._lock:
            self._scale.calibrate(estimated, counted)

    def _measure(self, now: float) -> None:
        """After the hold of a 429 event (when the responses in flight are in):
        what rate did the server accept? Discovery paces there; a told limiter
        settles there if that is clearly below its current rate."""
        due = self._measurements.take(now)
        if due is None:
            return
        (sent_at, hint, since, _, tokens), after_hold = astuple(due[0]), due[1]
        if tokens:
            accepted = self._meter.accepted_rate(sent_at, hint, since=after_hold, tokens=True)
            budget = self._budgets.tokens
            pace_now = None if budget is None else budget * self._aimd.fraction / self.window_s
            if settles_tokens(pace_now, self._tokens_measured, hint, accepted,
                              self._aimd.settings.measure_slack):
                # the margin once more: a bucket's first burst and a fixed window's
                # boundary make what it accepted look a little more than it allows
                self._settle(None if accepted is None else accepted * (1.0 - self.margin), now, tokens=True)
            self._tokens_measured = True
        elif self.discover:
            since = self._first.measured_from(sent_at, after_hold)
            self._settle(self._meter.accepted_rate(sent_at, hint, since=since), now,
                         ceiling=self._meter.accepted_rate(sent_at, hint, since=since, counts_before=False))
        elif since is not None and self._budgets.requests is not None and not self._token_bound:
            # Only while pacing held every request does the accepted rate say what
            # the server allows (otherwise it measures the work there was, or the
            # ramp-up); held by the token bucket, it is the tokens' rate, not
            # what the request quota allows.
            accepted = self._meter.accepted_rate(sent_at, hint, since=since)
            if accepted is not None:
                self._aimd.on_measured(accepted * self.window_s / self._budgets.requests, now)

    def _settle(self, accepted: float | None, now: float, *, tokens: bool = False,
                ceiling: float | None = None) -> None:
        """Discovery: pace (requests, or tokens) at the rate the server accepted; probe up to
        ``ceiling``, that rate had the preflight not been in the window (a fixed one's may not)."""
        if accepted is None:
            return
        self._aimd.fraction = self._aimd.target = 1.0
        if not tokens:
            self._aimd.max_fraction = max(self._max_fraction, (ceiling or 0.0) / accepted)
        if self._budgets.settle(accepted, tokens=tokens):
            self._last_send = max(self._last_send, now)

    # -- reporting -------------------------------------------------------------

    # Shorthands for one figure of ``stats()``.
    fraction = property(lambda self: self.stats().fraction)
    cuts = property(lambda self: self.stats().cuts)
    waited_seconds = property(lambda self: self.stats().waited_s)
    current_rpm = property(lambda self: self.stats().rpm)

    def stats(self) -> LimiterStats:
        with self._lock:
            return LimiterStats(
                waited_s=self._waited, requests=self._requests, tokens=self._tokens,
                throttled=self._throttled, cuts=self._aimd.cuts, fraction=self._aimd.fraction,
                rpm=self._budgets.per_minute(self._budgets.requests),
                tpm=self._budgets.per_minute(self._budgets.tokens),
                token_factor=self._scale.factor,
            )

    def __repr__(self) -> str:
        return (f"Limiter(rpm={self.rpm}, tpm={self.tpm}, share={self.share}, "
                f"discover={self.discover})")


#: The name the embedder imports.
AdaptiveLimiter = Limiter
