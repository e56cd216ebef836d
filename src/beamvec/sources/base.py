"""What every reader shares: the formats, the reader settings, the reader protocol.

A reader gets a byte stream and the split to read, and yields one
`RawRecord` or one `ReadError` per input record, in order: nothing is
dropped silently and nothing is changed after it is built.
"""

from __future__ import annotations

import codecs
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol

from beamvec import records as r
from beamvec.errors import SystemicError
from beamvec.records import RawRecord, ReadError, Shard, Split, line_id

FORMATS = ("txt", "jsonl", "csv", "tsv", "parquet")

FORMAT_BY_EXT = {
    ".txt": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}
COMPRESSION_BY_EXT = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2"}

#: Bytes asked of the (decompressing) stream per read. Small enough that a
#: corrupt block loses little already-decoded data, large enough to be cheap.
CHUNK = 64 * 1024
EXCERPT = 200
#: A jsonl line or csv record longer than this is dead-lettered unparsed.
MAX_LINE_BYTES = 64 * 1024 * 1024

Item = RawRecord | ReadError


@dataclass(frozen=True)
class ReaderConfig:
    """How to find the id, text and title of a record, and how much to hold.

    ``max_text_chars``: a txt line longer than this many bytes keeps only its
    first ``max_text_chars`` bytes, cut at a character boundary (so at most that
    many characters, fewer for multi-byte text), and is marked ``cut``; the
    rest of the line is skipped without being held. None keeps lines whole.
    ``max_line_bytes``: a jsonl line or csv/tsv record longer than this is
    dead-lettered as ``text_too_long`` without being parsed.
    """

    format: str | None = None  # None = by extension; else one of FORMATS
    id_field: str = "id"
    text_field: str = "text"
    title_field: str | None = None
    encoding: str = "utf-8"
    max_text_chars: int | None = None
    max_line_bytes: int = MAX_LINE_BYTES

    def __post_init__(self) -> None:
        if self.max_text_chars is not None and self.max_text_chars < 1:
            raise ValueError(f"max_text_chars must be at least 1 or None, not {self.max_text_chars}")
        if self.max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be at least 1, not {self.max_line_bytes}")


class Cursor:
    """Where the next record would start, so a corrupt tail is reported in place."""

    def __init__(self, position: int = 1) -> None:
        self.next = position


class Reader(Protocol):
    """One format: read a split from a stream opened at the start of the file."""

    def __call__(
        self, fh: IO[bytes], split: Split, config: ReaderConfig, cursor: Cursor
    ) -> Iterator[Item]: ...


def detect_format(path: str, override: str | None = None) -> tuple[str, str | None]:
    """(format, compression) of a shard, from its extension unless overridden.

    Compression always comes from the extension (.gz, .zst, .bz2), so
    ``--format jsonl`` still reads ``part-0000.gz`` as gzip.
    """
    name = posixpath.basename(path.rstrip("/")).lower()
    stem, ext = posixpath.splitext(name)
    compression = COMPRESSION_BY_EXT.get(ext)
    if compression:
        name = stem
        ext = posixpath.splitext(stem)[1]
    if override is not None:
        if override not in FORMATS:
            raise ValueError(f"unknown input format {override!r}; choose one of {', '.join(FORMATS)}")
        return override, compression
    fmt = FORMAT_BY_EXT.get(ext)
    if fmt is None:
        known = ", ".join(sorted(FORMAT_BY_EXT))
        raise ValueError(
            f"cannot tell the format of {path!r} from its extension {ext or '(none)'!r}: "
            f"known extensions are {known} (optionally + .gz/.zst/.bz2); "
            f"name the files accordingly or pass --format ({'/'.join(FORMATS)})"
        )
    return fmt, compression


def check_encoding(encoding: str) -> str:
    name = codecs.lookup(encoding).name
    if "\n".encode(name) != b"\n":
        raise ValueError(f"encoding {encoding!r} is not ASCII-compatible; re-encode the input as UTF-8")
    return name


def strip_bom(data: bytes, offset: int, encoding: str) -> bytes:
    """Drop a UTF-8 byte-order mark at the very start of the file."""
    if offset == 0 and encoding.startswith("utf") and data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8):]
    return data


def excerpt(text: str, limit: int = EXCERPT) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def bytes_excerpt(data: bytes) -> str:
    return excerpt(repr(data[: EXCERPT + 1])[2:-1])


class MissingColumnError(SystemicError, ValueError):
    """A file without the column a flag names: no record of it can be read,
    so the run stops with this one line (a SystemicError reaches the driver
    from any runner's worker)."""


def missing_column(shard: Shard, kind: str, field: str, columns: Iterable[str], flag: str) -> MissingColumnError:
    return MissingColumnError(
        f"{shard.shown}: no {kind} column {field!r}; the file has columns {list(columns)}; "
        f"pass {flag} with one of them"
    )


def too_long(position: int, record_id: str, length: int, limit: int, what: str, head: bytes) -> ReadError:
    return ReadError(
        position, record_id, r.TEXT_TOO_LONG,
        f"{what} {position} is {length} bytes, over the {limit}-byte limit for one record; "
        "split it, or read the file as txt (long lines are then cut)",
        bytes_excerpt(head),
    )


def parse_id(value: Any, fallback: str) -> str | None:
    """A record's id as a string; None when the value cannot be an id.

    Strings are ids as they are, integers their decimal string (so ``1`` and
    ``"1"`` are the same id: a duplicate within a shard), a missing or null id
    means the record has none (``<shard>:<position>``). Anything else
    (objects, arrays, booleans, fractions) is refused: ``str()`` of it is not
    an id anyone can look up.
    """
    if value is None:
        return fallback
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def as_str(value: Any) -> str | None:
    return None if value is None else value if isinstance(value, str) else str(value)


def bad_bytes(split: Split, number: int, line: bytes, exc: UnicodeDecodeError, encoding: str) -> ReadError:
    return ReadError(
        number, line_id(split.shard.name, number), r.INVALID_UTF8,
        f"bytes {exc.start}-{exc.end} of line {number} are not valid {encoding}: {exc.reason}",
        bytes_excerpt(line),
    )
