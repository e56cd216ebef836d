"""Shared helpers for the pipeline tests: run the CLI, read an output back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq

from beamvec.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def beam_run(capsys, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, "run", "--runner=DirectRunner", "--progress-interval=0", *args)


def read_output(root: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Vectors, dead letters and manifest of an output, read back with pyarrow."""
    fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
    path = path.rstrip("/")
    with fs.open(f"{path}/_manifest.json", "rb") as fh:
        manifest = json.loads(fh.read())
    vectors = {}
    for file in sorted(fs.glob(f"{path}/vectors/*.parquet")):
        with fs.open(file, "rb") as fh:
            vectors[Path(file).stem] = pq.read_table(fh)
    dead = {}
    for file in sorted(fs.glob(f"{path}/dead_letters/*.parquet")):
        with fs.open(file, "rb") as fh:
            dead[Path(file).stem] = pq.read_table(fh)
    return {
        "manifest": manifest,
        "vectors": vectors,
        "dead": dead,
        "success": fs.exists(f"{path}/_SUCCESS"),
        "files": sorted(fs.find(path)),
    }


def vectors_by_id(out: dict[str, Any]) -> dict[str, np.ndarray]:
    result: dict[str, np.ndarray] = {}
    for table in out["vectors"].values():
        ids = table.column("id").to_pylist()
        dim = table.schema.field("vector").type.list_size
        matrix = np.asarray(table.column("vector").combine_chunks().flatten()).reshape(len(ids), dim)
        for i, vid in enumerate(ids):
            assert vid not in result, f"id {vid} written twice"
            result[vid] = matrix[i]
    return result


def assert_reconciled(out: dict[str, Any]) -> None:
    """For every shard: read = embedded + dead-lettered, and the files agree."""
    assert out["success"], "no _SUCCESS"
    for name, shard in out["manifest"]["shards"].items():
        assert shard["read"] == shard["embedded"] + shard["dead_lettered"], name
        rows = out["vectors"][name].num_rows
        assert rows == shard["embedded"], name
        dead_rows = out["dead"][name].num_rows if name in out["dead"] else 0
        assert dead_rows == shard["dead_lettered"], name
    totals = out["manifest"]["totals"]
    assert totals["read"] == totals["embedded"] + totals["dead_lettered"]
