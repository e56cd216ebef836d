"""Listing: globs, files and directories into `Shard`s, over fsspec.

One seam for local paths, memory://, gs://, s3:// and the rest. A shard's size
and version come from the listing itself (one request per glob, not per
file), so a fingerprint is cheap. Listing also decides, once for `plan` and
`run`, what is never an input: commit markers, beamvec's own files, anything
under the output, and (when a reader is given) files with no known format.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import fsspec.core
from fsspec.implementations.local import LocalFileSystem

from beamvec.contract import layout
from beamvec.errors import (
    InputAccessError,
    NoInputError,
    UsageError,
    reason_of,
    redact_url,
    redact_urls,
)
from beamvec.records import Shard, safe_shard_name
from beamvec.sources.base import FORMATS, ReaderConfig, detect_format

# gcsfs probes the bucket type over gRPC unless told not to, and that probe waits
# ~60 s per call when it cannot connect (emulators, restricted networks). It must
# be set before gcsfs is imported, which fsspec does lazily, on the first gs:// URL.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

log = logging.getLogger(__name__)

#: fsspec's description of one listed entry (its keys vary by store).
Info = dict[str, Any]

_GLOB_CHARS = re.compile(r"[*?\[]")

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


#: Commit markers Hadoop, Spark and Databricks leave beside data. beamvec's
#: own files are the contract's (``layout.is_own``): an older output under the
#: input glob must not be re-read.
_MARKER_NAMES = frozenset({"_SUCCESS", "_FAILURE", ".DS_Store"})
_MARKER_PREFIXES = ("_started_", "_committed_")
_MARKER_DIRS = frozenset({"_temporary", "_spark_metadata"})


def _is_hidden(relative_path: str) -> bool:
    """Commit markers, checksums and beamvec's own files: never data.

    Everything else, dotfiles and other ``_names`` included, is an input.
    """
    *dirs, name = relative_path.split("/")
    return (
        layout.is_own(relative_path)
        or name in _MARKER_NAMES
        or name.startswith(_MARKER_PREFIXES)
        or (name.startswith(".") and name.endswith(".crc"))
        or any(d in _MARKER_DIRS for d in dirs)
    )


def _version(info: Info) -> str:
    """Whatever the store offers that changes when the object changes."""
    for key in ("generation", "ETag", "etag", "mtime", "LastModified", "updated", "created"):
        value = info.get(key)
        if value not in (None, ""):
            return str(value).strip('"')
    return ""


def _size(info: Info) -> int:
    size = info.get("size", info.get("Size"))
    return int(size) if size is not None else -1


def _expand(fs: fsspec.AbstractFileSystem, path: str) -> tuple[str, dict[str, Info], int]:
    """(base, {path: info} of the files a pattern means, how many hidden files were skipped)."""
    matched: dict[str, Info] = {}
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
        except OSError:
            if isinstance(fs, LocalFileSystem):
                _followed(path)  # a named link that loops: one line
            raise
        if info.get("type") != "directory":
            return posixpath.dirname(path), {path: info}, 0
        base, matched, explicit_hidden = path, {path: info}, False
    files: dict[str, Info] = {}
    for name, info in matched.items():
        if info.get("type") == "directory":
            files.update(
                (p, i)
                for p, i in fs.find(name, withdirs=False, detail=True).items()
                if i.get("type") != "directory"
            )
        else:
            files[name] = info
    if isinstance(fs, LocalFileSystem):
        files = {p: _regular(p, i) if i.get("type") == "other" else i for p, i in files.items()}
    hidden = 0
    if not explicit_hidden:
        # vectors/ and dead_letters/ of an older output (a folder with a manifest)
        roots = layout.output_roots(list(files))
        kept = {
            p: i for p, i in files.items()
            if not _is_hidden(_relative(p, base)) and not layout.in_output_data(p, roots)
        }
        hidden = len(files) - len(kept)
        files = kept
    return base, files, hidden



def _regular(path: str, info: Info) -> Info:
    """The info of a listed entry that is neither file nor directory (local
    disk: a symbolic link, a fifo): a link to a file stands for its file;
    anything else stops the listing with one line (a loop would never end,
    a dangling link has nothing to read)."""
    shown = _shown_path(path)
    target = _followed(path)
    if stat.S_ISDIR(target.st_mode):
        raise UsageError(f"input {shown} is a symbolic link to a directory, which listing does not "
                         "follow (a link may loop); pass that directory as an --input of its own")
    if not stat.S_ISREG(target.st_mode):
        raise UsageError(f"input {shown} is not a regular file (a fifo, socket or device); "
                         "remove it from the input or narrow the glob")
    return {**info, "type": "file", "size": target.st_size, "mtime": target.st_mtime}


def _followed(path: str) -> os.stat_result:
    """What a local path's links lead to; a loop or a dangling link is a UsageError."""
    try:
        return os.stat(path)  # follows links; a loop raises ELOOP
    except FileNotFoundError:
        raise UsageError(f"input {_shown_path(path)} is a symbolic link to a file that does not exist; "
                         "remove the link or point it at a file") from None
    except OSError as exc:
        raise UsageError(f"input {_shown_path(path)} cannot be followed ({exc.strerror or reason_of(exc)}): "
                         "a symbolic link that loops; remove the link or point it at a file") from None


