"""Where the reuse join stages its batches: paths derived from (split,
row group, bucket), so nothing but small keys crosses the runner's shuffle.

    <stage>/keys/<split key>.arrow         one batch per bucket: the split's distinct content hashes
    <stage>/vectors/<s>-<f>-<g>.arrow      one batch per bucket: a source row group's (hash[, vector]) rows
    <stage>/found/<bucket>.arrow           one batch per split, in split-key order: its hits in that bucket

Every file holds a batch for every bucket (or split), empty ones included, so
a reader finds its batch by number without being told where it is: the
runner holds a key per split and per row group and a number per bucket,
never a reference per (split, bucket). A retried step rewrites the same path
with the same rows.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from beamvec.contract import columns as col
from beamvec.records import bucket_of
from beamvec.write.sink import Output

#: Bytes of vectors one bucket of the join holds in a worker's memory.
BUCKET_BYTES = 64 * 1024 * 1024

HASHES = pa.schema([(col.CONTENT_HASH, pa.string())])


def vector_schema(dimension: int | None) -> pa.Schema:
    """Found or source rows: hashes only when the join carries no vectors (plan)."""
    if dimension is None:
        return HASHES
    return pa.schema([(col.CONTENT_HASH, pa.string()), (col.VECTOR, pa.list_(pa.float32(), dimension))])


#: Bytes a staged content hash takes in memory (hex string and its list's share).
HASH_BYTES = 128


def bucket_count(rows: int, row_bytes: int) -> int:
    """Buckets such that one holds about ``BUCKET_BYTES`` of rows (a vector
    is ``4 * dimension`` bytes; a hash alone, for `plan`, ``HASH_BYTES``)."""
    return max(1, math.ceil(rows * row_bytes / BUCKET_BYTES))


def split_key(split_name: str) -> str:
    """A file name for a split's staged files (split names hold slashes)."""
    return hashlib.sha256(split_name.encode()).hexdigest()[:24]


def rank_name(rank: tuple[int, int, int]) -> str:
    return "-".join(str(n) for n in rank)


@dataclass(frozen=True)
class Stage:
    """The join's folder: ``_tmp/<run id>/join/`` in the output for a run, a
    temporary folder for `plan`."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False)

    def output(self) -> Output:
        return Output(self.url, self.storage_options)

    def keys(self, key: str) -> str:
        return f"keys/{key}.arrow"

    def vectors(self, rank: tuple[int, int, int]) -> str:
        return f"vectors/{rank_name(rank)}.arrow"

    def found(self, bucket: int) -> str:
        return f"found/{bucket:06d}.arrow"

    def write(self, name: str, schema: pa.Schema, parts: Sequence[pa.Table]) -> None:
        """One IPC file, one record batch per part (empty ones too), in order."""
        output = self.output()
        output.makedirs(output.path(name.rsplit("/", 1)[0]))
        with output.fs.open(output.path(name), "wb") as fh, pa.ipc.new_file(fh, schema) as writer:
            for part in parts:
                writer.write_batch(one_batch(part.cast(schema)))

    def read(self, name: str, batch: int) -> pa.RecordBatch:
        """One batch of a staged file: on local disk through pyarrow's own
        file (a read per split and bucket: 0.2 ms, fsspec's 0.8 ms)."""
        output = self.output()
        path = output.path(name)
        with pa.OSFile(path) if isinstance(output.fs, LocalFileSystem) else output.fs.open(path, "rb") as fh:
            return pa.ipc.open_file(fh).get_batch(batch)


def one_batch(table: pa.Table) -> pa.RecordBatch:
    batches = table.combine_chunks().to_batches()
    if batches:
        return batches[0]
    return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in table.schema], schema=table.schema)


def by_bucket(table: pa.Table, buckets: int) -> list[pa.Table]:
    """The rows of ``table`` by bucket of their content hash: one table per bucket, empty ones too."""
    ids = np.fromiter((bucket_of(h, buckets) for h in table.column(col.CONTENT_HASH).to_pylist()),
                      np.int64, table.num_rows)
    order = np.argsort(ids, kind="stable")
    table = table.take(pa.array(order))
    bounds = np.searchsorted(ids[order], np.arange(buckets + 1))
    return [table.slice(int(a), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def matrix_of(batch: pa.RecordBatch | pa.Table, dimension: int) -> np.ndarray:
    column = batch.column(batch.schema.get_field_index(col.VECTOR))
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return np.asarray(column.flatten(), dtype=np.float32).reshape(len(batch), dimension)


def vector_rows(hashes: Sequence[str], matrix: np.ndarray | None) -> pa.Table:
    """(hash, vector) rows; hashes only when ``matrix`` is None."""
    columns: dict[str, pa.Array] = {col.CONTENT_HASH: pa.array(hashes, pa.string())}
    if matrix is not None:
        dimension = matrix.shape[1] if matrix.ndim == 2 else 0
        columns[col.VECTOR] = pa.FixedSizeListArray.from_arrays(
            pa.array(matrix.reshape(-1), pa.float32()), dimension)
    return pa.table(columns)


def merge_bucket(
    asked: Sequence[Sequence[str]], sources: Iterable[pa.RecordBatch], dimension: int | None
) -> list[pa.Table]:
    """One bucket's merge: for each list of asked hashes, the rows of those
    the sources hold, the first source (in the order given) winning a text
    several hold. Vectors are carried when ``dimension`` is given."""
    wanted = {h for hashes in asked for h in hashes}
    found: dict[str, np.ndarray | None] = {}
    for batch in sources:
        hashes = batch.column(0).to_pylist()
        rows = [at for at, h in enumerate(hashes) if h in wanted and h not in found]
        if not rows:
            continue
        matrix = matrix_of(batch, dimension) if dimension is not None else None
        for at in rows:
            found[hashes[at]] = None if matrix is None else matrix[at]
    parts = []
    for hashes in asked:
        hits = [h for h in hashes if h in found]
        matrix = None
        if dimension is not None:
            matrix = np.stack([found[h] for h in hits]) if hits else np.zeros((0, dimension), np.float32)
        parts.append(vector_rows(hits, matrix))
    return parts
