"""A run's time series: one small sample every few seconds, kept in the output.

``beamvec report`` draws the rate against the quota, the 429s and retries
from it. The ``Timeline`` sampler is a background thread of the driver (like
``progress.Reporter``); it reads counters from a callable, so it does not
care who counts. The file is rewritten every minute, so that a run that
crashes still leaves its timeline, and once more at the end:
``OUTPUT/_runs/<run_id>/timeline.jsonl``, one JSON sample per line.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import fsspec

from beamvec import counters as c
from beamvec.contract.layout import RUNS_DIR as RUNS_DIR
from beamvec.contract.layout import TIMELINE as TIMELINE

LOG = logging.getLogger("beamvec")

#: Counters never go down: samples hold them relative to the first reading, so
#: counts left in a process by an earlier run (tests, notebooks) do not leak in.
_GAUGES = c.GAUGES


@dataclass(frozen=True)
class Sample:
    """Counts since the run started, at ``t`` seconds after it started."""

    t: float
    records: int = 0  # records read
    texts_sent: int = 0  # texts the API embedded
    texts_reused: int = 0  # texts whose vector was reused from a previous output
    requests_ok: int = 0  # sent and not (yet) failed: includes those in flight
    requests_429: int = 0
    requests_5xx: int = 0
    requests_other: int = 0  # other failed requests (4xx, timeouts, connection errors)
    retries: int = 0
    throttled_ms: int = 0  # time spent waiting for the quota limiter
    in_flight: int = 0  # requests in flight at ``t`` (a gauge, not a count)

    @property
    def requests(self) -> int:
        return self.requests_ok + self.requests_429 + self.requests_5xx + self.requests_other


def sample_from(state: Mapping[str, float], t: float) -> Sample:
    """A sample from counters named as today's ``PROGRESS.read()`` and the
    embedder's stats name them: records, texts, reused, requests (attempts),
    status_<code> (failed attempts by status), retries, throttled_ms, in_flight;
    ``requests_ok`` when the counter source counts successful answers itself."""
    statuses = {k.removeprefix("status_"): v for k, v in state.items() if k.startswith("status_")}
    r429 = statuses.get("429", 0)
    r5xx = sum(v for k, v in statuses.items() if k.isdigit() and k.startswith("5"))
    failed = sum(statuses.values())
    return Sample(
        t=round(t, 2),
        records=int(state.get(c.RECORDS, 0)),
        texts_sent=int(state.get(c.TEXTS, 0)),
        texts_reused=int(state.get(c.REUSED, 0)),
        requests_ok=int(state.get(c.REQUESTS_OK, max(0, state.get(c.REQUESTS, 0) - failed))),
        requests_429=int(r429),
        requests_5xx=int(r5xx),
        requests_other=int(failed - r429 - r5xx),
        retries=int(state.get(c.RETRIES, 0)),
        throttled_ms=int(state.get(c.THROTTLED_MS, 0)),
        in_flight=int(state.get(c.IN_FLIGHT, 0)),
    )


def new_run_id(now: float | None = None) -> str:
    """UTC start time and a short random suffix: sorts by time, never collides."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def timeline_path(output_root: str, run_id: str) -> str:
    return "/".join([output_root.rstrip("/"), RUNS_DIR, run_id, TIMELINE])


class Timeline:
    """Samples ``read()`` every ``interval`` seconds on a background thread and
    writes the samples to ``OUTPUT/_runs/<run_id>/timeline.jsonl``."""

    def __init__(
        self,
        output: str,
        read: Callable[[], Mapping[str, float]],
        storage_options: dict[str, Any] | None = None,
        interval: float = 5.0,
        flush_every: float = 60.0,
        run_id: str | None = None,
    ) -> None:
        self.read = read
        self.interval = interval
        self.flush_every = flush_every
        self.run_id = run_id or new_run_id()
        self.fs, root = fsspec.core.url_to_fs(output, **(storage_options or {}))
        self.path = timeline_path(root, self.run_id)
        self.samples: list[Sample] = []
        self._baseline: dict[str, float] = {}
        self._started = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="beamvec-timeline", daemon=True)

    def sample(self) -> Sample:
        state = dict(self.read())
        now = {k: v - self._baseline.get(k, 0) if k not in _GAUGES else v for k, v in state.items()}
        taken = sample_from(now, time.time() - self._started)
        self.samples.append(taken)
        return taken

    def write(self, failing: bool = False) -> None:
        """Rewrite the whole file: small (a night is ~10k lines), and always whole.
        When the run is ``failing`` (a full disk), its own one line says why."""
        body = "".join(json.dumps(asdict(s), separators=(",", ":")) + "\n" for s in self.samples)
        try:
            self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
            with self.fs.open(self.path, "wb") as fh:
                fh.write(body.encode())
        except OSError as exc:  # the timeline is for people: it never fails a run
            (LOG.debug if failing else LOG.warning)("could not write the run timeline %s: %s", self.path, exc)

    def _loop(self) -> None:
        last_write = time.time()
        while not self._stop.wait(self.interval):
            self.sample()
            if time.time() - last_write >= self.flush_every:
                self.write()
                last_write = time.time()

    def __enter__(self) -> Timeline:
        self._baseline = {k: v for k, v in self.read().items() if k not in _GAUGES}
        self._started = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self.write(failing=exc[0] is not None)


def read_timeline(fs: fsspec.AbstractFileSystem, path: str) -> list[Sample]:
    """The samples of one timeline file; unknown fields (a newer beamvec) are ignored."""
    known = {f.name for f in fields(Sample)}
    samples = []
    with fs.open(path, "rb") as fh:
        for line in fh.read().decode().splitlines():
            if line.strip():
                row = json.loads(line)
                samples.append(Sample(**{k: v for k, v in row.items() if k in known}))
    return samples


def latest_timeline(fs: fsspec.AbstractFileSystem, output_root: str) -> tuple[str, list[Sample]] | None:
    """The run id and samples of the newest run that left a timeline, or None."""
    try:
        found = fs.glob("/".join([output_root.rstrip("/"), RUNS_DIR, "*", TIMELINE]))
    except FileNotFoundError:
        return None
    if not found:
        return None
    newest = max(found, key=lambda p: p.rsplit("/", 2)[-2])
    return newest.rsplit("/", 2)[-2], read_timeline(fs, newest)
