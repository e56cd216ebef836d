"""The rate controller: how a worker's rate reacts to 429s and to quiet.

Fractions are of a reference rate (the worker's configured share, or the rate
discovered from the server). Four rules, each for a reason:

* **Edge.** A 429 that stands alone is the quota's edge, not congestion
  (pacing at the configured rate already, a short server window counts one
  late arrival as one too many): cut a little (``edge_cut``, 5 %), lower the
  target a fifth of that, and come back at ``1 / recovery_s`` of the
  reference per second, so a cut is made good within seconds. Clearly
  (``measure_slack``) under the whole quota, the worker shares it with
  others, and the 429 says their rates add up to too much: the target comes
  down the whole ``edge_cut``, so that shared workers stop refilling the
  window they overfill (over a 1-s window, two unaware jobs did so at 429
  after 429 and kept 0.87 of the quota; now 0.91 in the simulation).
* **Congestion.** A second 429 event within ``congestion_s`` of the last one
  (time spent holding on the server's hint does not count) means others use
  the quota too: multiply by ``decrease`` and make that the new target
  (unless the limiter says the 429 is its token scale's edge: probing how
  the server counts tokens went too far, and the scale backs off; halving
  for it cost a sixth of the token limit). A
  measurement of what the server accepted (see meter.py) may set the rate
  directly, never below ``decrease`` of it in one step.
* **Deep cuts wait a window.** A congestion cut, or a settling on what the
  server accepted, leaves a hole in the server's window: for as long as the
  window, the requests sent before the cut leave it faster than new ones
  come. Probing into that hole meets no 429 until the hole is filled, then
  many at once: over a 60-s window two unaware jobs each climbed back to the
  whole quota every minute (2.8 % 429s in the simulation). So after a deep
  cut probing waits ``window_s`` (the server's window as far as the limiter
  can tell; see limiter.py), never less than ``probe_after_s``. An edge cut
  leaves no hole worth the wait.
* **Probing.** After ``probe_after_s`` without a 429 the target grows: by
  ``probe_per_s`` of the whole quota per second, plus a cube of the time
  spent probing that reaches the whole quota after ``probe_cube_s`` (as TCP
  CUBIC does): slowly at first, where the last 429 came, then fast. So
  workers that were not told how many share the quota settle where 429s are
  rare, and a worker left alone grows into the share the others no longer
  use within about half a minute.

One event per cut: 429s of requests sent before the last cut (a settling on a
measurement is a cut too) report the same event (when the send time is
unknown, those within ``cut_window`` of it).
Pure and single-threaded: the limiter calls it under its lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


class Cut(Enum):
    NONE = "none"  # the same event as the last cut
    EDGE = "edge"
    CONGESTION = "congestion"


@dataclass(frozen=True)
class AimdSettings:
    edge_cut: float = 0.05
    decrease: float = 0.5
    congestion_s: float = 3.0
    cut_window: float = 1.0
    recovery_s: float = 20.0
    probe_after_s: float = 10.0
    probe_per_s: float = 0.0025
    probe_cube_s: float = 40.0
    min_fraction: float = 0.05
    measure_slack: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.edge_cut < 1.0:
            raise ValueError("edge_cut must be in (0, 1)")
        if not 0.0 < self.decrease < 1.0:
            raise ValueError("decrease must be in (0, 1)")
        if not 0.0 < self.min_fraction <= 1.0:
            raise ValueError("min_fraction must be in (0, 1]")
        if not 0.0 <= self.measure_slack < 1.0:
            raise ValueError("measure_slack must be in [0, 1)")
        for name in ("congestion_s", "recovery_s", "probe_cube_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


class AimdController:
    """The current ``fraction`` and the ``target`` it recovers to."""

    def __init__(
        self, settings: AimdSettings, now: float, max_fraction: float = 1.0, probe_scale: float = 1.0
    ) -> None:
        self.settings = settings
        self.max_fraction = max(1.0, max_fraction)
        self.probe_scale = probe_scale  # probing speed in fractions: 1/share, so it is of the whole quota
        self.fraction = 1.0
        self.target = 1.0
        self.cuts = 0
        self._last_cut = -math.inf
        self._quiet_since = -math.inf  # the last cut, or the end of its hold
        self._started = now
        self._before_cut = 1.0
        self._last_kind = Cut.NONE
        self._last_tick = now
        self.window_s = 0.0  # the server's window, as far as the limiter can tell (0: unknown)
        self._probe_after = settings.probe_after_s  # quiet before probing, since the last cut

    def quiet_after(self, until: float) -> None:
        """A hold on the server's hint runs until ``until``: quiet starts then."""
        self._quiet_since = max(self._quiet_since, until)

    @property
    def last_cut(self) -> float:
        return self._last_cut

    @property
    def last_kind(self) -> Cut:
        """The kind of the last cut (NONE before any)."""
        return self._last_kind

    @property
    def at_full_rate(self) -> bool:
        """Whether the worker sends at (about) its reference rate: not cut
        clearly (``measure_slack``) below it."""
        return self.fraction >= 1.0 - self.settings.measure_slack

    def is_same_event(self, now: float, asked_at: float | None) -> bool:
        """Whether a 429 reports the last cut's event: its request was booked
        before the cut (or, not knowing that, it came within ``cut_window``)."""
        if asked_at is not None:
            return asked_at < self._last_cut
        return now - self._last_cut < self.settings.cut_window

    def on_throttled(self, now: float, asked_at: float | None = None, edge_only: bool = False) -> Cut:
        s = self.settings
        self.tick(now)
        if self.is_same_event(now, asked_at):
            return Cut.NONE
        congested = now - self._quiet_since < s.congestion_s and not edge_only
        self._last_cut = now
        self._quiet_since = max(self._quiet_since, now)
        before = self._before_cut = self.fraction
        if congested:
            self.fraction = max(s.min_fraction, before * s.decrease)
            self.target = self.fraction
            kind = Cut.CONGESTION
        else:
            # The target never stays above the rate that was refused (probing may
            # have taken it past the rate the worker had reached). Clearly under
            # the whole quota, others share it: the refusal is their sum's, not a
            # late arrival's, and the target comes down with the rate.
            shared = before < self.max_fraction * (1.0 - s.measure_slack)
            lowered = s.edge_cut if shared else s.edge_cut / 5
            self.target = max(s.min_fraction, min(self.target, before) * (1.0 - lowered))
            self.fraction = max(s.min_fraction, min(before, self.target) * (1.0 - s.edge_cut))
            kind = Cut.EDGE
        if self.fraction < before:
            self.cuts += 1
        self._probe_after = self._after(deep=kind is Cut.CONGESTION)
        self._last_kind = kind
        return kind

    def _after(self, deep: bool) -> float:
        """The quiet before probing after a cut: a deep one waits out the window."""
        s = self.settings
        return max(s.probe_after_s, self.window_s) if deep else s.probe_after_s

    def on_measured(self, fraction: float, now: float) -> bool:
        """The server accepted ``fraction`` of the reference lately. Clearly
        (``measure_slack``) below the current rate: settle there (at most
        ``decrease`` in one step), a cut like a 429's. After a congestion cut,
        well above it: the 429s were bad luck (a late arrival in a short
        window), not others' traffic; go back to a little under what was
        accepted, never above the rate before the cut."""
        s = self.settings
        # A worker alone is accepted at its own pace, less the pacing margin and
        # the arrivals still to come: settling there would ratchet it down at
        # every edge. Only clearly less means others take part of the quota.
        if fraction < self.fraction * (1.0 - s.measure_slack):
            self.fraction = max(s.min_fraction, fraction, self.fraction * s.decrease)
            self.target = self.fraction
            self._last_cut = max(self._last_cut, now)
            self._probe_after = self._after(deep=True)
            return True
        if self._last_kind is Cut.CONGESTION:
            restored = min(self._before_cut, fraction * (1.0 - s.edge_cut))
            if restored > self.fraction:
                self.fraction = self.target = restored
                return True
        return False

    def _probed(self, seconds: float) -> float:
        """How far ``seconds`` of probing take the target, in the whole quota."""
        s = self.settings
        return s.probe_per_s * seconds + (seconds / s.probe_cube_s) ** 3

    def tick(self, now: float) -> None:
        """Time passes without a 429: recover towards the target, probe above it."""
        s = self.settings
        dt = max(0.0, now - self._last_tick)
        self._last_tick = now
        quiet = now - max(self._started, self._quiet_since, self._last_cut)
        if quiet > self._probe_after and self.target < self.max_fraction:
            q1, q0 = quiet - self._probe_after, max(0.0, quiet - self._probe_after - dt)
            grown = self.probe_scale * (self._probed(q1) - self._probed(q0))
            self.target = min(self.max_fraction, self.target + grown)
        if self.fraction < self.target:
            self.fraction = min(self.target, self.fraction + dt / s.recovery_s)
        elif self.fraction > self.target:
            self.fraction = self.target
