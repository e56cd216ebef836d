"""What grows with the corpus and what must not: the job graph.

Dataflow refuses job graphs over ~10 MB. The driver writes the work list to
the output and the pipeline carries only its path, so the graph stays the
same size whatever the number of shards.
"""

from __future__ import annotations

import uuid
from typing import Any

import apache_beam as beam
import fsspec
import pytest

from beamvec.cli import main


class _Stop(Exception):
    """Raised instead of running the pipeline: only its size is wanted."""


@pytest.mark.slow
def test_job_graph_stays_under_1_mb_at_100000_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    fs = fsspec.filesystem("memory")
    bucket = f"scale-{uuid.uuid4().hex[:8]}"
    # Paths as long as real exports: Spark part files under a dated prefix in a bucket.
    prefix = f"{bucket}/warehouse/exports/corpus_documents_v3/region=europe-west4/dt=2026-11-20"
    for i in range(100_000):
        fs.pipe(f"/{prefix}/part-{i:05d}-{uuid.UUID(int=i)}-c000.jsonl", b'{"id": "x", "text": "y"}\n')
    sizes: list[int] = []
    real = beam.Pipeline

    class Measuring(real):  # type: ignore[misc, valid-type]
        def run(self, test_runner_api: Any = "AUTO") -> Any:
            sizes.append(len(self.to_runner_api().SerializeToString()))
            raise _Stop

    monkeypatch.setattr(beam, "Pipeline", Measuring)
    try:
        code = main([
            "run", "--runner=DirectRunner", "--quiet",
            "--input", f"memory://{prefix}/*.jsonl", "--output", f"memory://{bucket}-out/vectors",
        ])
    finally:
        _forget(fs, f"/{bucket}/")
    assert sizes, f"exit {code}: the run stopped before its pipeline"
    (size,) = sizes
    assert size < 1_000_000, f"the pipeline proto is {size:,} bytes for 100,000 shards"
    # and the work list it points to holds every shard, in the output
    work = fs.glob(f"/{bucket}-out/vectors/_runs/*/work.jsonl")
    assert len(work) == 1
    with fs.open(work[0], "rb") as fh:
        assert sum(1 for line in fh if b'"todo"' in line) == 100_000
    _forget(fs, f"/{bucket}-out/")


def _forget(fs: Any, prefix: str) -> None:
    """Drop a tree from the memory store (its rm is quadratic in the file count)."""
    for key in [k for k in fs.store if k.startswith(prefix)]:
        del fs.store[key]
    for key in [k for k in fs.pseudo_dirs if k.startswith(prefix)]:
        fs.pseudo_dirs.remove(key)
