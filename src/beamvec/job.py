"""One embedding job, from flags to a summary: the driver side of `beamvec run`.

Checks what can be checked before any worker starts (inputs exist, backend
loads or answers, output is consistent), builds the pipeline, runs it, and
summarizes from the manifest the pipeline wrote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)

from beamvec import __version__
from beamvec.backends import Backend, make_backend
from beamvec.errors import SystemicError, UsageError
from beamvec.embedder import EmbedSettings
from beamvec.options import BeamvecOptions, expand_config, parse_storage_options
from beamvec.prepare import PrepareConfig
from beamvec.progress import Reporter
from beamvec.records import Shard
from beamvec.retry import RetryPolicy
from beamvec.shard_job import ShardJobConfig
from beamvec.sink import (
    MANIFEST,
    PARTIAL_DIR,
    SUCCESS,
    Output,
    build_manifest,
    read_footer,
    write_manifest,
)
from beamvec.sources import ReaderConfig, list_shards
from beamvec.transforms import EmbedCorpus, QuotaSettings

LOG = logging.getLogger("beamvec")
PROBE = "_beamvec_probe"


@dataclass
class JobPlan:
    """Everything decided on the driver before the pipeline is built."""

    options: PipelineOptions
    bv: BeamvecOptions
    backend: Backend
    shards: list[Shard]
    todo: list[Shard]
    output: Output
    storage_options: dict[str, Any]
    reader: ReaderConfig
    prepare: PrepareConfig
    manifest_config: dict[str, Any]
    description: dict[str, Any]
    skipped: list[str] = field(default_factory=list)
    carried: list[dict[str, Any]] = field(default_factory=list)  # commit records of skipped shards


def parse_options(argv: Sequence[str]) -> PipelineOptions:
    options = PipelineOptions(expand_config(argv))
    bv = options.view_as(BeamvecOptions)
    if not bv.input:
        raise UsageError("no --input given: pass a glob such as --input 'corpus/*.jsonl'")
    if not bv.output:
        raise UsageError("no --output given: pass a directory or bucket prefix")
    return options


def worker_processes(options: PipelineOptions) -> int:
    """Worker processes on this machine: the multi-process DirectRunner's, else 1."""
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "multi_processing":
        return direct.direct_num_workers or os.cpu_count() or 1  # 0: one per CPU in Beam
    return 1


def build_backend(options: PipelineOptions) -> Backend:
    bv = options.view_as(BeamvecOptions)
    if bv.backend == "local":
        if bv.model or bv.task_type or bv.output_dimensionality:
            raise UsageError(
                "--model, --task-type and --output-dimensionality apply to the gemini and "
                "vertex backends; the local backend takes --local-model-dir"
            )
        return make_backend("local", model_dir=bv.local_model_dir, threads=bv.local_threads or None,
                            processes=worker_processes(options))
    config: dict[str, Any] = {
        "model": bv.model or "gemini-embedding-001",
        "task_type": bv.task_type,
        "output_dimensionality": bv.output_dimensionality,
        "api_key_file": bv.api_key_file,
        "api_key_secret": bv.api_key_secret,
        "api_base_url": bv.api_base_url,
        "api_version": bv.api_version,
        "timeout_s": bv.request_timeout,
    }
    if bv.backend == "vertex":
        project = options.view_as(GoogleCloudOptions).project
        if not project and bv.vertex_auth != "api_key":
            raise UsageError("--backend vertex needs --project (and --location)")
        config.update(project=project, location=bv.location, vertex_auth=bv.vertex_auth)
    return make_backend(bv.backend, **config)


def config_fingerprint(description: dict[str, Any], reader: ReaderConfig, prepare: PrepareConfig) -> str:
    """What makes two outputs' vectors comparable: model, task, dimension,
    and the rules that decide which text and id a record gets."""
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
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


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
    """What flags resolve to, shared by `run` and `plan`: no API call, no write."""

    bv: BeamvecOptions
    storage_options: dict[str, Any]
    backend: Backend
    shards: list[Shard]
    reader: ReaderConfig
    prepare: PrepareConfig


