"""The peak a server observed over sliding windows.

An event at time ``t`` counts in every window ``(s - window_s, s]`` with
``t <= s``, the rule of the sliding quota (quota.py), so an emulator that
enforces ``rpm`` over a sliding window never reports a peak above it. Not
thread-safe: the server calls it under its own lock.
"""

from __future__ import annotations

from collections import deque

from beamvec.emulator.quota import SlidingWindowQuota  # noqa: F401 - its old home, still imported


class WindowPeak:
    """The most events, and the largest weight, seen in any one window."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self._weight = 0
        self.peak_count = 0
        self.peak_weight = 0

    def add(self, now: float, weight: int = 0) -> None:
        while self._events and self._events[0][0] <= now - self.window_s:
            _, old = self._events.popleft()
            self._weight -= old
        self._events.append((now, weight))
        self._weight += weight
        self.peak_count = max(self.peak_count, len(self._events))
        self.peak_weight = max(self.peak_weight, self._weight)
