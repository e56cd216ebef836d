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
ROW_GROUP_ROWS = 4096


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
            }
            for d in letters
        ],
        schema=DEAD_LETTER_SCHEMA,
    )


def _metadata_json(metadata: dict[str, Any], title: str | None) -> str | None:
    if title is not None:
        metadata = {**metadata, "title": title}
    if not metadata:
        return None
    return json.dumps(metadata, ensure_ascii=False, default=str, sort_keys=True)


class Output:
    """An output root on any fsspec store, and the paths inside it."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
        self.root = path.rstrip("/")
        self.url = root.rstrip("/")
        self.renames = isinstance(self.fs, LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def write_table(self, final: str, table: pa.Table) -> None:
        """Write a small Parquet file atomically."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
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
        return self.path(TMP_DIR, f"{uuid.uuid4().hex}.{name}")

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

    def clean_staging(self) -> None:
        """Remove leftovers of a crashed run (local disk only)."""
        if self.renames and self.fs.exists(self.path(TMP_DIR)):
            self.fs.rm(self.path(TMP_DIR), recursive=True)


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
            self._writer = pq.ParquetWriter(self._fh, self.schema, compression="zstd")
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