def resolve_inputs(options: PipelineOptions) -> JobInputs:
    bv = options.view_as(BeamvecOptions)
    storage_options = parse_storage_options(bv.storage_option)
    backend = build_backend(options)
    shards = select_partitions(list_shards(bv.input, storage_options), bv.since, bv.until)
    reader = ReaderConfig(
        format=bv.format, id_field=bv.id_field, text_field=bv.text_field, title_field=bv.title_field
    )
    prepare = PrepareConfig(
        normalization=bv.normalization,
        on_long_text=bv.on_long_text,
        max_text_tokens=backend.limits.max_text_tokens,
    )
    return JobInputs(bv, storage_options, backend, shards, reader, prepare)


def is_committed(done: dict[str, Any] | None, shard: Shard, fingerprint: str) -> bool:
    """Whether a shard's commit record still stands: same input, same configuration."""
    return bool(
        done
        and done.get("input_fingerprint") == shard.fingerprint
        and done.get("config_fingerprint", fingerprint) == fingerprint
    )


def plan_job(options: PipelineOptions) -> JobPlan:
    inputs = resolve_inputs(options)
    bv, storage_options, backend = inputs.bv, inputs.storage_options, inputs.backend
    shards, reader, prepare = inputs.shards, inputs.reader, inputs.prepare
    description = backend.describe()
    description["beamvec_version"] = __version__
    description["config_fingerprint"] = config_fingerprint(description, reader, prepare)
    manifest_config = {
        "inputs": list(bv.input),
        "format": bv.format,
        "id_field": bv.id_field,
        "text_field": bv.text_field,
        "title_field": bv.title_field,
        "normalization": bv.normalization,
        "on_long_text": bv.on_long_text,
        "storage_option_keys": sorted(storage_options),  # values may be secrets
        "quota_rpm": bv.quota_rpm,
        "quota_tpm": bv.quota_tpm,
        "max_in_flight": bv.max_in_flight,
        "runner": options.view_as(StandardOptions).runner,
    }
    output = Output(bv.output, storage_options)
    plan = JobPlan(
        options, bv, backend, shards, list(shards), output, storage_options, reader, prepare,
        manifest_config, description,
    )
    _guard_and_skip(plan)
    return plan


def _guard_and_skip(plan: JobPlan) -> None:
    """Refuse to mix vectors of different configs; skip shards already committed."""
    manifest = plan.output.read_json(plan.output.path(MANIFEST))
    if manifest:
        theirs = manifest.get("config_fingerprint")
        ours = plan.description["config_fingerprint"]
        if theirs and theirs != ours and not plan.bv.force:
            raise UsageError(
                f"{plan.output.url} holds vectors made with another configuration "
                f"(backend {manifest.get('backend')}, model {manifest.get('model')}, "
                f"dimension {manifest.get('dimension')}, task {manifest.get('task_type')}); "
                "write to a new --output, or pass --force to replace them"
            )
    if plan.bv.force:
        return
    committed = committed_shards(plan.output, manifest)
    ours = plan.description["config_fingerprint"]
    todo = []
    for shard in plan.shards:
        done = committed.get(shard.name)
        if is_committed(done, shard, ours):
            plan.skipped.append(shard.name)
            plan.carried.append({k: v for k, v in done.items() if k != "config_fingerprint"})
        else:
            todo.append(shard)
    plan.todo = todo