def _shown_path(path: str) -> str:
    """A listed path as text that prints: bytes of a name that is not UTF-8
    (held by Python as surrogates) as \\x escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _check_name(path: str) -> None:
    """Refuse a file whose name is not UTF-8: its name is written as text into
    the manifest, the vector files and every record's ``source_shard``."""
    if _shown_path(path) != path:
        raise UsageError(
            f"input {redact_url(_shown_path(path))} has a file name that is not valid UTF-8; rename it "
            "(e.g. `convmv -f latin1 -t utf8`), or narrow the glob so it does not match it"
        )


def _normalized(fs: fsspec.AbstractFileSystem, path: str) -> str:
    if isinstance(fs, LocalFileSystem) or "memory" in _protocols(fs):
        # Resolve "a/../b" so that one file named two ways is one shard.
        return posixpath.normpath(path)
    return path


def _excluded_prefixes(
    fs: fsspec.AbstractFileSystem, exclude: Sequence[str], storage_options: dict[str, Any]
) -> list[str]:
    """The excluded URLs that live on ``fs``, as paths comparable with its listing."""
    prefixes = []
    for url in exclude:
        other, path = fsspec.core.url_to_fs(url, **storage_options)
        if type(other) is type(fs) and _protocols(other) == _protocols(fs):
            prefixes.append(_normalized(other, path).rstrip("/"))
    return prefixes


