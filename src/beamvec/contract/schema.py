"""The Parquet schemas of an output's files, and how beamvec writes Parquet."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from beamvec.contract import columns as col

#: The key of beamvec's footer in a Parquet file's key-value metadata.
FOOTER_KEY = b"beamvec"


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
            pa.field(col.ID, pa.string(), nullable=False),
            pa.field(col.VECTOR, pa.list_(pa.float32(), dimension), nullable=False),
            pa.field(col.CONTENT_HASH, pa.string(), nullable=False),
            pa.field(col.TOKENS, pa.int32(), nullable=False),
            pa.field(col.TRUNCATED, pa.bool_(), nullable=False),
            pa.field(col.SOURCE_SHARD, pa.string(), nullable=False),
            pa.field(col.SOURCE_POSITION, pa.int64(), nullable=False),
            pa.field(col.METADATA, pa.string()),  # JSON object of pass-through fields
        ]
    )


DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field(col.ID, pa.string()),
        pa.field(col.REASON, pa.string(), nullable=False),
        pa.field(col.MESSAGE, pa.string(), nullable=False),
        pa.field(col.SOURCE_SHARD, pa.string(), nullable=False),
        pa.field(col.SOURCE_POSITION, pa.int64(), nullable=False),
        pa.field(col.RAW, pa.string()),
        pa.field(col.ATTEMPTS, pa.int32()),
        pa.field(col.STATUS, pa.int32()),
        # the hash of the text that was sent (null when it never got that far):
        # a --retry-dead-letters run dead-letters it again instead of re-sending
        pa.field(col.CONTENT_HASH, pa.string()),
    ]
)
