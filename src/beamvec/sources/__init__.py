"""Inputs: listing shards, cutting them into splits, reading records.

- `listing`: globs into `Shard`s (size and version from the listing), what is
  never an input (markers, beamvec's own files, the output), unknown formats.
- `compression`: decompressed byte streams, corrupt-stream detection.
- `lines`: newline-separated records in bounded chunks (txt, jsonl, csv, tsv).
- `txt`, `jsonl`, `delimited` (csv/tsv), `parquet`: one reader each, behind
  the `Reader` protocol; a reader yields a `RawRecord` or a `ReadError` per
  record, both immutable.
- `splits`: `read_split`, `read_shard` and `plan_splits`.
"""

from beamvec.errors import InputAccessError, InputVanishedError, NoInputError, UsageError
from beamvec.records import RawRecord, ReadError, Split
from beamvec.sources.base import FORMATS, Item, Reader, ReaderConfig, detect_format
from beamvec.sources.listing import check_formats, list_shards
from beamvec.sources.splits import plan_splits, read_shard, read_split, splittable

__all__ = [
    "FORMATS",
    "InputAccessError",
    "InputVanishedError",
    "Item",
    "NoInputError",
    "RawRecord",
    "ReadError",
    "Reader",
    "ReaderConfig",
    "Split",
    "UsageError",
    "check_formats",
    "detect_format",
    "list_shards",
    "plan_splits",
    "read_shard",
    "read_split",
    "splittable",
]
