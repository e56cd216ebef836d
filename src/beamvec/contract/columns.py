"""The column names of an output's Parquet files, in one place.

Vector files (``schema.vector_schema``), dead-letter files
(``schema.DEAD_LETTER_SCHEMA``) and the checkpoints under ``_partial/``
(content hash and vector) name their columns from here; every reader (reuse,
inspect, verify, search, export, report) does too. Imported as
``from beamvec.contract import columns as col``.
"""

from __future__ import annotations

# -- vector files ------------------------------------------------------------
ID = "id"
VECTOR = "vector"
CONTENT_HASH = "content_hash"  # also in dead-letter files and checkpoints
TOKENS = "tokens"
TRUNCATED = "truncated"
SOURCE_SHARD = "source_shard"  # also in dead-letter files
SOURCE_POSITION = "source_position"  # also in dead-letter files
METADATA = "metadata"

# -- dead-letter files ---------------------------------------------------------
REASON = "reason"
MESSAGE = "message"
RAW = "raw"
ATTEMPTS = "attempts"
STATUS = "status"
