"""`beamvec report`'s data: everything the page shows, read from an output
(the run to chart and its timeline, dead letters with examples, a sample of
vector norms). Reads only; the page is report.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np

from beamvec.commands import (
    Output,
    dead_letter_files,
    description_of,
    has_success,
    iter_batches,
    open_output,
    vector_files,
)
from beamvec.contract import Description, Manifest
from beamvec.contract import columns as col
from beamvec.driver.timeline import RUNS_DIR, TIMELINE, Sample, read_timeline, timeline_path
from beamvec.errors import UsageError

NORM_SAMPLE = 20_000  # vectors read for the norm histogram
EXAMPLES = 3  # dead letters shown per reason
LOOK_BACK = 20  # timelines read, newest first, for one long enough to chart


class DeadLetterRow(TypedDict):
    """The columns of a dead-letter file the page shows (contract.columns)."""

    id: str | None
    reason: str
    message: str | None
    source_shard: str | None
    raw: str | None


@dataclass(frozen=True)
class DeadLetters:
    by_reason: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[DeadLetterRow]] = field(default_factory=dict)  # the first EXAMPLES by reason


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows, read from the output."""

    url: str
    manifest: Manifest | None
    description: Description | None
    complete: bool
    vector_files: int
    run_id: str | None
    samples: list[Sample]
    dead: DeadLetters
    norms: np.ndarray
    timelines: tuple[str, ...] = ()  # run ids with a timeline, oldest first
    run_note: str = ""  # why the charts show this run, or why they are empty


def collect(url: str, options: dict[str, Any], norm_sample: int = NORM_SAMPLE, run: str | None = None) -> ReportData:
    output, manifest = open_output(url, options)
    files = vector_files(output)
    ids = run_ids(output)
    run_id, samples, note = choose_run(output, ids, run)
    return ReportData(
        url=output.url,
        manifest=manifest,
        description=description_of(output, manifest),
        complete=has_success(output),
        vector_files=len(files),
        run_id=run_id,
        samples=samples,
        dead=_dead_letters(output),
        norms=_norm_sample(output, files, norm_sample),
        timelines=tuple(ids),
        run_note=note,
    )


def run_ids(output: Output) -> list[str]:
    """Runs that left a timeline, oldest first (run ids sort by start time)."""
    try:
        found = output.fs.glob("/".join([output.root.rstrip("/"), RUNS_DIR, "*", TIMELINE]))
    except FileNotFoundError:
        return []
    return sorted(path.rsplit("/", 2)[-2] for path in found)


def chartable(samples: Sequence[Sample]) -> bool:
    return bool(intervals(list(samples)))


def _too_short(run_id: str, samples: Sequence[Sample]) -> str:
    lasted = f"{samples[-1].t:,.0f} s of samples" if samples else "no sample"
    return f"run {run_id} was too short to chart: its timeline holds {lasted}"


def choose_run(output: Output, ids: Sequence[str], run: str | None) -> tuple[str | None, list[Sample], str]:
    """The run to chart, its samples, and a note for the reader: ``run`` when
    given, else the newest run long enough to chart (a 3-second incremental
    run leaves nothing to draw)."""
    def samples_of(run_id: str) -> list[Sample]:
        return read_timeline(output.fs, timeline_path(output.root, run_id))

    if run is not None:
        if run not in ids:
            listed = ", ".join(ids[-5:]) or "none"
            raise UsageError(f"--run {run}: {output.url} holds no timeline for that run; "
                             f"runs with one (newest last): {listed}")
        samples = samples_of(run)
        return run, samples, "" if chartable(samples) else _too_short(run, samples)
    if not ids:
        return None, [], ""
    newest = samples_of(ids[-1])
    if chartable(newest):
        return ids[-1], newest, ""
    for run_id in reversed(ids[-LOOK_BACK:-1]):
        samples = samples_of(run_id)
        if chartable(samples):
            return run_id, samples, (f"{_too_short(ids[-1], newest)}; showing {run_id}, the newest run "
                                     "long enough (choose another with --run)")
    return ids[-1], newest, _too_short(ids[-1], newest)


def _dead_letters(output: Output) -> DeadLetters:
    counts: Counter[str] = Counter()
    examples: dict[str, list[DeadLetterRow]] = {}
    for path in dead_letter_files(output):
        for batch in iter_batches(output, path, [col.ID, col.REASON, col.MESSAGE, col.SOURCE_SHARD, col.RAW]):
            for row in batch.to_pylist():
                counts[row[col.REASON]] += 1
                kept = examples.setdefault(row[col.REASON], [])
                if len(kept) < EXAMPLES:
                    kept.append(row)
    return DeadLetters(dict(counts.most_common()), examples)


def _norm_sample(output: Output, files: list[str], limit: int) -> np.ndarray:
    """L2 norms of up to ``limit`` vectors, spread over the files (the first rows of each)."""
    if not files:
        return np.zeros(0)
    per_file = max(1, -(-limit // len(files)))
    norms: list[np.ndarray] = []
    for path in files[:limit]:
        taken = 0
        for batch in iter_batches(output, path, [col.VECTOR], batch_size=min(per_file, 8192)):
            column = batch.column(0)
            flat = column.flatten().to_numpy(zero_copy_only=False)
            matrix = flat.reshape(len(column), column.type.list_size)[: per_file - taken]
            norms.append(np.linalg.norm(matrix.astype(np.float64), axis=1))
            taken += len(matrix)
            if taken >= per_file:
                break
    return np.concatenate(norms)[:limit] if norms else np.zeros(0)


def intervals(samples: list[Sample]) -> list[tuple[Sample, Sample]]:
    """Consecutive pairs, starting from zero at t=0 (samples count from the run's start)."""
    points = [Sample(t=0.0), *samples]
    return [(a, b) for a, b in zip(points, points[1:], strict=False) if b.t > a.t]
