"""Reading and writing the contract's files: footers, the manifest and its
commits table, paths, and what a damaged file is."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from beamvec.contract.layout import COMMITS_DIR
from beamvec.contract.model import (
    DEAD_LETTERS_DIR,
    MANIFEST,
    PARTIAL_DIR,
    SUCCESS,
    VECTORS_DIR,
    CommitRecord,
    Footer,
    Manifest,
)
from beamvec.contract.output import Output
from beamvec.contract.schema import FOOTER_KEY
from beamvec.errors import UsageError, reason_of


def read_footer(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any]:
    """The raw beamvec footer of a Parquet file, or {} when it has none.

    Raises UsageError naming the file when it is not readable Parquet."""
    try:
        with fs.open(path, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata.metadata or {}
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a torn file
        raise DamagedFileError(path, reason_of(exc)) from None
    raw = meta.get(FOOTER_KEY)
    return json.loads(raw) if raw else {}


def footer_of(fs: fsspec.AbstractFileSystem, path: str) -> Footer:
    return Footer.from_json(read_footer(fs, path))


class DamagedFileError(UsageError):
    """A vector or dead-letter file that is not readable Parquet."""

    def __init__(self, path: str, reason: str) -> None:
        # A run checks both files of every committed part (check_part,
        # check_dead_letters) and redoes a part whose file is damaged.
        repair = "rerun `beamvec run` with the same flags to embed that shard again"
        super().__init__(f"{path} is damaged ({reason}); {repair}")
        self.path = path
        self.reason = reason


def footer_and_rows(fs: fsspec.AbstractFileSystem, path: str) -> tuple[Footer, int]:
    """A vector file's footer and its row count, from the Parquet metadata
    alone (one range read). Raises DamagedFileError, FileNotFoundError."""
    try:
        with fs.open(path, "rb") as fh:
            metadata = pq.ParquetFile(fh).metadata
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a torn file
        raise DamagedFileError(path, reason_of(exc)) from None
    raw = (metadata.metadata or {}).get(FOOTER_KEY)
    try:
        footer = Footer.from_json(json.loads(raw)) if raw else Footer(None, None)
    except (ValueError, TypeError):
        raise DamagedFileError(path, "its beamvec footer is not valid JSON") from None
    return footer, metadata.num_rows


def check_part(
    fs: fsspec.AbstractFileSystem, path: str, rec: CommitRecord, size: int | None
) -> tuple[CommitRecord | None, str | None]:
    """Trust, but check: (the commit record that stands for this committed
    part's vector file, why the file cannot be trusted). Cheap: when the
    listed size is the recorded one, nothing is read; otherwise only the
    footer and row count are. A footer of this same part with its own row
    count may be newer than ``rec`` (a crash before the manifest): its
    record stands (it is what the file says), with the size filled in."""
    if size is None:
        return None, MISSING
    if rec.vector_bytes and size == rec.vector_bytes:
        return rec, None
    read = _read_or_why(fs, path)
    if isinstance(read, str):
        return None, read
    footer, rows = read
    theirs = footer.shard
    if theirs is None or theirs.name != rec.name:
        named = theirs.name if theirs is not None else "no part"
        return None, f"its footer names {named}, not {rec.name}"
    if rows != theirs.counts.embedded:
        return None, f"it holds {rows} rows where its footer says {theirs.counts.embedded}"
    if theirs.config_fingerprint is None:
        theirs = replace(theirs, config_fingerprint=rec.config_fingerprint)
    return replace(theirs, vector_bytes=size), None


def check_dead_letters(
    fs: fsspec.AbstractFileSystem, path: str, rec: CommitRecord, size: int | None
) -> tuple[CommitRecord | None, str | None]:
    """Trust, but check, a committed part's dead-letter file, like check_part
    its vector file: (the part's record, with the file's size filled in; why
    the file cannot be trusted). The dead letters are the only copy of the
    records that were refused, so a torn or missing file voids the part's
    commit. A part without dead letters has no file to check."""
    if not rec.counts.dead_lettered:
        return rec, None
    if size is None:
        return None, MISSING
    if rec.dead_letter_bytes and size == rec.dead_letter_bytes:
        return rec, None
    read = _read_or_why(fs, path)
    if isinstance(read, str):
        return None, read
    _, rows = read
    if rows != rec.counts.dead_lettered:
        return None, f"it holds {rows} rows where its part's record says {rec.counts.dead_lettered}"
    return replace(rec, dead_letter_bytes=size), None


def _read_or_why(fs: fsspec.AbstractFileSystem, path: str) -> tuple[Footer, int] | str:
    """A committed file's footer and row count, or why they cannot be read."""
    try:
        return footer_and_rows(fs, path)
    except FileNotFoundError:
        return MISSING
    except DamagedFileError as exc:
        return exc.reason


MISSING = "it is missing"


def damaged_message(path: str, reason: str) -> str:
    """One line naming a damaged or missing committed file, and the repair."""
    if reason == MISSING:
        return (f"{path} is missing although its shard is recorded as committed; rerun "
                "`beamvec run` with the same flags to embed that shard again")
    return str(DamagedFileError(path, reason))



#: Past this many parts, commit records leave _manifest.json for a Parquet
#: table: a 100,000-shard output's manifest stays a few kilobytes.
INLINE_PARTS = 1_000


def _commits_table(records: Iterable[CommitRecord]) -> pa.Table:
    rows = []
    for rec in records:
        row = rec.to_json()
        row["dead_letters_by_reason"] = json.dumps(row["dead_letters_by_reason"], sort_keys=True)
        rows.append(row)
    return pa.Table.from_pylist(rows)


def _read_commits(output: Output, path: str, fingerprint: str | None) -> dict[str, CommitRecord]:
    try:
        with output.fs.open(output.path(path), "rb") as fh:
            rows = pq.read_table(fh).to_pylist()
    except FileNotFoundError:
        raise UsageError(
            f"{output.url}/{MANIFEST} names {path}, which is missing; move the manifest aside "
            "and rerun: the next run rebuilds it from the vector files' footers"
        ) from None
    shards = {}
    for row in rows:
        row["dead_letters_by_reason"] = json.loads(row.get("dead_letters_by_reason") or "{}")
        record = CommitRecord.from_json(row)
        if record.config_fingerprint is None:
            record = replace(record, config_fingerprint=fingerprint)
        shards[record.name] = record
    return shards


def read_manifest(output: Output) -> Manifest | None:
    path = output.path(MANIFEST)
    try:
        with output.fs.open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise UsageError(
            f"{output.url}/{MANIFEST} is not valid JSON ({exc}); move it aside and rerun: the "
            "next run rebuilds it from the vector files' footers"
        ) from None
    if isinstance(data, Mapping) and isinstance(data.get("commits"), str):
        summary = Manifest.from_json({k: v for k, v in data.items() if k != "commits"})
        shards = _read_commits(output, data["commits"], data.get("config_fingerprint"))
        return replace(summary, shards=shards)
    return Manifest.from_json(data, f"{output.url}/{MANIFEST}")


def write_manifest(output: Output, manifest: Manifest) -> None:
    """Small outputs keep their commit records in the JSON, for people to
    read; large ones in a Parquet table written first, under a new name, so
    the manifest never points at a half-written one."""
    previous = _commit_tables(output)
    if len(manifest.shards) <= INLINE_PARTS:
        data = manifest.to_json()
    else:
        name = f"{COMMITS_DIR}/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}.parquet"
        output.write_table(output.path(name), _commits_table(manifest.shards[k] for k in sorted(manifest.shards)))
        data = {**manifest.to_json(with_shards=False), "beamvec_manifest": 2, "commits": name}
    output.write_bytes(output.path(MANIFEST), json.dumps(data, indent=2).encode())
    current = data.get("commits")
    for path in previous:
        if not path.endswith(str(current)):
            output.remove(path)


def _commit_tables(output: Output) -> list[str]:
    try:
        return sorted(output.fs.find(output.path(COMMITS_DIR)))
    except FileNotFoundError:
        return []


def vector_path(output: Output, name: str) -> str:
    return output.path(VECTORS_DIR, f"{name}.parquet")


def dead_letter_path(output: Output, name: str) -> str:
    return output.path(DEAD_LETTERS_DIR, f"{name}.parquet")


def partial_path(output: Output, *parts: str) -> str:
    return output.path(PARTIAL_DIR, *parts)


def list_parquet(output: Output, folder: str) -> dict[str, int]:
    """Parquet files under ``folder`` of the output, with their sizes."""
    try:
        found = output.fs.find(output.path(folder), detail=True)
    except FileNotFoundError:
        return {}
    return {
        path: int(info.get("size") or 0)
        for path, info in sorted(found.items())
        if path.endswith(".parquet")
    }


def vector_files(output: Output) -> list[str]:
    """The output's vector files, sorted."""
    return list(list_parquet(output, VECTORS_DIR))


def dead_letter_files(output: Output) -> list[str]:
    """The output's dead-letter files, sorted."""
    return list(list_parquet(output, DEAD_LETTERS_DIR))


def has_success(output: Output) -> bool:
    return bool(output.fs.exists(output.path(SUCCESS)))


def name_of(path: str) -> str:
    return path.rsplit("/", 1)[-1].removesuffix(".parquet")

