"""Seeded fault and latency draws, so a failing run can be replayed."""

from __future__ import annotations

import random
import threading

from beamvec.emulator.config import EmulatorConfig

#: Fault kinds, in the order their rates are stacked on [0, 1).
FAULTS = ("fail_500", "fail_503", "hang", "reset", "malformed")


class FaultInjector:
    """Draws, per accepted request, a fault (or none) and a latency."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def reseed(self, seed: int) -> None:
        with self._lock:
            self._rng = random.Random(seed)

    def draw(self, config: EmulatorConfig) -> tuple[str | None, float, str | None]:
        """(fault or None, latency in seconds, malformed kind or None)."""
        with self._lock:
            u = self._rng.random()
            jitter = self._rng.uniform(-1.0, 1.0)
            pick = self._rng.random()
        fault = None
        edge = 0.0
        for name in FAULTS:
            edge += getattr(config, name)
            if u < edge:
                fault = name
                break
        latency = max(0.0, config.latency_ms + jitter * config.jitter_ms) / 1000.0
        kind = None
        if fault == "malformed":
            kinds = config.malformed_kinds
            kind = kinds[min(int(pick * len(kinds)), len(kinds) - 1)]
        return fault, latency, kind
