"""One finished job's result file, read as a stream into a vector writer.

A result file can be GBs (50,000 lines of 3,072 floats as JSON): it is
downloaded in chunks to a temporary file (``BatchClient.download``) and read
here line by line; vectors go to the writer in bounded chunks, so memory is
bounded by one chunk and the job's keys, never by the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, TYPE_CHECKING, Protocol

import numpy as np

from beamvec.batchapi.journal import BatchJob
from beamvec.batchapi.jsonl import BatchSpec, LineError, iter_results, missing_line
from beamvec.errors import BackendError

if TYPE_CHECKING:
    from beamvec.batchapi.client import BatchClient

#: Vectors handed to a writer at a time: ~32 MiB of float32 whatever the size,
#: and at most CHUNK_ROWS (small vectors cost more as Python objects than as floats).
CHUNK_BYTES = 32 << 20
CHUNK_ROWS = 4096


class VectorWriter(Protocol):
    """Where one job's vectors go (a checkpoint file, or a dict in tests)."""

    def write(self, keys: Sequence[str], vectors: np.ndarray) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


#: Where a finished job's vectors go: a writer per job (e.g. a checkpoint file).
VectorSink = Callable[[BatchJob], VectorWriter]


@dataclass
class MemoryWriter:
    """Keeps the vectors: for callers without a sink (small runs, tests)."""

    vectors: dict[str, np.ndarray] = field(default_factory=dict)

    def write(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        self.vectors.update(zip(keys, vectors, strict=True))

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        pass


@dataclass(frozen=True)
class JobResults:
    """What a result file said of a job's keys."""

    good: frozenset[str]  # keys answered with a usable vector
    errors: dict[str, LineError]  # keys without one: line errors and missing lines


def read_results(
    lines: Iterable[bytes | str],
    keys: Collection[str],
    spec: BatchSpec,
    writer: VectorWriter,
    skip: Container[str] = frozenset(),
) -> JobResults:
    """Stream ``lines`` into ``writer``: the first good answer of each of
    ``keys`` (none of ``skip``, which have a vector already); a key with only
    errors keeps its last one; a key without a line is a retryable error.
    The writer is committed at the end, aborted on any exception."""
    rows = max(1, min(CHUNK_ROWS, CHUNK_BYTES // (4 * spec.dimension)))
    good: set[str] = set()
    errors: dict[str, LineError] = {}
    chunk_keys: list[str] = []
    chunk: list[np.ndarray] = []
    try:
        for key, result in iter_results(lines, spec):
            if key not in keys or key in good:
                continue  # not this job's, or a repeated answer: keep the first good one
            if isinstance(result, LineError):
                errors[key] = result
                continue
            good.add(key)
            errors.pop(key, None)
            if key in skip:
                continue
            chunk_keys.append(key)
            chunk.append(result)
            if len(chunk) >= rows:
                writer.write(chunk_keys, np.stack(chunk))
                chunk_keys, chunk = [], []
        if chunk:
            writer.write(chunk_keys, np.stack(chunk))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    for key in keys:
        if key not in good and key not in errors:
            errors[key] = missing_line(key)
    return JobResults(frozenset(good), errors)


#: What reading a finished job came to: read; its result file unreadable for now
#: (read it next pass, never resubmit for that); gone (its texts go again).
READ, BUSY, GONE = "read", "busy", "gone"


@dataclass(frozen=True)
class JobReport:
    """What reading one finished job found, for the driver to settle it: a
    count and the keys without a vector, never a vector."""

    job_id: str
    status: str  # READ, BUSY or GONE
    good: int = 0  # keys answered with a usable vector (now in the job's checkpoint)
    errors: Mapping[str, LineError] = field(default_factory=dict)  # keys without one
    message: str = ""  # why GONE


def collect_job(
    job: BatchJob, client: BatchClient, keys: Collection[str], spec: BatchSpec, sink: VectorSink
) -> JobReport:
    """Download a SUCCEEDED job's result file (in chunks, to disk) and stream
    it into ``sink(job)``; what it said of ``keys``, the job's keys."""
    try:
        stream = client.download(job.result_file)  # type: ignore[arg-type]
    except BackendError as exc:
        if exc.retryable:
            return JobReport(job.id, BUSY)
        return JobReport(job.id, GONE, message=f"result file unreadable: {exc}")  # gone (48 h) or refused
    with stream:  # stored before the job counts as read
        results = read_results(stream, keys, spec, sink(job))
    return JobReport(job.id, READ, len(results.good), results.errors)


def write_report(report: JobReport, fh: IO[bytes]) -> None:
    """A report as JSON lines: its head, then one line a key without a vector."""
    head = {"job_id": report.job_id, "status": report.status, "good": report.good,
            "message": report.message}
    fh.write((json.dumps(head) + "\n").encode())
    for error in report.errors.values():
        fh.write((json.dumps(asdict(error)) + "\n").encode())


def read_report(lines: Iterable[bytes]) -> JobReport:
    """``write_report``'s lines back into a report."""
    it: Iterator[bytes] = iter(lines)
    head = json.loads(next(it))
    errors = {e.key: e for e in (LineError(**json.loads(line)) for line in it if line.strip())}
    return JobReport(head["job_id"], head["status"], head["good"], errors, head["message"])
