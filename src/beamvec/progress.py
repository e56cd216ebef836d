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
from collections.abc import Callable
from typing import IO


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

    def watch(self, snapshot: Callable[[], dict[str, float]]) -> None:
        """Also report another counter source (an Embedder's stats)."""
        with self._lock:
            self._sources.append(snapshot)

    def read(self) -> dict[str, float]:
        with self._lock:
            out: dict[str, float] = {
                "records": self.records, "shards": self.shards, "bytes": self.bytes, "reused": self.reused,
                "done": self.done,
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
    written = min(1.0, state.get("done", state["records"]) / state["records"]) if state["records"] else 0.0
    return read_fraction * written


def format_line(
    state: dict[str, float], total_shards: int, total_bytes: int, elapsed: float, bar: bool = False,
    done: float | None = None,
) -> str:
    """One progress line; its bar, percentage and ETA follow ``done`` (by
    default ``done_fraction`` of the state)."""
    rate = state["records"] / elapsed if elapsed > 0 else 0.0
    share = done_fraction(state, total_bytes) if done is None else done
    eta = f"ETA {elapsed * (1 - share) / share:,.0f} s" if 0 < share < 1 else "ETA --"
    filled = round(share * BAR)
    drawn = f"[{'#' * filled}{'.' * (BAR - filled)}] " if bar else ""
    line = (
        f"beamvec: {drawn}{state['records']:,.0f} records, shards {state['shards']:.0f}/{total_shards} "
        f"({share:.0%} of input bytes done), {rate:,.1f} records/s, {eta}, "
        f"retries {state.get('retries', 0):,.0f}, 429s {state.get('throttled_429', 0):,.0f}"
    )
    sent, reused = state.get("texts", 0), state.get("reused", 0)
    if sent or reused or state.get("requests"):
        line += (
            f", texts sent {sent:,.0f} reused {reused:,.0f}, in flight {state.get('in_flight', 0):,.0f}, "
            f"throttled {state.get('throttled_ms', 0) / 1000:,.1f} s"
        )
    return line


class Reporter:
    """Prints progress from a background thread until stopped."""

    def __init__(
        self, total_shards: int, total_bytes: int, stream: IO[str] | None = None,
        interval: float | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval or (0.5 if self.tty else 10.0)
        self.total_shards = total_shards
        self.total_bytes = total_bytes
        self.started = time.time()
        self._done = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="beamvec-progress", daemon=True)

    def _line(self) -> str:
        state = PROGRESS.read()
        # Shown forward only: the estimate dips while reading outruns writing.
        self._done = max(self._done, done_fraction(state, self.total_bytes))
        return format_line(state, self.total_shards, self.total_bytes, time.time() - self.started,
                           bar=self.tty, done=self._done)

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
