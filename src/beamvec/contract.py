"""The output contract: what the files of an output mean, in one place.

    OUTPUT/
      _manifest.json                 Manifest: description, config, totals, shards, run history
      _SUCCESS                       written last, when every expected shard is committed
      vectors/<shard>.parquet        the commit point of a shard; its footer is a Footer
      dead_letters/<shard>.parquet   what could not be embedded, and why
      _partial/                      vectors of finished batches not yet committed (a cache)

A shard is committed when its vector file exists with a footer naming its
input fingerprint and counts (``CommitRecord``). The manifest is a summary of
those records; a crash between a commit and the manifest loses nothing,
because the footers are read back. Run, plan, inspect, verify and search all
read an output through ``read_state``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from beamvec.errors import UsageError
from beamvec.sink import FOOTER_KEY, Output

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
VECTORS_DIR = "vectors"
DEAD_LETTERS_DIR = "dead_letters"
PARTIAL_DIR = "_partial"
HISTORY_LIMIT = 20


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``data`` that are fields of ``cls``: readers tolerate both
    older files (missing keys take defaults) and newer ones (extra keys)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Description:
    """What the vectors are: written to every footer and the manifest, so that
    vectors of different models can never be mixed silently."""

    backend: str
    model: str
    dimension: int
    task_type: str | None = None
    normalized: bool | None = None
    output_dimensionality: int | None = None
    normalization: str | None = None
    beamvec_version: str = ""
    config_fingerprint: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for optional in ("output_dimensionality", "normalization"):
            if data[optional] is None:
                del data[optional]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Description | None:
        if not data.get("model"):
            return None
        return cls(**_known(cls, data))

    def differences(self, other: Description) -> list[str]:
        """What makes ``other``'s vectors incomparable with ours, in words."""
        return [
            f"{name} {getattr(other, name)} (here {getattr(self, name)})"
            for name in ("backend", "model", "dimension", "task_type", "normalization")
            if getattr(other, name) != getattr(self, name)
        ] or [f"configuration {other.config_fingerprint} (here {self.config_fingerprint})"]


@dataclass(frozen=True)
class ShardCounts:
    """What happened to one shard's records. read = embedded + dead_lettered."""

    read: int = 0
    embedded: int = 0
    dead_lettered: int = 0
    dead_letters_by_reason: Mapping[str, int] = field(default_factory=dict)
    reused: int = 0  # vectors found in the output (or --reuse-from) by content
    deduplicated: int = 0  # repeats of a text embedded in this run
    sent: int = 0  # texts this shard sent to the backend online
    sent_tokens: int = 0
    sent_characters: int = 0
    billable_characters: int = 0  # non-whitespace characters: what Vertex bills
    tokens: int = 0  # tokens of every embedded text
    truncated: int = 0
    batch_sent: int = 0  # texts embedded for this shard through Batch API jobs of this run
    batch_sent_tokens: int = 0

    def __add__(self, other: ShardCounts) -> ShardCounts:
        reasons = dict(self.dead_letters_by_reason)
        for reason, n in other.dead_letters_by_reason.items():
            reasons[reason] = reasons.get(reason, 0) + n
        summed = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in fields(self) if f.name != "dead_letters_by_reason"
        }
        return ShardCounts(**summed, dead_letters_by_reason=dict(sorted(reasons.items())))


def total(counts: Iterable[ShardCounts]) -> ShardCounts:
    result = ShardCounts()
    for c in counts:
        result = result + c
    return result


