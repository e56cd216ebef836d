"""Shard listing and readers over fsspec: txt, jsonl, csv/tsv, parquet; gz/zst/bz2.

One seam for local paths, memory://, gs://, s3:// and the rest. Listing turns
globs into `Shard`s whose size and version come from the listing itself (one
request per glob, not per file), so a fingerprint is cheap. Readers stream a
shard and yield exactly one `RawRecord` per input record: either its text or
the reason it could not be read. Nothing is dropped silently.
"""

from __future__ import annotations

import base64
import codecs
import csv
import datetime as _dt
import decimal
import io
import json
import logging
import lzma
import os
import posixpath
import re
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import fsspec
import fsspec.compression
import fsspec.core
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from fsspec.implementations.local import LocalFileSystem

from beamvec import records as r
from beamvec.errors import InputAccessError, NoInputError
from beamvec.records import RawRecord, Shard, line_id, safe_shard_name

# gcsfs probes the bucket type over gRPC unless told not to, and that probe waits
# ~60 s per call when it cannot connect (emulators, restricted networks). It must
# be set before gcsfs is imported, which fsspec does lazily, on the first gs:// URL.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

log = logging.getLogger(__name__)

FORMATS = ("txt", "jsonl", "csv", "tsv", "parquet")

_FORMAT_BY_EXT = {
    ".txt": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}
_COMPRESSION_BY_EXT = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2"}

#: Bytes asked of the (decompressing) stream per read. Small enough that a
#: corrupt block loses little already-decoded data, large enough to be cheap.
_CHUNK = 64 * 1024
_EXCERPT = 200
_GLOB_CHARS = re.compile(r"[*?\[]")
_LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


@dataclass(frozen=True)
class ReaderConfig:
    """How to find the id, text and title of a record in a shard."""

    format: str | None = None  # None = by extension; else one of FORMATS
    id_field: str = "id"
    text_field: str = "text"
    title_field: str | None = None
    encoding: str = "utf-8"


# --------------------------------------------------------------------------- formats


def detect_format(path: str, override: str | None = None) -> tuple[str, str | None]:
    """(format, compression) of a shard, from its extension unless overridden.

    Compression always comes from the extension (.gz, .zst, .bz2), so
    ``--format jsonl`` still reads ``part-0000.gz`` as gzip.
    """
    name = posixpath.basename(path.rstrip("/")).lower()
    stem, ext = posixpath.splitext(name)
    compression = _COMPRESSION_BY_EXT.get(ext)
    if compression:
        name = stem
        ext = posixpath.splitext(stem)[1]
    if override is not None:
        if override not in FORMATS:
            raise ValueError(f"unknown input format {override!r}; choose one of {', '.join(FORMATS)}")
        return override, compression
    fmt = _FORMAT_BY_EXT.get(ext)
    if fmt is None:
        known = ", ".join(sorted(_FORMAT_BY_EXT))
        raise ValueError(
            f"cannot tell the format of {path!r} from its extension {ext or '(none)'!r}: "
            f"known extensions are {known} (optionally + .gz/.zst/.bz2); "
            f"name the files accordingly or pass --format ({'/'.join(FORMATS)})"
        )
    return fmt, compression


# --------------------------------------------------------------------------- listing


def _has_magic(part: str) -> bool:
    return bool(_GLOB_CHARS.search(part))


