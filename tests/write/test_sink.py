"""How vector files are written: every reader gets the floats back bit for bit,
and the vector column is stored as plain floats (no dictionary, no min/max)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from beamvec.records import Embedded, Record, content_hash
from beamvec.write.sink import Output, ParquetShardWriter, vector_schema, vector_table

DIM = 768
ROWS = 2048


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[str, np.ndarray]:
    """One vector file of unit vectors as an embedding model returns them:
    every float distinct."""
    root = tmp_path_factory.mktemp("sink")
    matrix = np.random.default_rng(7).standard_normal((ROWS, DIM)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    rows = [
        Embedded(Record(f"id-{i}", f"text {i}", content_hash(f"text {i}"), 3, False, i + 1), matrix[i])
        for i in range(ROWS)
    ]
    out = Output(str(root / "out"))
    writer = ParquetShardWriter(out, out.path("vectors", "a.parquet"), vector_schema(DIM))
    for start in range(0, ROWS, 1000):  # as the worker flushes: several tables, one file
        writer.write(vector_table(rows[start:start + 1000], "in/a.jsonl", DIM))
    writer.commit({"test": True})
    return out.path("vectors", "a.parquet"), matrix


def test_every_reader_gets_the_floats_back_exactly(written) -> None:
    path, matrix = written
    table = pq.read_table(path)
    assert table.column("id").to_pylist() == [f"id-{i}" for i in range(ROWS)]
    got = np.asarray(table.column("vector").combine_chunks().flatten()).reshape(ROWS, DIM)
    assert np.array_equal(got, matrix)
    polars = np.stack(pl.read_parquet(path)["vector"].to_numpy())
    assert np.array_equal(polars.astype(np.float32), matrix)
    duck = duckdb.sql(f"SELECT vector FROM '{path}' ORDER BY source_position").fetchnumpy()["vector"]
    assert np.array_equal(np.stack(duck).astype(np.float32), matrix)


def test_the_vector_column_is_plain_floats_and_the_file_smaller_than_them(written) -> None:
    """A dictionary on distinct floats fills, falls back to plain and stays in
    the file: with one, this file was 1.15 times the raw floats."""
    path, _ = written
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    for g in range(meta.num_row_groups):
        vector = meta.row_group(g).column(names.index("vector.list.element"))
        assert not vector.has_dictionary_page
        assert "RLE_DICTIONARY" not in vector.encodings
        assert not vector.is_stats_set
        assert vector.compression == "ZSTD"
        ids = meta.row_group(g).column(names.index("id"))
        assert ids.is_stats_set  # readers still skip row groups by id
    raw = ROWS * DIM * 4
    assert pq.ParquetFile(path).metadata.num_rows == ROWS
    assert Path(path).stat().st_size < raw
