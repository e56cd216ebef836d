"""What the server's handlers share: settings, quota meter, stats, fault draws
and vectors, swapped as a whole when settings change; the lock guards quota
and stats."""

from __future__ import annotations

import dataclasses
import socket
import threading
from typing import Any

from beamvec.emulator.batch import BatchService
from beamvec.emulator.config import EmulatorConfig
from beamvec.emulator.faults import FaultInjector
from beamvec.emulator.quota import make_quota
from beamvec.emulator.stats import Stats
from beamvec.emulator.vectors import make_vectors


class State:
    def __init__(self, config: EmulatorConfig) -> None:
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.config = config
        self.faults = FaultInjector(config.seed)
        self.vectors = make_vectors(config.vectors)
        self.connections: set[socket.socket] = set()
        self.batch = BatchService(lambda: self.vectors)
        self._fresh_windows()

    def _fresh_windows(self) -> None:
        c = self.config
        self.quota = make_quota(c.quota_window, c.window_s, c.rpm, c.tpm)
        self.stats = Stats(c.window_s)

    def reset(self) -> None:
        with self.lock:
            self._fresh_windows()
        self.batch.reset()
        self.faults.reseed(self.config.seed)

    def snapshot(self, with_texts: bool = True) -> dict[str, Any]:
        """What ``GET /stats`` answers: the embedding stats, and the Batch API's."""
        with self.lock:
            snap = self.stats.snapshot(with_texts)
        snap["batch"] = self.batch.snapshot(self.config, with_texts)
        return snap

    def update(self, **changes: Any) -> None:
        with self.lock:
            old = self.config
            new = self.config = dataclasses.replace(old, **changes)
            meter = ("quota_window", "window_s", "rpm", "tpm")
            if any(getattr(old, name) != getattr(new, name) for name in meter):
                self.quota = make_quota(new.quota_window, new.window_s, new.rpm, new.tpm)
            if old.window_s != new.window_s:
                self.stats = Stats(new.window_s)
            if old.vectors != new.vectors:
                self.vectors = make_vectors(new.vectors)
        if "seed" in changes:
            self.faults.reseed(self.config.seed)
