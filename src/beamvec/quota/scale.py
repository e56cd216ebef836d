"""How many tokens the server counts per token we estimate: the token scale.

Google counts tokens with its own tokenizer; beamvec paces with an estimate
(per script, unbiased, yet never exact). Paced under a told tokens-per-minute
quota, an estimate that counts too many leaves quota unused (a third too many
filled 0.74 of it) and one that counts too few meets 429s. The limiter
charges ``estimate * factor`` to its token bucket, and the factor is learnt:

* **Reported counts** (``calibrate``): the server said how many it counted;
  the factor is their ratio, recent requests weighing most. Nothing else
  moves it then.
* **Probing down.** Held back by the token bucket, answered (a success in
  the last ``answered_s``: without answers nothing says the server takes
  more) and quiet (no 429) for ``probe_after_s``, the factor comes down by ``first_probe_per_s`` a second:
  quota left unused by over-counting is found within seconds (from 0.75 of
  the limit in about 15 s). After the first refusal it comes down only by
  ``probe_per_s``, after ``settle_after_s`` of quiet: it stays near the edge
  the 429 found, and still follows an estimate that drifts.
* **Backing off.** A 429 while held back by the token bucket, with the
  factor probed below where it started, says the probe went past the edge:
  back up by ``backoff``. (Counting too few from the start is a rate the
  server refuses, which the limiter's AIMD handles as for any quota.)

Pure and single-threaded: the limiter calls it under its lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ScaleSettings:
    probe_after_s: float = 5.0
    first_probe_per_s: float = 0.02
    settle_after_s: float = 20.0
    probe_per_s: float = 0.002
    backoff: float = 0.05
    edge_slack: float = 0.01  # at the full rate: a 429 backs off to where the probe began, or this far above the factor it met
    min_factor: float = 0.25
    memory: float = 0.98  # weight of past reports per new one
    answered_s: float = 2.0

    def __post_init__(self) -> None:
        for name in ("first_probe_per_s", "probe_per_s", "backoff", "edge_slack"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1)")
        if not 0.0 < self.min_factor <= 1.0:
            raise ValueError("min_factor must be in (0, 1]")
        if not 0.0 <= self.memory < 1.0:
            raise ValueError("memory must be in [0, 1)")


class TokenScale:
    """``factor``: server-counted tokens per estimated token, as far as known."""

    def __init__(self, settings: ScaleSettings, now: float) -> None:
        self.settings = settings
        self.factor = 1.0
        self._reported: tuple[float, float] | None = None  # decayed sums (estimated, counted)
        self._refused = False  # a 429 came while probing
        self._last_tick = now
        self._quiet_since = now
        self._answered = -math.inf  # the last success
        self._probe_from = self.factor  # where probing down began (a 429 backs off no further)

    def on_success(self, now: float) -> None:
        self._answered = max(self._answered, now)

    @property
    def reported(self) -> bool:
        """Whether the server reported its counts (then they decide alone)."""
        return self._reported is not None

    def calibrate(self, estimated: float, counted: float) -> None:
        """The server counted ``counted`` tokens where we estimated ``estimated``."""
        if estimated <= 0 or counted < 0:
            return
        m = self.settings.memory
        e, c = self._reported or (0.0, 0.0)
        self._reported = (e * m + estimated, c * m + counted)
        e, c = self._reported
        self.factor = max(c / e, 1e-3)

    def quiet_after(self, until: float) -> None:
        """A 429 (or its hold, until ``until``): quiet starts again then."""
        self._quiet_since = max(self._quiet_since, until)

    def tick(self, now: float, token_bound: bool) -> None:
        """Time passes: probe down while the token bucket holds requests back and the server is quiet."""
        s = self.settings
        dt = max(0.0, now - self._last_tick)
        self._last_tick = now
        if not token_bound or self.reported or now - self._answered > s.answered_s:
            return
        after, rate = (s.settle_after_s, s.probe_per_s) if self._refused else (s.probe_after_s, s.first_probe_per_s)
        probing = min(dt, now - self._quiet_since - after)
        if probing > 0:
            self.factor = max(s.min_factor, self.factor * math.exp(-rate * probing))

    def on_throttled(self, now: float, token_bound: bool, at_full_rate: bool = False) -> bool:
        """A new 429 event: if the token bucket held requests back and the
        factor was probed down, the probe went too far; back off. At the
        full told rate (``at_full_rate``) hardly above where the probe began:
        there the 429 is the quota's edge (a window counts whole requests),
        not our count, and backing off 5 % at each one ratcheted the factor
        up (0.89 of the limit); backing off to 1 % above where the probe
        began still climbed 1 % a cycle. So no further than where the probe
        began, or 1 % above the factor that met the 429. Returns whether
        the factor moved."""
        self._quiet_since = max(self._quiet_since, now)
        if not token_bound or self.reported or self.factor >= 1.0 and not self._refused:
            return False
        self._refused = True
        backed_off = self.factor * (1.0 + self.settings.backoff)
        if at_full_rate:
            backed_off = min(backed_off, max(self._probe_from, self.factor * (1.0 + self.settings.edge_slack)))
        self.factor = backed_off
        self._probe_from = self.factor
        return True
