"""Where vectors land: the Parquet schema and writers, and commit rules per store.

Commit rules, on every store:
- local disk: write under ``_tmp/`` and rename into place (atomic on POSIX);
- object stores (gs://, s3://, memory://): write under the final name; the
  object becomes visible only when its upload completes, so no rename (which
  is copy + delete there) is ever needed.
The output's layout, schemas and ``Output`` are contract/'s; they are
re-exported here for the modules that write through the sink.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beamvec.contract import columns as col
from beamvec.contract.layout import TMP_DIR as TMP_DIR
from beamvec.contract.output import STALE_STAGING_S as STALE_STAGING_S
from beamvec.contract.output import Output as Output
from beamvec.contract.schema import DEAD_LETTER_SCHEMA as DEAD_LETTER_SCHEMA
from beamvec.contract.schema import FOOTER_KEY as FOOTER_KEY
from beamvec.contract.schema import vector_schema as vector_schema
from beamvec.contract.schema import write_options as write_options
from beamvec.records import DeadLetter, Embedded

ROW_GROUP_ROWS = 4096


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
                col.ID: d.id,
                col.REASON: d.reason,
                col.MESSAGE: d.message,
                col.SOURCE_SHARD: source,
                col.SOURCE_POSITION: d.position,
                col.RAW: d.raw,
                col.ATTEMPTS: d.attempts,
                col.STATUS: d.status,
                col.CONTENT_HASH: d.content_hash,
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
        if self._writer is None:
            return
        if self.staged == self.final:
            # An object store writes under the final name: closing would upload the
            # torn file over a committed one (another run's, when this one lost the
            # lease). Discard the upload instead; the file object must never close.
            discard = getattr(self._fh, "discard", None)
            if discard is not None:
                discard()
            with contextlib.suppress(AttributeError):  # memory:// files have no such flag
                self._fh.closed = True
            return
        try:
            self._writer.close()
            self._fh.close()
        finally:
            self.output.remove(self.staged)


def checkpoint_table(rows: Sequence[Embedded], dimension: int) -> pa.Table:
    matrix = np.ascontiguousarray(np.stack([row.vector for row in rows]), dtype=np.float32)
    return pa.table(
        {
            col.CONTENT_HASH: pa.array([row.record.content_hash for row in rows], pa.string()),
            col.VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dimension),
        }
    )