def _glob_base(path: str) -> str:
    """The directory part of a glob before its first wildcard component."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if _has_magic(part):
            return "/".join(parts[:i])
    return path


def _relative(path: str, base: str) -> str:
    prefix = base.rstrip("/") + "/"
    if base and path.startswith(prefix):
        return path[len(prefix):]
    return path.lstrip("/")


_MARKER_NAMES = frozenset({"_SUCCESS", "_FAILURE", ".DS_Store"})
_MARKER_PREFIXES = ("_started_", "_committed_")
_MARKER_DIRS = frozenset({"_temporary", "_spark_metadata"})


def _is_hidden(relative_path: str) -> bool:
    """Commit markers and checksums that Hadoop, Spark and Databricks leave beside data.

    Never data, and with no format to read them by; everything else, dotfiles
    included, is an input.
    """
    *dirs, name = relative_path.split("/")
    return (
        name in _MARKER_NAMES
        or name.startswith(_MARKER_PREFIXES)
        or (name.startswith(".") and name.endswith(".crc"))
        or any(d in _MARKER_DIRS for d in dirs)
    )


def _version(info: dict[str, Any]) -> str:
    """Whatever the store offers that changes when the object changes."""
    for key in ("generation", "ETag", "etag", "mtime", "LastModified", "updated", "created"):
        value = info.get(key)
        if value not in (None, ""):
            return str(value).strip('"')
    return ""


def _size(info: dict[str, Any]) -> int:
    size = info.get("size", info.get("Size"))
    return int(size) if size is not None else -1


def _expand(fs: fsspec.AbstractFileSystem, path: str) -> tuple[str, dict[str, dict[str, Any]], int]:
    """(base, {path: info} of the files a pattern means, how many hidden files were skipped)."""
    matched: dict[str, dict[str, Any]] = {}
    explicit_hidden = False
    if _has_magic(path):
        base = _glob_base(path)
        # Markers are only skipped when a wildcard, not the user, picked them.
        explicit_hidden = _is_hidden(_relative(path, base))
        try:
            matched = fs.glob(path, detail=True)
        except FileNotFoundError:
            matched = {}
    if not matched:  # no wildcard, or a real name that holds "[", "*" or "?"
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return path, {}, 0
        if info.get("type") != "directory":
            return posixpath.dirname(path), {path: info}, 0
        base, matched, explicit_hidden = path, {path: info}, False
    files: dict[str, dict[str, Any]] = {}
    for name, info in matched.items():
        if info.get("type") == "directory":
            files.update(
                (p, i)
                for p, i in fs.find(name, withdirs=False, detail=True).items()
                if i.get("type") != "directory"
            )
        else:
            files[name] = info
    hidden = 0
    if not explicit_hidden:
        kept = {p: i for p, i in files.items() if not _is_hidden(_relative(p, base))}
        hidden = len(files) - len(kept)
        files = kept
    return base, files, hidden


def list_shards(patterns: Sequence[str], storage_options: dict | None = None) -> list[Shard]:
    """Expand input globs, files and directories into sorted, de-duplicated shards.

    Every pattern must match at least one file: a nightly job that silently
    reads nothing is worse than one that fails, so all patterns are listed and
    those that match nothing are reported together in one `NoInputError`.
    Directories (named, or matched by a wildcard) mean every file under them.
    There and under wildcards, commit markers (_SUCCESS, .crc checksums,
    _temporary/, ...) are skipped, so a Spark or Hadoop output folder can be an
    input as it is; name such a file explicitly to read it anyway.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    storage_options = dict(storage_options or {})
    found: dict[str, Shard] = {}
    seen_as: dict[str, str] = {}
    empty: list[str] = []
    for pattern in patterns:
        if not pattern or not pattern.strip():
            raise NoInputError("an input pattern is empty; pass a path, a glob or a directory")
        fs, path = fsspec.core.url_to_fs(pattern, **storage_options)
        local = isinstance(fs, LocalFileSystem)
        if local or "memory" in _protocols(fs):
            # Resolve "a/../b" so that one file named two ways is one shard.
            path = posixpath.normpath(path)
        fs.invalidate_cache()  # a listing cached earlier in this process may be stale
        try:
            base, files, hidden = _expand(fs, path)
        except PermissionError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputAccessError(
                f"cannot list input {pattern!r}: {reason}; check the credentials in the "
                "environment (AWS_* variables, GOOGLE_APPLICATION_CREDENTIALS or gcloud ADC) "
                "and that they may list and read it"
            ) from None
        if not files:
            empty.append(pattern + (f" (only {hidden} commit-marker files)" if hidden else ""))
            continue
        if hidden:
            log.info("input %s: skipped %d commit-marker files (_SUCCESS, .crc, ...)", pattern, hidden)
        for file_path, info in files.items():
            full = file_path if local else fs.unstrip_protocol(file_path)
            relative = _relative(file_path, base)
            if full in found and len(relative) <= len(seen_as[full]):
                continue  # matched twice: the name comes from the widest pattern, whatever the order
            seen_as[full] = relative
            found[full] = Shard(
                path=full,
                name=safe_shard_name(relative, full),
                size=_size(info),
                version=_version(info),
            )
    if empty:
        which = ", ".join(repr(p) for p in empty)
        raise NoInputError(
            f"input {which} matched no files; check the path and glob pattern "
            "(quote it so your shell does not expand it), that the bucket or directory "
            "exists, and that the storage options/credentials allow listing it"
        )
    return [found[p] for p in sorted(found)]


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


