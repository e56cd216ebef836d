"""The values that flow through a job: shards, records, embeddings, dead letters.

Plain dataclasses so that they pickle across Beam workers and are tested
without Beam. Ids and hashes are defined here, once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from beamvec.errors import redact_url

#: Reason codes of dead letters. One place, so that tests, docs and `inspect` agree.
EMPTY_TEXT = "empty_text"
MISSING_TEXT = "missing_text"
NON_STRING_TEXT = "non_string_text"
INVALID_JSON = "invalid_json"
INVALID_UTF8 = "invalid_utf8"
INVALID_ROW = "invalid_row"
CORRUPT_FILE = "corrupt_file"
INVALID_ID = "invalid_id"
DUPLICATE_ID = "duplicate_id"
TEXT_TOO_LONG = "text_too_long"
EMBED_FAILED = "embed_failed"
BAD_REQUEST = "bad_request"

REASONS = (
    EMPTY_TEXT,
    MISSING_TEXT,
    NON_STRING_TEXT,
    INVALID_JSON,
    INVALID_UTF8,
    INVALID_ROW,
    CORRUPT_FILE,
    INVALID_ID,
    DUPLICATE_ID,
    TEXT_TOO_LONG,
    EMBED_FAILED,
    BAD_REQUEST,
)
#: Reasons a later attempt may fix (`--retry-dead-letters`' default); the
#: others are the input's own and come back the same every time.
TRANSIENT_REASONS = (EMBED_FAILED,)


@dataclass(frozen=True)
class Shard:
    """One input file and the output name it maps to."""

    path: str  # full fsspec URL or local path, as listed
    name: str  # safe, unique output name (no extension)
    size: int = -1
    version: str = ""  # generation, etag or mtime: whatever the store offers

    @property
    def fingerprint(self) -> str:
        return content_hash(f"{self.path}\x00{self.size}\x00{self.version}")[:32]

    @property
    def shown(self) -> str:
        """The path as recorded and printed: without a URL's secrets."""
        return redact_url(self.path)


@dataclass(frozen=True)
class Split:
    """A unit of work smaller than (or equal to) one input file.

    For txt, jsonl, csv and tsv files stored uncompressed, ``start`` and
    ``end`` are byte offsets at record boundaries: a record belongs to the split
    in which its first byte lies. For Parquet they are row-group indexes
    ``[start, end)``. ``end == -1`` means "to the end of the file". Records of
    a split carry the same positions and ids as when the file is read whole:
    ``first_position`` is the position of the split's first record.
    """

    shard: Shard
    index: int = 0
    count: int = 1
    start: int = 0
    end: int = -1
    first_position: int = 1

    @classmethod
    def whole(cls, shard: Shard) -> Split:
        return cls(shard)

    @property
    def name(self) -> str:
        """The output name: the shard's own when the file is not split."""
        if self.count == 1:
            return self.shard.name
        return f"{self.shard.name}.part-{self.index:05d}-of-{self.count:05d}"

    @property
    def fingerprint(self) -> str:
        """The shard's fingerprint for a whole file (so 0.1 commit records still
        match); otherwise that fingerprint bound to this split's range."""
        if self.count == 1:
            return self.shard.fingerprint
        key = f"{self.shard.fingerprint}\x00{self.index}/{self.count}\x00{self.start}-{self.end}"
        return content_hash(key)[:32]


@dataclass(frozen=True)
class RawRecord:
    """A record as a reader found it: an id and a text, built once, never changed.

    ``text`` is a string from every reader (prepare still checks, for records
    built elsewhere). ``cut`` says the reader kept only a prefix of a text too
    long to hold in memory; prepare then truncates or dead-letters it.
    """

    position: int  # 1-based line number, row index or record ordinal in the shard
    id: str | None
    text: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    cut: bool = False


@dataclass(frozen=True)
class ReadError:
    """A record a reader could not read, and why: it becomes a dead letter."""

    position: int
    id: str | None  # the record's own id when it could be read, else `<shard>:<position>` or None
    reason: str  # one of REASONS
    detail: str = ""  # human-readable detail for the dead letter
    raw: str = ""  # a short excerpt of the raw input


@dataclass
class Record:
    """A validated record, ready to embed: ``text`` is exactly what is sent."""

    id: str
    text: str
    content_hash: str
    tokens: int
    truncated: bool
    position: int
    metadata: dict[str, Any] = field(default_factory=dict)
    title: str | None = None


@dataclass
class DeadLetter:
    """A record that was not embedded, and why."""

    id: str | None
    position: int
    reason: str
    message: str
    raw: str = ""
    attempts: int = 0
    status: int | None = None
    content_hash: str | None = None  # set when the text got that far (a retry keeps refusals)


@dataclass
class Embedded:
    record: Record
    vector: np.ndarray


def content_hash(text: str) -> str:
    """sha256 of the UTF-8 bytes of ``text``: the identity of what was embedded."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def bucket_of(content_hash: str, buckets: int) -> int:
    """The hash range a content hash falls in, of ``buckets``: the reuse join
    and the Batch API's request files cut the texts the same way."""
    return int(content_hash[:8], 16) % buckets


def has_surrogates(text: str) -> bool:
    """Lone surrogates (from bad bytes or JSON escapes) cannot be written as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def line_id(shard_name: str, position: int) -> str:
    """The id of a record that carries none: `<shard>:<line>`."""
    return f"{shard_name}:{position}"


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_shard_name(relative_path: str, full_path: str, max_len: int = 120) -> str:
    """A file name that cannot escape the output root and never collides.

    The readable part comes from the path relative to the glob's base, with
    separators and unsafe characters replaced; the suffix is a hash of the full
    input path, so `a/x.jsonl` and `b/x.jsonl` (or two paths that sanitize to
    the same text) still get different names.
    """
    readable = _UNSAFE.sub("_", relative_path.replace("\\", "/").replace("/", "__"))
    readable = readable.strip("._") or "shard"
    readable = readable[:max_len]
    return f"{readable}-{content_hash(full_path)[:10]}"
