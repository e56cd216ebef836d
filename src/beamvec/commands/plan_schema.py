"""`beamvec plan --json`, schema ``beamvec.plan/1`` (docs/cli.md): its fields,
typed. JSON-ready dicts, so the document prints as built; fields are only
ever added."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

SCHEMA = "beamvec.plan/1"

#: One shard as scanned: name, input, the ShardCounts a run would record
#: (less embedded and dead_lettered), records, characters and dead_letters.
ShardScan = dict[str, Any]


class Limits(TypedDict):
    texts_per_request: int
    tokens_per_request: int
    tokens_per_text: int


class BatchJobs(TypedDict):
    turnaround: str
    jobs: int
    requests_per_file: int


class Duration(TypedDict):
    """The shortest time the quota allows; ``seconds`` None without a quota."""

    quota_rpm: float | None
    quota_tpm: float | None
    window_s: NotRequired[float]  # with a quota only
    seconds: float | None
    bound: str | None  # "requests" or "tokens"
    note: str


class Cost(TypedDict):
    currency: str
    standard: float | None
    batch_mode: float | None
    unit: str | None
    units: int
    basis: str
    prices_checked: str


class ExistingOutput(TypedDict):
    """What --output holds; only ``url`` and ``exists`` where there is nothing."""

    url: str | None
    exists: bool
    manifest: NotRequired[bool]
    complete: NotRequired[bool]
    damaged: NotRequired[list[str]]
    shards: NotRequired[int]
    records: NotRequired[int]
    embedded: NotRequired[int]
    dead_lettered: NotRequired[int]
    model: NotRequired[str | None]
    backend: NotRequired[str]  # where the output describes itself
    dimension: NotRequired[int | None]
    conflict: NotRequired[str | None]
    refused: NotRequired[bool]


class Sampled(TypedDict):
    shards_read: int
    of: int
    scaled_by_bytes: float
    sent_error_95: float | None
    note: str


class ModelPart(TypedDict):
    beamvec_version: str
    backend: str
    model: str
    dimension: int
    task_type: str | None
    config_fingerprint: str
    tokens_exact: bool
    token_basis: str
    tokens_expected_error: float
    limits: Limits


class CountsPart(TypedDict):
    read: int
    records: int
    characters: int
    tokens: int
    truncated: int
    on_long_text: str
    dead_letters: int
    dead_letters_by_reason: dict[str, int]
    reused: int
    reuse_by: str
    reuse_why: str
    deduplicated: int
    sent: int
    sent_tokens: int
    sent_characters: int
    billable_characters: int
    requests: int


class TimeAndCostPart(TypedDict):
    batch_api: BatchJobs | None
    duration: Duration
    cost: Cost


class Plan(ModelPart, CountsPart, TimeAndCostPart):
    """Everything `beamvec plan` prints, in the order it prints it."""

    shards: int
    shards_to_embed: int
    shards_skipped: int
    output: ExistingOutput
    per_shard: list[ShardScan]
    sampled: Sampled | None
    unsplittable: list[str]
    skipped: list[str]