def committed_shards(output: Output, manifest: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Shards whose vector file exists, with their commit records.

    The manifest answers for most; a shard committed by a run that crashed
    before writing its manifest is found by listing vectors/ and reading
    only those footers."""
    known = dict((manifest or {}).get("shards", {}))
    fingerprint = (manifest or {}).get("config_fingerprint")
    try:
        files = output.fs.find(output.path("vectors"))
    except FileNotFoundError:
        files = []
    present = {}
    for path in files:
        name = path.rsplit("/", 1)[-1]
        if not name.endswith(".parquet"):
            continue
        name = name[: -len(".parquet")]
        if name in known:
            present[name] = {**known[name], "config_fingerprint": fingerprint}
        else:
            footer = read_footer(output.fs, path)
            if footer.get("shard"):
                present[name] = {**footer["shard"], "config_fingerprint": footer.get("config_fingerprint")}
    return present


def check_output_writable(output: Output) -> None:
    """Write and delete a small object under the output before any text is sent:
    a missing bucket, wrong credentials or a read-only grant stop the run here,
    in one line, not when the first shard commits after its quota is spent."""
    probe = output.path(PROBE)
    try:
        output.makedirs(output.root)
        with output.fs.open(probe, "wb") as fh:
            fh.write(b"beamvec checks that it may write here\n")
        output.remove(probe)
    except OSError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SystemicError(
            f"cannot write to the output {output.url}: {reason}; check that the bucket exists "
            "and that the credentials in the environment may create and delete objects in it"
        ) from None


def run_job(argv: Sequence[str], out: Any = None) -> dict[str, Any]:
    """Plan, run and summarize; returns the summary. Raises UsageError or SystemicError."""
    out = out or sys.stdout
    started = time.time()
    options = parse_options(argv)
    plan = plan_job(options)
    bv = plan.bv
    max_in_flight = bv.max_in_flight or (1 if plan.backend.name == "local" else 8)
    if not plan.todo:
        print(f"beamvec: all {len(plan.shards)} shards are already committed in {plan.output.url}; "
              "nothing to do (pass --force to redo them)", file=out)
        manifest = plan.output.read_json(plan.output.path(MANIFEST)) or {}
        if any(c["name"] not in manifest.get("shards", {}) for c in plan.carried):
            # A crash after the last shard's commit but before the manifest.
            run = {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "shards": 0}
            rebuilt = build_manifest(manifest, plan.carried, plan.manifest_config, plan.description, run)
            write_manifest(plan.output, rebuilt)
        plan.output.remove_tree(plan.output.path(PARTIAL_DIR))  # left by a crash after a commit
        plan.output.write_bytes(plan.output.path(SUCCESS), b"")
        return summarize(plan, started, out)
    plan.backend.preflight()  # only when there is work: a no-op rerun sends nothing
    check_output_writable(plan.output)  # before any text is sent
    # The output is about to change: it is not complete again until this run commits.
    plan.output.remove(plan.output.path(SUCCESS))
    direct = options.view_as(DirectOptions)
    workers = max(1, bv.quota_workers)
    if direct.direct_running_mode == "multi_processing":
        # 0 means one worker per CPU in Beam
        workers = max(workers, direct.direct_num_workers or os.cpu_count() or 1)
    job_config = ShardJobConfig(
        output=bv.output,
        reader=plan.reader,
        prepare=plan.prepare,
        storage_options=plan.storage_options,
        output_storage_options=plan.storage_options,
        config_fingerprint=plan.description["config_fingerprint"],
        reuse=not bv.force,
        # Checkpoints cost a small file per batch: worth it where a batch costs quota.
        checkpoint=bv.checkpoint if bv.checkpoint is not None else plan.backend.name != "local",
    )
    settings = EmbedSettings(
        max_in_flight=max_in_flight,
        retry=RetryPolicy(max_attempts=bv.max_attempts, deadline=bv.batch_deadline),
        fail_on_exhausted=bv.fail_on_exhausted,
    )
    quota = QuotaSettings(bv.quota_rpm, bv.quota_tpm, share=1.0 / workers, window_s=bv.quota_window)
    plan.output.clean_staging()
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | "EmbedCorpus" >> EmbedCorpus(
        plan.todo, plan.backend, job_config, settings, quota, plan.manifest_config,
        plan.description, [s.name for s in plan.shards], bv.concurrent_shards, plan.carried,
    )
    live = not bv.quiet and _in_process(options)
    total_bytes = sum(max(0, s.size) for s in plan.todo)
    reporter = Reporter(len(plan.todo), total_bytes, interval=bv.progress_interval)
    with reporter if live else nullcontext():
        result = pipeline.run()
        result.wait_until_finish()
    return summarize(plan, started, out, beam_counters(result))


def _in_process(options: PipelineOptions) -> bool:
    """Whether workers run in this process, so that live progress can be read."""
    runner = options.view_as(StandardOptions).runner
    mode = options.view_as(DirectOptions).direct_running_mode
    return runner in (None, "DirectRunner", "BundleBasedDirectRunner") and mode in (None, "in_memory")


def beam_counters(result: Any) -> dict[str, int]:
    """beamvec's Beam counters (requests, retries, 429s, throttling-msecs, ...),
    where the runner reports them; {} where it does not."""
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace("beamvec"))["counters"]
    except Exception:  # noqa: BLE001 - some runners have no metrics API
        return {}
    totals: dict[str, int] = {}
    for counter in counters:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals


def summarize(
    plan: JobPlan, started: float, out: Any, counters: dict[str, int] | None = None
) -> dict[str, Any]:
    """The end-of-run summary, read back from the manifest the pipeline wrote."""
    manifest = plan.output.read_json(plan.output.path(MANIFEST)) or {}
    names = {s.name for s in plan.todo}
    done = [v for k, v in manifest.get("shards", {}).items() if k in names]
    reasons: dict[str, int] = {}
    for shard in done:
        for reason, count in shard.get("dead_letters_by_reason", {}).items():
            reasons[reason] = reasons.get(reason, 0) + count
    wall = time.time() - started
    summary = {
        "output": plan.output.url,
        "shards": len(plan.shards),
        "shards_run": len(done),
        "shards_skipped": len(plan.skipped),
        "read": sum(s["read"] for s in done),
        "embedded": sum(s["embedded"] for s in done),
        "dead_lettered": sum(s["dead_lettered"] for s in done),
        "dead_letters_by_reason": reasons,
        "tokens": sum(s.get("tokens", 0) for s in done),
        "wall_seconds": round(wall, 2),
        "records_per_second": round(sum(s["read"] for s in done) / wall, 1) if wall else 0.0,
        "complete": plan.output.fs.exists(plan.output.path(SUCCESS)),
        "model": plan.description.get("model"),
        "dimension": plan.description.get("dimension"),
        "counters": counters or {},
    }
    print(format_summary(summary), file=out)
    return summary


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        "beamvec run summary",
        f"  shards         {s['shards']} ({s['shards_run']} run, {s['shards_skipped']} skipped as committed)",
        f"  records read   {s['read']:,}",
        f"  embedded       {s['embedded']:,}  ({s['model']}, {s['dimension']} dims, {s['tokens']:,} tokens)",
        f"  dead-lettered  {s['dead_lettered']:,}",
    ]
    for reason, count in sorted(s["dead_letters_by_reason"].items()):
        lines.append(f"    {reason:<14} {count:,}")
    counters = s.get("counters") or {}
    if counters.get("requests"):
        retries = {k.removeprefix("retries_"): v for k, v in counters.items() if k.startswith("retries_")}
        lines.append(
            f"  requests       {counters['requests']:,}  (retries {counters.get('retries', 0):,}"
            + (" by status " + ", ".join(f"{k}: {v}" for k, v in sorted(retries.items())) if retries else "")
            + f"; 429s {counters.get('throttled_429', 0):,}; throttled "
            f"{counters.get('throttling-msecs', 0) / 1000:.1f} s)"
        )
    lines += [
        f"  wall time      {s['wall_seconds']:.1f} s  ({s['records_per_second']:,.1f} records/s)",
        f"  output         {s['output']}  ({'complete: _SUCCESS written' if s['complete'] else 'INCOMPLETE'})",
    ]
    return "\n".join(lines)
