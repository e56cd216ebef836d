"""Live progress of a local run: records done, rate, ETA, retries, 429s.

Workers of an in-process runner (the DirectRunner) share this process, so
they count into one process-wide ``PROGRESS``; the driver's ``Reporter``
prints it: one rewritten line on a terminal, plain periodic log lines
otherwise. Remote runners report through Beam's metrics instead.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from beamvec import counters as c


class Progress:
    """Thread-safe counters the shard workers add to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.records = 0
            self.shards = 0
            self.bytes = 0
            self.reused = 0
            self.done = 0
            self.throttled_wall = 0.0  # seconds during which some request waited on the quota
            self._throttled_until = 0.0  # monotonic end of the waits counted so far
            self._sources: list[Callable[[], dict[str, float]]] = []

    def add_records(self, n: int = 1) -> None:
        with self._lock:
            self.records += n

    def add_bytes(self, n: int) -> None:
        """Stored input bytes read, inside shards and splits: what the ETA follows."""
        with self._lock:
            self.bytes += n

    def add_reused(self, n: int = 1) -> None:
        with self._lock:
            self.reused += n

    def add_done(self, n: int = 1) -> None:
        """Records written: embedded or dead-lettered."""
        with self._lock:
            self.done += n

    def shard_done(self, size: int) -> None:
        with self._lock:
            self.shards += 1
            self.bytes += max(0, size)

    def waited(self, seconds: float, now: float | None = None) -> None:
        """A request waited ``seconds`` on the quota, ending now. Waits of
        threads that overlap count once: this is wall time, not a sum."""
        end = time.monotonic() if now is None else now
        with self._lock:
            start = max(end - seconds, self._throttled_until)
            if end > start:
                self.throttled_wall += end - start
            self._throttled_until = max(self._throttled_until, end)

    def watch(self, snapshot: Callable[[], dict[str, float]]) -> None:
        """Also report another counter source (an Embedder's stats)."""
        with self._lock:
            self._sources.append(snapshot)

    def read(self) -> dict[str, float]:
        with self._lock:
            out: dict[str, float] = {
                c.RECORDS: self.records, c.SHARDS: self.shards, c.BYTES: self.bytes, c.REUSED: self.reused,
                c.DONE: self.done, c.THROTTLED_WALL_MS: self.throttled_wall * 1000.0,
            }
            sources = list(self._sources)
        for snapshot in sources:
            for key, value in snapshot().items():
                out[key] = out.get(key, 0) + value
        return out


PROGRESS = Progress()


BAR = 20


def done_fraction(state: dict[str, float], total_bytes: int) -> float:
    """The share of the run done: input bytes read inside shards, scaled by the
    share of the records read that are written (reading runs ahead of
    embedding by what is in flight), so it moves from the first seconds even
    when the run is one large file. An estimate: a read that outruns the
    writes can lower it for a moment."""
    read_fraction = min(1.0, state["bytes"] / total_bytes) if total_bytes > 0 else 0.0
    written = min(1.0, state.get(c.DONE, state[c.RECORDS]) / state[c.RECORDS]) if state[c.RECORDS] else 0.0
    return read_fraction * written


#: Seconds of recent progress that rates and the ETA are taken over: long
#: enough to smooth batches, short enough to follow a run that speeds up or stalls.
WINDOW_SECONDS = 20.0


@dataclass(frozen=True)
class Estimate:
    """What the line says about speed: records written per second and the
    seconds left, both over the recent window (``eta`` None: not yet known)."""

    rate: float
    eta: float | None


class Window:
    """Rates over the last ``seconds`` of samples, not since the start: a rate
    since the start halves whenever the run waits (model load, a reused
    stretch, the quota), and an ETA from it grows instead of converging."""

    def __init__(self, seconds: float = WINDOW_SECONDS) -> None:
        self.seconds = seconds
        self._samples: deque[tuple[float, float, float]] = deque()  # (at, written, share)

    def add(self, at: float, written: float, share: float) -> Estimate:
        samples = self._samples
        samples.append((at, written, share))
        while len(samples) > 2 and samples[1][0] <= at - self.seconds:
            samples.popleft()  # keep one sample at or before the window's start
        then, written_then, share_then = samples[0]
        span = at - then
        if span <= 0:
            return Estimate(0.0, None)
        rate = max(0.0, written - written_then) / span
        share_rate = (share - share_then) / span
        eta = (1.0 - share) / share_rate if share_rate > 0 and 0 < share < 1 else None
        return Estimate(rate, eta)


def format_line(
    state: dict[str, float], total_shards: int, share: float, estimate: Estimate, bar: bool = False,
) -> str:
    """One progress line: bar and percentage from ``share`` (see
    ``done_fraction``), rate and ETA from ``estimate`` (see ``Window``)."""
    eta = f"ETA {estimate.eta:,.0f} s" if estimate.eta is not None else "ETA --"
    filled = round(share * BAR)
    drawn = f"[{'#' * filled}{'.' * (BAR - filled)}] " if bar else ""
    line = (
        f"beamvec: {drawn}{state['records']:,.0f} records, shards {state['shards']:.0f}/{total_shards} "
        f"({share:.0%} of input bytes done), {estimate.rate:,.1f} records/s, {eta}, "
        f"retries {state.get(c.RETRIES, 0):,.0f}, 429s {state.get(c.THROTTLED_429, 0):,.0f}"
    )
    sent, reused = state.get(c.TEXTS, 0), state.get(c.REUSED, 0)
    if sent or reused or state.get(c.REQUESTS):
        line += (
            f", texts sent {sent:,.0f} reused {reused:,.0f}, in flight {state.get(c.IN_FLIGHT, 0):,.0f}, "
            f"waited on quota {state.get(c.THROTTLED_WALL_MS, 0) / 1000:,.1f} s"
        )
    return line


class Reporter:
    """Prints progress from a background thread until stopped."""

    def __init__(
        self, total_shards: int, total_bytes: int, stream: IO[str] | None = None,
        interval: float | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval or (0.5 if self.tty else 10.0)
        self.total_shards = total_shards
        self.total_bytes = total_bytes
        self.clock = clock
        self._done = 0.0
        self._window = Window()
        self._window.add(clock(), 0.0, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="beamvec-progress", daemon=True)

    def _line(self) -> str:
        state = PROGRESS.read()
        # Shown forward only: the estimate dips while reading outruns writing.
        self._done = max(self._done, done_fraction(state, self.total_bytes))
        estimate = self._window.add(self.clock(), state.get(c.DONE, 0.0), self._done)
        return format_line(state, self.total_shards, self._done, estimate, bar=self.tty)
    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self.tty:
                self.stream.write("\r\x1b[2K" + self._line())
            else:
                self.stream.write(self._line() + "\n")
            self.stream.flush()

    def __enter__(self) -> Reporter:
        PROGRESS.reset()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