@dataclass(frozen=True)
class CommitRecord:
    """One committed shard: its input, its counts, and how it was made."""

    name: str
    input: str
    input_fingerprint: str
    counts: ShardCounts
    input_size: int = -1
    input_version: str = ""
    config_fingerprint: str | None = None
    seconds: float = 0.0
    status: str = "committed"  # or "failed": not written, the run is incomplete
    shard: str = ""  # the input shard this part belongs to ("" : the whole shard, named ``name``)
    part: int = 0
    parts: int = 1
    shard_fingerprint: str = ""  # the whole input file's fingerprint
    message: str = ""  # why a part failed
    vector_bytes: int = 0  # the committed vector file's size (0: unknown, check its footer)

    @property
    def shard_name(self) -> str:
        return self.shard or self.name

    @property
    def file_fingerprint(self) -> str:
        return self.shard_fingerprint or self.input_fingerprint

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "counts"}
        data.update(asdict(self.counts))
        data["dead_letters_by_reason"] = dict(sorted(self.counts.dead_letters_by_reason.items()))
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CommitRecord:
        return cls(counts=ShardCounts(**_known(ShardCounts, data)), **_known(cls, data))


@dataclass(frozen=True)
class Footer:
    """The ``beamvec`` key of a vector file's Parquet metadata."""

    description: Description | None
    shard: CommitRecord | None

    def to_json(self) -> dict[str, Any]:
        data = self.description.to_json() if self.description else {}
        if self.shard is not None:
            data["shard"] = self.shard.to_json()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Footer:
        shard = data.get("shard")
        record = CommitRecord.from_json(shard) if isinstance(shard, Mapping) else None
        if record is not None and record.config_fingerprint is None:
            record = replace(record, config_fingerprint=data.get("config_fingerprint"))
        return cls(Description.from_json(data), record)


