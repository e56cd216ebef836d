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

#: Reason codes of dead letters. One place, so that tests, docs and `inspect` agree.
EMPTY_TEXT = "empty_text"
MISSING_TEXT = "missing_text"
NON_STRING_TEXT = "non_string_text"
INVALID_JSON = "invalid_json"
INVALID_UTF8 = "invalid_utf8"
INVALID_ROW = "invalid_row"
CORRUPT_FILE = "corrupt_file"
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
    DUPLICATE_ID,
    TEXT_TOO_LONG,
    EMBED_FAILED,
    BAD_REQUEST,
)


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


@dataclass
class RawRecord:
    """What a reader yields: a record as found, or why it could not be read.

    Exactly one of ``text`` (possibly not a string, checked in prepare) or
    ``error`` is meaningful: readers never drop a line silently.
    """

    position: int  # 1-based line number, row index or record ordinal in the shard
    id: str | None
    text: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    error: str | None = None  # a reason code
    detail: str = ""  # human-readable detail for the dead letter
    raw: str = ""  # a short excerpt of the raw input, for the dead letter


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
    content_hash: str | None = None  # set when the text got that far; not written


@dataclass
class Embedded:
    record: Record
    vector: np.ndarray


def content_hash(text: str) -> str:
    """sha256 of the UTF-8 bytes of ``text``: the identity of what was embedded."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


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