def _under(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def list_shards(
    patterns: Sequence[str],
    storage_options: dict | None = None,
    exclude: Sequence[str] = (),
    *,
    config: ReaderConfig | None = None,
) -> list[Shard]:
    """Expand input globs, files and directories into sorted, de-duplicated shards.

    Every pattern must match at least one file: a nightly job that silently
    reads nothing is worse than one that fails, so all patterns are listed and
    those that match nothing are reported together in one `NoInputError`.
    Directories (named, or matched by a wildcard) mean every file under them.
    There and under wildcards, commit markers (_SUCCESS, .crc checksums,
    _temporary/, ...) and beamvec's own files (_manifest.json, _tmp/,
    _partial/, ...) are skipped, so a Spark or Hadoop output folder can be an
    input as it is; name such a file explicitly to read it anyway.

    ``exclude``: URLs (the run's output) under which nothing is an input, even
    when named explicitly; compared as normalized paths on the same filesystem.
    ``config``: when given, every file must have a format (``config.format``
    or a known extension), else a `UsageError` naming the first that has none,
    before anything is read or sent. `plan` and `run` both pass it.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    if isinstance(exclude, str):
        exclude = [exclude]
    storage_options = dict(storage_options or {})
    shards = _Shards()
    empty: list[str] = []
    for pattern in patterns:
        listed = _list_pattern(pattern, storage_options, exclude)
        if not listed.files:
            empty.append(pattern + (f" (only {listed.hidden} commit-marker or output files)" if listed.hidden else ""))
            continue
        if listed.hidden:
            log.info("input %s: skipped %d commit-marker files (_SUCCESS, .crc, ...)", pattern, listed.hidden)
        shards.add(listed, pattern)
    if empty:
        which = ", ".join(repr(redact_url(p)) for p in empty)
        raise NoInputError(
            f"input {which} matched no files; check the path and glob pattern "
            "(quote it so your shell does not expand it), that the bucket or directory "
            "exists, and that the storage options/credentials allow listing it"
        )
    found = shards.sorted()
    if config is not None:
        check_formats(found, config.format, shards.matched_by)
    return found


@dataclass(frozen=True)
class _Listed:
    """One pattern's files, what is never an input left out."""

    fs: fsspec.AbstractFileSystem
    base: str  # the directory names are taken relative to
    files: dict[str, Info]
    hidden: int  # files left out: markers, beamvec's own, under the output


def _list_pattern(pattern: str, storage_options: dict[str, Any], exclude: Sequence[str]) -> _Listed:
    if not pattern or not pattern.strip():
        raise NoInputError("an input pattern is empty; pass a path, a glob or a directory")
    fs, path = fsspec.core.url_to_fs(pattern, **storage_options)
    path = _normalized(fs, path)
    excluded = _excluded_prefixes(fs, exclude, storage_options)
    fs.invalidate_cache()  # a listing cached earlier in this process may be stale
    try:
        base, files, hidden = _expand(fs, path)
    except PermissionError as exc:
        reason = reason_of(exc)
        raise InputAccessError(
            f"cannot list input {redact_url(pattern)!r}: {redact_urls(reason)}; check the credentials in the "
            "environment (AWS_* variables, GOOGLE_APPLICATION_CREDENTIALS or gcloud ADC) "
            "and that they may list and read it"
        ) from None
    if excluded:
        kept = {p: i for p, i in files.items() if not _under(_normalized(fs, p), excluded)}
        if len(kept) < len(files):
            log.info("input %s: skipped %d files under the output", pattern, len(files) - len(kept))
        hidden += len(files) - len(kept)
        files = kept
    return _Listed(fs, base, files, hidden)


class _Shards:
    """Shards by full path, each once: a file matched by two patterns takes
    its name from the widest, whatever the order."""

    def __init__(self) -> None:
        self.found: dict[str, Shard] = {}
        self.seen_as: dict[str, str] = {}
        self.matched_by: dict[str, str] = {}

    def add(self, listed: _Listed, pattern: str) -> None:
        local = isinstance(listed.fs, LocalFileSystem)
        for file_path, info in listed.files.items():
            full = file_path if local else listed.fs.unstrip_protocol(file_path)
            _check_name(full)
            relative = _relative(file_path, listed.base)
            if full in self.found and len(relative) <= len(self.seen_as[full]):
                continue  # matched twice: the name comes from the widest pattern
            self.seen_as[full] = relative
            self.matched_by[full] = pattern
            self.found[full] = Shard(
                path=full,
                # a query (a signed URL's token) never reaches the name
                name=safe_shard_name(relative.split("?", 1)[0], full),
                size=_size(info),
                version=_version(info),
            )

    def sorted(self) -> list[Shard]:
        return [self.found[p] for p in sorted(self.found)]


def check_formats(shards: Sequence[Shard], format: str | None, matched_by: dict[str, str] | None = None) -> None:
    """Refuse, before anything starts, a listing with a file no reader can read.

    One rule for `plan` and `run`: a glob that also matches, say, a README.md
    stops the run with one line naming the first such file, instead of
    failing that shard mid-way after others were committed.
    """
    if format is not None:
        if format not in FORMATS:
            raise UsageError(f"--format {format} is not a format; choose one of {'/'.join(FORMATS)}")
        return
    for shard in shards:
        try:
            detect_format(shard.path)
        except ValueError:
            ext = posixpath.splitext(posixpath.basename(shard.shown.split("?", 1)[0]))[1] or "(none)"
            pattern = (matched_by or {}).get(shard.path)
            via = f" (matched by {redact_url(pattern)!r})" if pattern and pattern != shard.path else ""
            raise UsageError(
                f"input {shard.shown}{via} has no known format (extension {ext}); pass "
                f"--format ({'/'.join(FORMATS)}) to read every input as one format, or narrow "
                "the glob so it matches only data files"
            ) from None


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)