def read_footer(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any]:
    """The raw beamvec footer of a Parquet file, or {} when it has none.

    Raises UsageError naming the file when it is not readable Parquet."""
    try:
        with fs.open(path, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata.metadata or {}
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a torn file
        raise DamagedFileError(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    raw = meta.get(FOOTER_KEY)
    return json.loads(raw) if raw else {}


def footer_of(fs: fsspec.AbstractFileSystem, path: str) -> Footer:
    return Footer.from_json(read_footer(fs, path))


class DamagedFileError(UsageError):
    """A vector or dead-letter file that is not readable Parquet."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"{path} is damaged ({reason}); remove it and rerun `beamvec run` with the same "
            "flags to embed that shard again"
        )
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
        raise DamagedFileError(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
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
    try:
        footer, rows = footer_and_rows(fs, path)
    except FileNotFoundError:
        return None, MISSING
    except DamagedFileError as exc:
        return None, exc.reason
    theirs = footer.shard
    if theirs is None or theirs.name != rec.name:
        named = theirs.name if theirs is not None else "no part"
        return None, f"its footer names {named}, not {rec.name}"
    if rows != theirs.counts.embedded:
        return None, f"it holds {rows} rows where its footer says {theirs.counts.embedded}"
    if theirs.config_fingerprint is None:
        theirs = replace(theirs, config_fingerprint=rec.config_fingerprint)
    return replace(theirs, vector_bytes=size), None


MISSING = "it is missing"


def damaged_message(path: str, reason: str) -> str:
    """One line naming a damaged or missing committed file, and the repair."""
    if reason == MISSING:
        return (f"{path} is missing although the manifest lists it as committed; rerun "
                "`beamvec run` with the same flags to embed that shard again")
    return str(DamagedFileError(path, reason))


@dataclass(frozen=True)
class RunConfig:
    """The flags a run was made with (never secrets: storage option keys only)."""

    inputs: tuple[str, ...] = ()
    format: str | None = None
    id_field: str | None = None
    text_field: str | None = None
    title_field: str | None = None
    normalization: str | None = None
    on_long_text: str | None = None
    storage_option_keys: tuple[str, ...] = ()
    quota_rpm: float | None = None
    quota_tpm: float | None = None
    quota_window: float | None = None
    max_in_flight: int | None = None
    runner: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = list(self.inputs)
        data["storage_option_keys"] = list(self.storage_option_keys)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunConfig:
        known = _known(cls, data)
        for key in ("inputs", "storage_option_keys"):
            if key in known:
                known[key] = tuple(known[key] or ())
        return cls(**known)


@dataclass(frozen=True)
class RunRecord:
    """One run in the manifest's history."""

    finished_at: str
    started_at: str | None = None
    shards: int = 0
    read: int = 0
    embedded: int = 0
    dead_lettered: int = 0
    tokens: int = 0
    sent: int = 0  # texts billed online
    sent_tokens: int = 0
    reused: int = 0
    deduplicated: int = 0
    batch_sent: int = 0  # texts billed through Batch API jobs (at the batch price)
    batch_sent_tokens: int = 0
    pruned: tuple[str, ...] = ()
    config_fingerprint: str | None = None
    estimated_cost_usd: float | None = None
    cost_basis: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["pruned"] = list(self.pruned)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        known = _known(cls, data)
        known.setdefault("finished_at", "")
        known["pruned"] = tuple(known.get("pruned") or ())
        return cls(**known)


@dataclass(frozen=True)
class Manifest:
    description: Description | None
    config: RunConfig
    shards: Mapping[str, CommitRecord]
    runs: tuple[RunRecord, ...] = ()
    updated_at: str = ""

    def totals(self) -> dict[str, int]:
        t = total(s.counts for s in self.shards.values())
        return {"shards": len(self.shards), "read": t.read, "embedded": t.embedded,
                "dead_lettered": t.dead_lettered, "tokens": t.tokens}

    def to_json(self, with_shards: bool = True) -> dict[str, Any]:
        data = {
            "beamvec_manifest": 1,
            **(self.description.to_json() if self.description else {}),
            "config": self.config.to_json(),
            "updated_at": self.updated_at or _now(),
            "totals": self.totals(),
            "runs": [run.to_json() for run in self.runs],
        }
        if with_shards:
            data["shards"] = {name: rec.to_json() for name, rec in sorted(self.shards.items())}
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST) -> Manifest:
        if isinstance(data, Mapping) and isinstance(data.get("commits"), str):
            raise TypeError("a manifest whose shards live in a commits table: use read_manifest")
        if not isinstance(data, Mapping) or not isinstance(data.get("shards", {}), Mapping):
            raise UsageError(
                f"{where} is not a beamvec manifest; move it aside and rerun: the next run "
                "rebuilds it from the vector files' footers"
            )
        try:
            return cls._parse(data)
        except (TypeError, ValueError, AttributeError) as exc:  # a field of the wrong type
            raise UsageError(
                f"{where} is not a valid beamvec manifest ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'bad field'}); move it aside and "
                "rerun: the next run rebuilds it from the vector files' footers"
            ) from None

    @classmethod
    def _parse(cls, data: Mapping[str, Any]) -> Manifest:
        fingerprint = data.get("config_fingerprint")
        shards = {}
        for name, rec in data.get("shards", {}).items():
            record = CommitRecord.from_json({**rec, "name": rec.get("name", name)})
            if record.config_fingerprint is None:
                record = replace(record, config_fingerprint=fingerprint)
            shards[name] = record
        return cls(
            description=Description.from_json(data),
            config=RunConfig.from_json(data.get("config") or {}),
            shards=shards,
            runs=tuple(RunRecord.from_json(r) for r in data.get("runs", []) if isinstance(r, Mapping)),
            updated_at=data.get("updated_at", ""),
        )


#: Past this many parts, commit records leave _manifest.json for a Parquet
#: table: a 100,000-shard output's manifest stays a few kilobytes.
INLINE_PARTS = 1_000
COMMITS_DIR = "_commits"


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


def name_of(path: str) -> str:
    return path.rsplit("/", 1)[-1].removesuffix(".parquet")


@dataclass(frozen=True)
class OutputState:
    """What an output holds: its manifest and the shards that stand committed."""

    manifest: Manifest | None
    committed: Mapping[str, CommitRecord]
    files: Mapping[str, int]  # vector file -> size
    success: bool
    #: vector file -> why it cannot be trusted (its part is then not committed)
    damaged: Mapping[str, str] = field(default_factory=dict)

    @property
    def description(self) -> Description | None:
        return self.manifest.description if self.manifest else None


def read_state(output: Output) -> OutputState:
    """The manifest answers for most shards; a shard committed by a run that
    crashed before writing its manifest is found by listing vectors/ and
    reading only those footers."""
    manifest = read_manifest(output)
    known = dict(manifest.shards) if manifest else {}
    files = list_parquet(output, VECTORS_DIR)
    committed: dict[str, CommitRecord] = {}
    damaged: dict[str, str] = {}
    for name, rec in known.items():  # trust, but check (check_part)
        if rec.status != "committed":
            continue
        path = vector_path(output, name)
        checked, why = check_part(output.fs, path, rec, files.get(path))
        if checked is not None:
            committed[name] = checked
        else:
            damaged[path] = why or "damaged"
    for path in files:
        name = name_of(path)
        if name in known and known[name].status == "committed":
            continue
        try:
            footer, rows = footer_and_rows(output.fs, path)
        except DamagedFileError as exc:
            damaged[path] = exc.reason
            continue
        except FileNotFoundError:
            continue
        if footer.shard is None:
            continue
        if rows != footer.shard.counts.embedded:
            damaged[path] = f"it holds {rows} rows where its footer says {footer.shard.counts.embedded}"
            continue
        committed[name] = replace(footer.shard, vector_bytes=files[path])
    return OutputState(
        manifest, committed, files, bool(output.fs.exists(output.path(SUCCESS))), damaged
    )


def description_of(output: Output, state: OutputState) -> Description | None:
    """From the manifest, else from the footer of the first vector file."""
    if state.description is not None:
        return state.description
    for path in state.files:
        found = footer_of(output.fs, path).description
        if found is not None:
            return found
    return None


def merge_manifest(
    previous: Manifest | None,
    records: Iterable[CommitRecord],
    config: RunConfig,
    description: Description,
    run: RunRecord | None,
    removed: Iterable[str] = (),
) -> Manifest:
    """This run's commit records merged into the previous manifest."""
    shards = dict(previous.shards) if previous else {}
    for record in records:
        shards[record.name] = record
    for name in removed:
        shards.pop(name, None)
    runs = tuple(previous.runs) if previous else ()
    if run is not None:
        runs = (*runs[-(HISTORY_LIMIT - 1):], run)
    return Manifest(description, config, shards, runs, _now())


def complete_shards(records: Iterable[CommitRecord]) -> dict[str, str]:
    """Shard name -> input file fingerprint, for shards all of whose parts are
    committed from one version of their input."""
    parts: dict[tuple[str, str], set[int]] = {}
    wanted: dict[tuple[str, str], int] = {}
    for rec in records:
        if rec.status != "committed":
            continue
        key = (rec.shard_name, rec.file_fingerprint)
        parts.setdefault(key, set()).add(rec.part)
        wanted[key] = rec.parts
    return {name: fp for (name, fp), got in parts.items() if len(got) == wanted[(name, fp)]}


def stale_parts(manifest: Manifest, current: Mapping[str, str]) -> list[str]:
    """Parts of the shards in ``current`` (name -> input fingerprint) that
    belong to another version of that input: a file re-cut into other splits."""
    return [
        name for name, rec in manifest.shards.items()
        if rec.shard_name in current and rec.file_fingerprint != current[rec.shard_name]
    ]


def remove_parts(output: Output, names: Iterable[str]) -> None:
    for name in names:
        output.remove(vector_path(output, name))
        output.remove(dead_letter_path(output, name))


def finalize(output: Output, manifest: Manifest, expected: Iterable[str]) -> list[str]:
    """Write the manifest; when every expected shard is complete in it, remove
    the checkpoints and write ``_SUCCESS``. Returns the shards still missing."""
    complete = complete_shards(manifest.shards.values())
    missing = [name for name in expected if name not in complete]
    write_manifest(output, manifest)
    if not missing:
        # Every shard is committed, so no checkpoint can be needed any more,
        # including those a crash between a shard's commit and their removal left.
        output.remove_tree(output.path(PARTIAL_DIR))
        output.write_bytes(output.path(SUCCESS), b"")
    return missing
