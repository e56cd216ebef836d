"""Where vectors land: the Parquet schema and writers, and commit rules per store.

Commit rules, on every store:
- local disk: write under ``_tmp/`` and rename into place (atomic on POSIX);
- object stores (gs://, s3://, memory://): write under the final name; the
  object becomes visible only when its upload completes, so no rename (which
  is copy + delete there) is ever needed.
What the files mean (commit records, manifest, footer) is contract.py's.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from beamvec.records import DeadLetter, Embedded

FOOTER_KEY = b"beamvec"
TMP_DIR = "_tmp"
#: Staged files of another run untouched this long belong to a dead run
#: (a live run holds the output's lease and renews it every 30 s).
STALE_STAGING_S = 120.0
ROW_GROUP_ROWS = 4096


def write_options(schema: pa.Schema) -> dict[str, Any]:
    """How beamvec writes Parquet: zstd everywhere; dictionaries and min/max
    statistics only on the columns they serve. A vector column's floats are
    all distinct and nobody filters on them: a dictionary fills, falls back to
    plain after it was paid for, and is kept in the file. With both on,
    768-dim vectors took 2.4 times the CPU to write and the file was 1.04
    times the raw floats, against 0.94 (benchmarks/write_cost.py)."""
    keyed = [f.name for f in schema if not pa.types.is_fixed_size_list(f.type)]
    return {"compression": "zstd", "use_dictionary": keyed, "write_statistics": keyed}


def vector_schema(dimension: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dimension), nullable=False),
            pa.field("content_hash", pa.string(), nullable=False),
            pa.field("tokens", pa.int32(), nullable=False),
            pa.field("truncated", pa.bool_(), nullable=False),
            pa.field("source_shard", pa.string(), nullable=False),
            pa.field("source_position", pa.int64(), nullable=False),
            pa.field("metadata", pa.string()),  # JSON object of pass-through fields
        ]
    )


DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("source_shard", pa.string(), nullable=False),
        pa.field("source_position", pa.int64(), nullable=False),
        pa.field("raw", pa.string()),
        pa.field("attempts", pa.int32()),
        pa.field("status", pa.int32()),
        # the hash of the text that was sent (null when it never got that far):
        # a --retry-dead-letters run dead-letters it again instead of re-sending
        pa.field("content_hash", pa.string()),
    ]
)


def vector_table(rows: Sequence[Embedded], source: str, dimension: int) -> pa.Table:
    """Columns built straight from a contiguous float32 block: no per-float objects."""
    matrix = np.ascontiguousarray(
        np.stack([row.vector for row in rows]) if rows else np.zeros((0, dimension)),
        dtype=np.float32,
    )
    if matrix.shape[1:] != (dimension,):
        raise ValueError(f"vectors have shape {matrix.shape}, expected (n, {dimension})")
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dimension)
    recs = [row.record for row in rows]
    return pa.Table.from_arrays(
        [
            pa.array([r.id for r in recs], pa.string()),
            vectors,
            pa.array([r.content_hash for r in recs], pa.string()),
            pa.array([r.tokens for r in recs], pa.int32()),
            pa.array([r.truncated for r in recs], pa.bool_()),
            pa.array([source] * len(recs), pa.string()),
            pa.array([r.position for r in recs], pa.int64()),
            pa.array([_metadata_json(r.metadata, r.title) for r in recs], pa.string()),
        ],
        schema=vector_schema(dimension),
    )


def dead_letter_table(letters: Sequence[DeadLetter], source: str) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "id": d.id,
                "reason": d.reason,
                "message": d.message,
                "source_shard": source,
                "source_position": d.position,
                "raw": d.raw,
                "attempts": d.attempts,
                "status": d.status,
                "content_hash": d.content_hash,
            }
            for d in letters
        ],
        schema=DEAD_LETTER_SCHEMA,
    )


def _newest_mtime(fs: Any, entry: dict[str, Any]) -> float:
    """The latest modification time of a staged file, or of anything in a run's folder."""
    times = [float(entry.get("mtime") or 0)]
    if entry.get("type") == "directory":
        with contextlib.suppress(FileNotFoundError):
            times += [float(i.get("mtime") or 0) for i in fs.find(entry["name"], detail=True).values()]
    return max(times)


def _metadata_json(metadata: dict[str, Any], title: str | None) -> str | None:
    if title is not None:
        metadata = {**metadata, "title": title}
    if not metadata:
        return None
    return json.dumps(metadata, ensure_ascii=False, default=str, sort_keys=True)


