"""What flags resolve to, for `run` and `plan` alike: options, backend, shards,
reader and prepare rules, the configuration fingerprint, and which shards an
output already holds. No API call, no write.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)

from beamvec import __version__
from beamvec.backends import Backend, backend_from_options
from beamvec.contract import CommitRecord, Description, OutputState, RunConfig, complete_shards
from beamvec.driver.options import BeamvecOptions, parse_pipeline_options, parse_storage_options
from beamvec.errors import UsageError, redact_url
from beamvec.records import REASONS, TRANSIENT_REASONS, Shard
from beamvec.route.lookup import VectorIndex, build_index
from beamvec.route.prepare import PrepareConfig
from beamvec.route.retry_letters import kept_refusals
from beamvec.route.router import Decision, Lookup, Refusals, Router, RunMemory, Send
from beamvec.sources import ReaderConfig, list_shards, read_shard
from beamvec.write.sink import Output


def retry_reasons(value: str | None) -> tuple[str, ...]:
    """`--retry-dead-letters`' reasons, checked against the known ones."""
    if value is None:
        return ()
    reasons = tuple(dict.fromkeys(r.strip() for r in value.split(",") if r.strip()))
    unknown = [r for r in reasons if r not in REASONS]
    if unknown or not reasons:
        raise UsageError(
            f"--retry-dead-letters: unknown reason {', '.join(unknown) or repr(value)}; "
            f"pass some of {', '.join(REASONS)} (default: {', '.join(TRANSIENT_REASONS)})"
        )
    return reasons


def parse_options(argv: Sequence[str]) -> PipelineOptions:
    options = parse_pipeline_options(argv)
    bv = options.view_as(BeamvecOptions)
    if not bv.input:
        raise UsageError("no --input given: pass a glob such as --input 'corpus/*.jsonl'")
    if not bv.output:
        raise UsageError("no --output given: pass a directory or bucket prefix")
    retry_reasons(bv.retry_dead_letters)  # a typo is a usage error before anything is read
    return options


def config_fingerprint(description: dict[str, Any], reader: ReaderConfig, prepare: PrepareConfig) -> str:
    """What makes two outputs' vectors comparable: model, task (and the prompt
    template it is written in), dimension, and the rules that decide which
    text and id a record gets."""
    keyed = {
        "backend": description.get("backend"),
        "model": description.get("model"),
        "task_type": description.get("task_type"),
        "dimension": description.get("dimension"),
        "reader": {
            "format": reader.format,
            "id_field": reader.id_field,
            "text_field": reader.text_field,
            "title_field": reader.title_field,
        },
        "prepare": {"normalization": prepare.normalization, "on_long_text": prepare.on_long_text},
    }
    if description.get("prompt_format") is not None:  # absent keeps older fingerprints as they were
        keyed["prompt_format"] = description["prompt_format"]
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


MAX_BYTES_PER_TOKEN = 16
#: Default split size: about 25 s of work for the local model on one core,
#: about 2,500 texts (25 requests) for an API backend. Small enough that one
#: large file beside many small ones spreads over the workers (the uneven
#: layout runs within 1.06 x the even one; at 4 MiB it was 1.51 x).
LOCAL_SPLIT_BYTES = 256 * 1024
API_SPLIT_BYTES = 256 * 1024
_PARTITION = re.compile(r"(?:^|/)(?:dt|date|day)=(\d{4}-\d{2}-\d{2})(?:/|$)")


def select_partitions(shards: list[Shard], since: str | None, until: str | None) -> list[Shard]:
    """Keep shards whose `dt=YYYY-MM-DD` partition is within [since, until]."""
    if not since and not until:
        return shards
    for bound in (since, until):
        if bound and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", bound):
            raise UsageError(f"--since/--until take a date YYYY-MM-DD, got {bound!r}")
    kept = []
    for shard in shards:
        match = _PARTITION.search(shard.path)
        if match and (not since or match.group(1) >= since) and (not until or match.group(1) <= until):
            kept.append(shard)
    if not kept:
        raise UsageError(
            f"no input shard has a dt=YYYY-MM-DD partition between {since or 'the start'} and "
            f"{until or 'the end'}; check --input and --since/--until"
        )
    return kept