# --------------------------------------------------------------------------- reading


class _Cursor:
    """Where the next record would start, so a corrupt tail is reported in place."""

    def __init__(self) -> None:
        self.next = 1


class _ZstdReader(io.RawIOBase):
    """zstd decompression that reads every frame and fails on a truncated one.

    fsspec's zstd wrapper stops after the first frame (pzstd and concatenated
    files have many) and returns a clean EOF on a truncated frame: both would
    silently lose records.
    """

    #: Compressed bytes fed to the decoder at a time: bounds what one call inflates to.
    _FEED = 16 * 1024

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._obj: Any = None  # decoder of the frame in progress, None between frames
        self._pending = b""  # compressed bytes not yet fed
        self._out = b""  # decompressed bytes not yet returned
        self._pos = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self._pos >= len(self._out) and not self._eof:
            self._fill()
        n = min(len(b), len(self._out) - self._pos)
        b[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n

    def _fill(self) -> None:
        if not self._pending:
            self._pending = self._raw.read(_CHUNK)
            if not self._pending:
                if self._obj is not None:
                    raise zstandard.ZstdError("zstd stream is truncated: input ended inside a frame")
                self._eof = True
                return
        data, self._pending = self._pending[: self._FEED], self._pending[self._FEED :]
        out = []
        while data:
            if self._obj is None:
                self._obj = self._dctx.decompressobj()
            out.append(self._obj.decompress(data))
            if self._obj.eof:  # frame done; what follows is the next frame
                data = self._obj.unused_data
                self._obj = None
            else:
                data = b""
        self._out, self._pos = b"".join(out), 0


def _is_corrupt(exc: BaseException) -> bool:
    """A fault in the bytes of the file (report it, keep going) vs. one in reaching them.

    Transport and permission errors are raised, so the runner retries the
    shard instead of committing a truncated one.
    """
    if isinstance(
        exc,
        (FileNotFoundError, PermissionError, IsADirectoryError, ConnectionError, TimeoutError),
    ):
        return False
    if isinstance(
        exc,
        (EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError, pa.ArrowInvalid, pa.ArrowNotImplementedError),
    ):
        return True  # ArrowNotImplementedError: e.g. a Parquet codec this pyarrow lacks
    # gzip.BadGzipFile, bz2 "Invalid data stream", pyarrow IO errors on bad pages:
    # OSErrors without an errno come from decoders, not from the OS or network.
    return isinstance(exc, OSError) and exc.errno is None


def _excerpt(text: str, limit: int = _EXCERPT) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _bytes_excerpt(data: bytes) -> str:
    return _excerpt(repr(data[: _EXCERPT + 1])[2:-1])


def _lines(fh: IO[bytes]) -> Iterator[bytes]:
    """Lines split on b"\\n" (without it), streaming: a 5 MB line is joined once."""
    # read1 returns what one underlying read produced: when a stream turns out
    # to be corrupt, only that last piece is lost, not a whole _CHUNK of lines.
    read = getattr(fh, "read1", fh.read)
    parts: list[bytes] = []
    while True:
        block = read(_CHUNK)
        if not block:
            break
        start = 0
        while (end := block.find(b"\n", start)) != -1:
            parts.append(block[start:end])
            yield b"".join(parts)
            parts = []
            start = end + 1
        if start < len(block):
            parts.append(block[start:])
    if parts:
        yield b"".join(parts)


def _check_encoding(encoding: str) -> str:
    name = codecs.lookup(encoding).name
    if "\n".encode(name) != b"\n":
        raise ValueError(f"encoding {encoding!r} is not ASCII-compatible; re-encode the input as UTF-8")
    return name


def _strip_bom(line: bytes, number: int, encoding: str) -> bytes:
    if number == 1 and encoding.startswith("utf") and line.startswith(codecs.BOM_UTF8):
        return line[len(codecs.BOM_UTF8):]
    return line


def _bad_bytes(shard: Shard, number: int, line: bytes, exc: UnicodeDecodeError, encoding: str) -> RawRecord:
    return RawRecord(
        position=number,
        id=line_id(shard.name, number),
        error=r.INVALID_UTF8,
        detail=f"bytes {exc.start}-{exc.end} of line {number} are not valid {encoding}: {exc.reason}",
        raw=_bytes_excerpt(line),
    )


def _read_txt(fh: IO[bytes], shard: Shard, config: ReaderConfig, cursor: _Cursor) -> Iterator[RawRecord]:
    encoding = _check_encoding(config.encoding)
    for number, line in enumerate(_lines(fh), start=1):
        cursor.next = number + 1
        line = _strip_bom(line, number, encoding)
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            continue
        try:
            text = line.decode(encoding)
        except UnicodeDecodeError as exc:
            yield _bad_bytes(shard, number, line, exc, encoding)
            continue
        if not text.strip():
            continue
        yield RawRecord(position=number, id=line_id(shard.name, number), text=text)


def _as_str(value: Any) -> str | None:
    return None if value is None else value if isinstance(value, str) else str(value)


def _has_lone_surrogates(obj: Any) -> bool:
    return r.has_surrogates(json.dumps(obj, ensure_ascii=False))


def _read_jsonl(fh: IO[bytes], shard: Shard, config: ReaderConfig, cursor: _Cursor) -> Iterator[RawRecord]:
    encoding = _check_encoding(config.encoding)
    reserved = {config.id_field, config.text_field}
    if config.title_field:
        reserved.add(config.title_field)
    for number, line in enumerate(_lines(fh), start=1):
        cursor.next = number + 1
        line = _strip_bom(line, number, encoding)
        if not line.strip():
            continue
        fallback_id = line_id(shard.name, number)
        try:
            text_line = line.decode(encoding)
        except UnicodeDecodeError as exc:
            yield _bad_bytes(shard, number, line, exc, encoding)
            continue
        if not text_line.strip():
            continue
        try:
            obj = json.loads(text_line)
        except json.JSONDecodeError as exc:
            yield RawRecord(
                position=number, id=fallback_id, error=r.INVALID_JSON,
                detail=f"line {number}: {exc.msg} at column {exc.colno}", raw=_excerpt(text_line),
            )
            continue
        except RecursionError:
            yield RawRecord(
                position=number, id=fallback_id, error=r.INVALID_JSON,
                detail=f"line {number}: JSON nested too deeply", raw=_excerpt(text_line),
            )
            continue
        if not isinstance(obj, dict):
            yield RawRecord(
                position=number, id=fallback_id, error=r.INVALID_ROW,
                detail=f"line {number} holds a JSON {type(obj).__name__}, not an object",
                raw=_excerpt(text_line),
            )
            continue
        raw_id = obj.get(config.id_field)
        record_id = str(raw_id) if raw_id is not None else fallback_id
        record = RawRecord(
            position=number,
            id=record_id,
            text=obj.get(config.text_field),
            metadata={k: v for k, v in obj.items() if k not in reserved},
            title=_as_str(obj.get(config.title_field)) if config.title_field else None,
        )
        if _LONE_SURROGATE_ESCAPE.search(line) and _has_lone_surrogates(obj):
            # "\udc80" is valid JSON but not valid Unicode: it cannot be written out.
            record.error = r.INVALID_UTF8
            record.detail = f"line {number} holds an unpaired surrogate escape (\\uD800-\\uDFFF)"
            record.raw = _excerpt(text_line)
            record.id = fallback_id if _has_lone_surrogates(record.id) else record.id
        elif config.text_field not in obj:
            record.error = r.MISSING_TEXT
            record.detail = f"line {number} has no {config.text_field!r} field"
            record.raw = _excerpt(text_line)
        elif record.text is None:
            record.error = r.MISSING_TEXT
            record.detail = f"line {number}: {config.text_field!r} is null"
            record.raw = _excerpt(text_line)
        elif not isinstance(record.text, str):
            record.error = r.NON_STRING_TEXT
            record.detail = (
                f"line {number}: {config.text_field!r} is a JSON "
                f"{type(record.text).__name__}, not a string"
            )
            record.raw = _excerpt(text_line)
        yield record


def _raise_field_size_limit() -> None:
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2



def _missing_column(shard: Shard, kind: str, field: str, columns: Iterable[str], flag: str) -> ValueError:
    return ValueError(
        f"{shard.path}: no {kind} column {field!r}; the file has columns {list(columns)}; "
        f"pass {flag} with one of them"
    )


def _read_delimited(delimiter: str) -> Callable[[IO[bytes], Shard, ReaderConfig, _Cursor], Iterator[RawRecord]]:
    """csv: RFC 4180 quoting, multi-line fields. tsv: no quoting (IANA TSV), so a
    stray quote in a text cannot swallow the rows after it."""
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE

    def read(fh: IO[bytes], shard: Shard, config: ReaderConfig, cursor: _Cursor) -> Iterator[RawRecord]:
        encoding = _check_encoding(config.encoding)
        _raise_field_size_limit()

        def text_lines() -> Iterator[str]:
            for number, line in enumerate(_lines(fh), start=1):
                line = _strip_bom(line, number, encoding)
                # Bad bytes become lone surrogates, caught per row below.
                yield line.decode(encoding, "surrogateescape") + "\n"

        rows = csv.reader(text_lines(), delimiter=delimiter, quoting=quoting, strict=False)
        header: list[str] | None = None
        for header in rows:
            if header:
                break
        if not header:
            return  # empty file, or only blank lines
        # Column names are keys, not data: a bad byte there becomes U+FFFD.
        header = [h.encode(encoding, "surrogateescape").decode(encoding, "replace").strip() for h in header]
        columns = {name: i for i, name in enumerate(header)}
        if config.text_field not in columns:
            raise _missing_column(shard, "text", config.text_field, header, "--text-field")
        if config.title_field and config.title_field not in columns:
            raise _missing_column(shard, "title", config.title_field, header, "--title-field")
        text_i = columns[config.text_field]
        id_i = columns.get(config.id_field)
        title_i = columns.get(config.title_field) if config.title_field else None
        reserved = {text_i, id_i, title_i}
        number = 0
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error as exc:
                number += 1
                cursor.next = number + 1
                yield RawRecord(
                    position=number, id=line_id(shard.name, number), error=r.INVALID_ROW,
                    detail=f"row {number}: {exc}",
                )
                continue
            if not row or (len(row) == 1 and not row[0].strip() and len(header) > 1):
                continue  # blank line: not a record
            number += 1
            cursor.next = number + 1
            fallback_id = line_id(shard.name, number)
            joined = delimiter.join(row)
            if r.has_surrogates(joined):
                yield RawRecord(
                    position=number, id=fallback_id, error=r.INVALID_UTF8,
                    detail=f"row {number} holds bytes that are not valid {encoding}",
                    raw=_bytes_excerpt(joined.encode(encoding, "surrogateescape")),
                )
                continue
            if len(row) != len(header):
                yield RawRecord(
                    position=number, id=fallback_id, error=r.INVALID_ROW,
                    detail=f"row {number} has {len(row)} fields, the header has {len(header)}",
                    raw=_excerpt(joined),
                )
                continue
            yield RawRecord(
                position=number,
                id=row[id_i] if id_i is not None and row[id_i] != "" else fallback_id,
                text=row[text_i],
                title=row[title_i] or None if title_i is not None else None,
                metadata={header[i]: v for i, v in enumerate(row) if i not in reserved},
            )

    return read


def _jsonable(value: Any) -> Any:
    """Arrow's Python values made JSON-friendly for the metadata column."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


def _column_values(column: pa.Array) -> tuple[list[Any], set[int]]:
    """Python values of a column, and the rows whose strings are not valid UTF-8."""
    try:
        return column.to_pylist(), set()
    except UnicodeDecodeError:
        values: list[Any] = []
        bad: set[int] = set()
        for i in range(len(column)):
            try:
                values.append(column[i].as_py())
            except UnicodeDecodeError:
                values.append(None)
                bad.add(i)
        return values, bad


def _read_parquet(fh: IO[bytes], shard: Shard, config: ReaderConfig, cursor: _Cursor) -> Iterator[RawRecord]:
    if not fh.read(1):
        return  # a compressed empty file
    fh.seek(0)
    # pre_buffer (pyarrow's default) would read every row group up front: the whole file.
    pf = pq.ParquetFile(fh, pre_buffer=False)
    names = pf.schema_arrow.names
    if config.text_field not in names:
        raise _missing_column(shard, "text", config.text_field, names, "--text-field")
    if config.title_field and config.title_field not in names:
        raise _missing_column(shard, "title", config.title_field, names, "--title-field")
    reserved = {config.id_field, config.text_field, config.title_field}
    number = 0
    for batch in pf.iter_batches(batch_size=1024):
        columns: dict[str, list[Any]] = {}
        bad_rows: dict[int, str] = {}
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            columns[name], bad = _column_values(column)
            for i in bad:
                bad_rows.setdefault(i, name)
        texts = columns[config.text_field]
        ids = columns.get(config.id_field)
        titles = columns.get(config.title_field) if config.title_field else None
        meta_names = [n for n in batch.schema.names if n not in reserved]
        for i, text in enumerate(texts):
            number += 1
            cursor.next = number + 1
            raw_id = ids[i] if ids is not None else None
            record = RawRecord(
                position=number,
                id=_as_str(raw_id) if raw_id is not None else line_id(shard.name, number),
                text=text,
                title=_as_str(titles[i]) if titles is not None else None,
                metadata={n: _jsonable(columns[n][i]) for n in meta_names},
            )
            if i in bad_rows:
                record.error = r.INVALID_UTF8
                record.detail = f"row {number}: column {bad_rows[i]!r} is not valid UTF-8"
            elif text is None:
                record.error = r.MISSING_TEXT
                record.detail = f"row {number}: {config.text_field!r} is null"
            elif isinstance(text, bytes):
                try:
                    record.text = text.decode("utf-8")
                except UnicodeDecodeError as exc:
                    record.error = r.INVALID_UTF8
                    record.detail = f"row {number}: {config.text_field!r} is not valid UTF-8: {exc.reason}"
                    record.raw = _bytes_excerpt(text)
            elif not isinstance(text, str):
                record.error = r.NON_STRING_TEXT
                record.detail = f"row {number}: {config.text_field!r} is {type(text).__name__}, not a string"
                record.raw = _excerpt(repr(text))
            yield record


_READERS: dict[str, Callable[[IO[bytes], Shard, ReaderConfig, _Cursor], Iterator[RawRecord]]] = {
    "txt": _read_txt,
    "jsonl": _read_jsonl,
    "csv": _read_delimited(","),
    "tsv": _read_delimited("\t"),
    "parquet": _read_parquet,
}


def read_shard(
    shard: Shard, config: ReaderConfig, storage_options: dict | None = None
) -> Iterator[RawRecord]:
    """Stream the records of one shard, one `RawRecord` per input record.

    Memory stays bounded by one line or CSV row, or one Parquet column chunk;
    only a compressed Parquet file (``x.parquet.gz``) is read whole, as Parquet
    must seek. Bad records come back with a reason; a corrupt stream yields
    what was readable, then one CORRUPT_FILE record at the next position.
    Config errors (no such text column) and transport errors (missing object,
    denied, connection lost) are raised so that the run or the runner's retry
    deals with them, never a half-read shard committed as complete.
    """
    fmt, compression = detect_format(shard.path, config.format)
    reader = _READERS[fmt]
    cursor = _Cursor()
    opened = fsspec.open(shard.path, "rb", **(storage_options or {}))
    try:
        with opened as raw:
            if not raw.read(1):
                return  # an empty file is an empty shard, even when named .gz or .bz2
            raw.seek(0)
            fh: IO[bytes] = raw
            if compression == "zstd":
                fh = io.BufferedReader(_ZstdReader(raw), _CHUNK)
            elif compression:
                fh = fsspec.compression.compr[compression](raw, mode="rb")
            if fmt == "parquet" and compression:
                fh = io.BytesIO(fh.read())  # Parquet needs to seek; decompressed streams cannot
            yield from reader(fh, shard, config, cursor)
    except Exception as exc:
        if not _is_corrupt(exc):
            raise
        yield RawRecord(
            position=cursor.next,
            id=None,
            error=r.CORRUPT_FILE,
            detail=_excerpt(f"{shard.path}: unreadable from record {cursor.next} on: "
                            f"{type(exc).__name__}: {exc}", 500),
        )