class Output:
    """An output root on any fsspec store, and the paths inside it."""

    def __init__(
        self, root: str, storage_options: dict[str, Any] | None = None, run_id: str = ""
    ) -> None:
        self.fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
        self.root = path.rstrip("/")
        self.url = root.rstrip("/")
        self.renames = isinstance(self.fs, LocalFileSystem)
        #: Files are staged under ``_tmp/<run_id>/``: one run never touches another's.
        self.run_id = run_id

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def write_table(self, final: str, table: pa.Table) -> None:
        """Write a small Parquet file atomically."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **write_options(table.schema))
        self.write_bytes(final, sink.getvalue().to_pybytes())

    def remove_tree(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)

    def staging(self, final: str) -> str:
        """Where to write ``final`` before it is committed."""
        if not self.renames:
            return final
        name = final.rsplit("/", 1)[-1]
        return self.path(TMP_DIR, *([self.run_id] if self.run_id else []), f"{uuid.uuid4().hex}.{name}")

    def commit(self, staged: str, final: str) -> None:
        if staged != final:
            self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            self.fs.mv(staged, final)

    def makedirs(self, path: str) -> None:
        if self.renames:
            self.fs.makedirs(path, exist_ok=True)

    def write_bytes(self, final: str, data: bytes) -> None:
        """Write a small file atomically (manifest, _SUCCESS)."""
        staged = self.staging(final)
        self.makedirs(staged.rsplit("/", 1)[0])
        with self.fs.open(staged, "wb") as fh:
            fh.write(data)
        self.commit(staged, final)

    def read_json(self, final: str) -> dict[str, Any] | None:
        try:
            with self.fs.open(final, "rb") as fh:
                return json.loads(fh.read())
        except FileNotFoundError:
            return None

    def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path)

    def clean_staging(self, older_than: float = STALE_STAGING_S) -> list[str]:
        """Remove what crashed runs left under ``_tmp/`` (local disk only):
        entries of other runs untouched for ``older_than`` seconds, never this
        run's nor a live one's (a run holding the lease renews it far more
        often). Returns what was removed."""
        tmp = self.path(TMP_DIR)
        if not self.renames or not self.fs.exists(tmp):
            return []
        removed = []
        cutoff = time.time() - older_than
        for entry in self.fs.ls(tmp, detail=True):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if name == self.run_id or _newest_mtime(self.fs, entry) > cutoff:
                continue
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(entry["name"], recursive=True)
                removed.append(entry["name"])
        return removed

    def finish_staging(self) -> None:
        """Remove this run's staging folder, and ``_tmp/`` when it is empty."""
        if not self.renames or not self.run_id:
            return
        self.remove_tree(self.path(TMP_DIR, self.run_id))
        with contextlib.suppress(OSError):
            self.fs.rmdir(self.path(TMP_DIR))


class ParquetShardWriter:
    """Streams row groups of one Parquet file; visible only after ``commit``."""

    def __init__(self, output: Output, final: str, schema: pa.Schema) -> None:
        self.output = output
        self.final = final
        self.schema = schema
        self.staged = output.staging(final)
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._fh = None

    def _open(self) -> pq.ParquetWriter:
        if self._writer is None:
            self.output.makedirs(self.staged.rsplit("/", 1)[0])
            self._fh = self.output.fs.open(self.staged, "wb")
            self._writer = pq.ParquetWriter(self._fh, self.schema, **write_options(self.schema))
        return self._writer

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._open().write_table(table, row_group_size=ROW_GROUP_ROWS)
            self.rows += table.num_rows

    def commit(self, footer: dict[str, Any]) -> None:
        writer = self._open()
        writer.add_key_value_metadata({FOOTER_KEY: json.dumps(footer, sort_keys=True)})
        writer.close()
        self._fh.close()
        self.output.commit(self.staged, self.final)

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
                self._fh.close()
            finally:
                if self.staged != self.final:
                    self.output.remove(self.staged)


def checkpoint_table(rows: Sequence[Embedded], dimension: int) -> pa.Table:
    matrix = np.ascontiguousarray(np.stack([row.vector for row in rows]), dtype=np.float32)
    return pa.table(
        {
            "content_hash": pa.array([row.record.content_hash for row in rows], pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dimension),
        }
    )