@dataclass
class JobInputs:
    """What flags resolve to, shared by `run` and `plan`."""

    options: PipelineOptions
    bv: BeamvecOptions
    storage_options: dict[str, Any]
    backend: Backend
    shards: list[Shard]
    reader: ReaderConfig
    prepare: PrepareConfig
    description: Description
    run_config: RunConfig


def worker_processes(options: PipelineOptions) -> int:
    """Worker processes on this machine: the multi-process DirectRunner's, else 1."""
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "multi_processing":
        return direct.direct_num_workers or os.cpu_count() or 1  # 0: one per CPU in Beam
    return 1


def resolve_inputs(options: PipelineOptions) -> JobInputs:
    bv = options.view_as(BeamvecOptions)
    storage_options = parse_storage_options(bv.storage_option)
    backend = backend_from_options(
        bv, options.view_as(GoogleCloudOptions).project, processes=worker_processes(options)
    )
    reader = ReaderConfig(
        format=bv.format, id_field=bv.id_field, text_field=bv.text_field, title_field=bv.title_field,
        # Never more than 16 bytes a token: cutting there cannot change what truncation keeps.
        max_text_chars=backend.limits.max_text_tokens * MAX_BYTES_PER_TOKEN,
    )
    listed = list_shards(bv.input, storage_options, exclude=[bv.output] if bv.output else [], config=reader)
    shards = select_partitions(listed, bv.since, bv.until)
    prepare = PrepareConfig(
        normalization=bv.normalization,
        on_long_text=bv.on_long_text,
        max_text_tokens=backend.limits.max_text_tokens,
    )
    described = backend.describe()
    description = Description.from_json({
        **described,
        "beamvec_version": __version__,
        "config_fingerprint": config_fingerprint(described, reader, prepare),
    })
    assert description is not None  # every backend names its model
    run_config = RunConfig(
        inputs=tuple(redact_url(pattern) for pattern in bv.input),
        format=bv.format,
        id_field=bv.id_field,
        text_field=bv.text_field,
        title_field=bv.title_field,
        normalization=bv.normalization,
        on_long_text=bv.on_long_text,
        storage_option_keys=tuple(sorted(storage_options)),  # values may be secrets
        quota_rpm=bv.quota_rpm,
        quota_tpm=bv.quota_tpm,
        quota_window=bv.quota_window,
        max_in_flight=bv.max_in_flight,
        runner=options.view_as(StandardOptions).runner,
    )
    return JobInputs(options, bv, storage_options, backend, shards, reader, prepare, description, run_config)


def conflict(state: OutputState, ours: Description) -> str | None:
    """Why an output's vectors cannot be mixed with ours, or None."""
    theirs = state.description
    if theirs is None or not theirs.config_fingerprint or theirs.config_fingerprint == ours.config_fingerprint:
        return None
    return (
        f"holds vectors made with another configuration (backend {theirs.backend}, model "
        f"{theirs.model}, dimension {theirs.dimension}, task {theirs.task_type})"
    )


def uncovered_by_force(state: OutputState, shards: Sequence[Shard]) -> str | None:
    """Why ``--force`` with a new configuration cannot run on these inputs, or None.

    A new configuration replaces every vector of the output: shards committed
    before and not among this run's inputs would stay under the old one
    beneath a new manifest and ``_SUCCESS`` (readers would see mixed sizes)."""
    listed = {shard.name for shard in shards}
    left = sorted({rec.shard_name for rec in state.committed.values()} - listed)
    if not left:
        return None
    more = f" and {len(left) - 3} more" if len(left) > 3 else ""
    return (
        f"--force with a new configuration must cover the whole output, but {len(left)} committed "
        f"shard(s) are not among --input ({', '.join(left[:3])}{more}); pass an --input that "
        "covers them, or write to a new --output"
    )


