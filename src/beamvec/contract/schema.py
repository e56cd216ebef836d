"""The Parquet schemas of an output's files, and how beamvec writes Parquet."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

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
