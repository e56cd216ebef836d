"""The typed records of the output contract: what the JSON and footers hold."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from beamvec.contract.layout import DEAD_LETTERS_DIR as DEAD_LETTERS_DIR
from beamvec.contract.layout import MANIFEST as MANIFEST
from beamvec.contract.layout import PARTIAL_DIR as PARTIAL_DIR
from beamvec.contract.layout import SUCCESS as SUCCESS
from beamvec.contract.layout import VECTORS_DIR as VECTORS_DIR
from beamvec.errors import UsageError

HISTORY_LIMIT = 20


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``data`` that are fields of ``cls``: readers tolerate both
    older files (missing keys take defaults) and newer ones (extra keys)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def now() -> str:
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
    # the template the task was written into each text with (gemini-embedding-2)
    prompt_format: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for optional in ("output_dimensionality", "normalization", "prompt_format"):
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
            for name in ("backend", "model", "dimension", "task_type", "normalization", "prompt_format")
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
    dead_letter_bytes: int = 0  # its dead-letter file's size, when it has dead letters (0: unknown)

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
            "updated_at": self.updated_at or now(),
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