@dataclass
class Work:
    """Which shards a run embeds, and which it skips as committed."""

    todo: list[Shard]
    skipped: list[str] = field(default_factory=list)
    carried: list[CommitRecord] = field(default_factory=list)  # commit records of skipped shards


def split_work(
    shards: list[Shard], state: OutputState, fingerprint: str, redo: bool, retry: Sequence[str] = ()
) -> Work:
    """A shard is skipped when every part of it is committed from this very
    input and this configuration, and (with ``retry``, the reasons of
    `--retry-dead-letters`) none of its parts dead-lettered a record for one
    of those reasons; anything less is embedded again (its committed parts
    are then kept by the workers, not redone, and its vectors reused).
    A part whose vector file does not match its commit record is not in
    ``state.committed`` (contract.check_part), so its shard is redone."""
    if redo:
        return Work(list(shards))
    ours = [r for r in state.committed.values() if (r.config_fingerprint or fingerprint) == fingerprint]
    complete = complete_shards(ours)
    by_shard: dict[str, list[CommitRecord]] = {}
    for rec in ours:
        by_shard.setdefault(rec.shard_name, []).append(rec)
    retried = {
        rec.shard_name for rec in ours
        if any(rec.counts.dead_letters_by_reason.get(reason) for reason in retry)
    }
    work = Work([])
    for shard in shards:
        if complete.get(shard.name) == shard.fingerprint and shard.name not in retried:
            work.skipped.append(shard.name)
            work.carried += [r for r in by_shard[shard.name] if r.file_fingerprint == shard.fingerprint]
        else:
            work.todo.append(shard)
    return work


def split_bytes(bv: Any, backend_name: str) -> int:
    if bv.split_bytes is not None:
        return max(0, bv.split_bytes)
    return LOCAL_SPLIT_BYTES if backend_name == "local" else API_SPLIT_BYTES


# -- routing on the driver: plan, the preflight and the Batch API phase --------


def reuse_lookup(inputs: JobInputs, own: Output | None, state: OutputState | None = None) -> VectorIndex:
    """Vectors already embedded under this configuration: the output's (``own``,
    whose ``state`` the caller may have read already) and every --reuse-from's."""
    others = [Output(url, inputs.storage_options) for url in inputs.bv.reuse_from or ()]
    return build_index(
        own, others, inputs.description.config_fingerprint, inputs.backend.limits.dimension, state
    )


def retry_refusals(
    output: Output | None, state: OutputState | None, todo: Sequence[Shard], fingerprint: str,
    retry: Sequence[str],
) -> Refusals:
    """The texts a `--retry-dead-letters` run dead-letters again instead of
    sending (``retry_letters``): those its redone shards' committed parts
    (under this configuration) hold refused for a reason not retried. The
    workers, the preflight and `plan` route with the same ones."""
    if output is None or state is None or not retry:
        return Refusals()
    redone = {shard.name for shard in todo}
    parts = [rec for rec in state.committed.values()
             if rec.shard_name in redone and rec.config_fingerprint == fingerprint]
    return kept_refusals(output, parts, retry)


def planning_router(
    inputs: JobInputs, lookup: Lookup, memory: RunMemory, batch: Lookup | None = None,
    refusals: Refusals | None = None,
) -> Router:
    """A Router as the workers use it, with a null embedder: nothing is sent."""
    return Router(
        inputs.prepare, inputs.backend.count_tokens, inputs.backend.truncate, lookup, memory,
        lambda record, outcome: None, planning=True, refusals=refusals, batch=batch,
    )


def routed(router: Router, shard: Shard, inputs: JobInputs) -> Iterator[Decision]:
    """Every record of ``shard`` through a planning router. A text it would
    send is remembered at once, so its repeats count as repeats, as in a run."""
    for raw in read_shard(shard, inputs.reader, inputs.storage_options):
        decision = router.route(raw)
        if isinstance(decision, Send):
            router.memory.resolve(decision.record.content_hash, None)
        yield decision
