"""One finished job's result file, read as a stream into a vector writer.

A result file can be GBs (50,000 lines of 3,072 floats as JSON): it is
downloaded in chunks to a temporary file (``BatchClient.download``) and read
here line by line; vectors go to the writer in bounded chunks, so memory is
bounded by one chunk and the job's keys, never by the file.
"""

from __future__ import annotations

from collections.abc import Collection, Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from beamvec.batchapi.jsonl import BatchSpec, LineError, iter_results, missing_line

#: Vectors handed to a writer at a time: ~32 MiB of float32 whatever the size,
#: and at most CHUNK_ROWS (small vectors cost more as Python objects than as floats).
CHUNK_BYTES = 32 << 20
CHUNK_ROWS = 4096


class VectorWriter(Protocol):
    """Where one job's vectors go (a checkpoint file, or a dict in tests)."""

    def write(self, keys: Sequence[str], vectors: np.ndarray) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


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
