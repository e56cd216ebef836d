"""One embedding job, from flags to a summary: the driver side of `beamvec run`.

Resolves the flags (inputs.py), decides which shards to embed, checks what can
be checked before any worker starts (the backend answers, the output is
writable), builds and runs the pipeline, and summarizes from the manifest the
pipeline wrote.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from beamvec.batch_phase import check_batch_flags, finish_batch_phase, run_batch_phase
from beamvec.contract import (
    PARTIAL_DIR,
    SUCCESS,
    OutputState,
    complete_shards,
    read_manifest,
    read_state,
)
from beamvec.embedder import EmbedSettings
from beamvec.errors import Interrupted, SystemicError, UsageError, reason_of
from beamvec.failures import clear_failures, raise_recorded_failure
from beamvec.inputs import (
    JobInputs,
    Work,
    conflict,
    parse_options,
    resolve_inputs,
    retry_reasons,
    split_bytes,
    split_work,
    worker_processes,
)
from beamvec.lease import hold_lease
from beamvec.lookup import check_reuse_source
from beamvec.preflight import preflight
from beamvec.progress import PROGRESS, Reporter
from beamvec.quota import QuotaSettings
from beamvec.retry import RetryPolicy
from beamvec.reuse_join import plan_reuse
from beamvec.routing import Refusals
from beamvec.sink import Output
from beamvec.timeline import Timeline, new_run_id
from beamvec.transforms import EmbedCorpus, commit_run, write_work
from beamvec.worker import WorkerConfig

LOG = logging.getLogger("beamvec")
PROBE = "_beamvec_probe"


@dataclass
class JobPlan:
    """Everything decided on the driver before the pipeline is built."""

    inputs: JobInputs
    output: Output
    state: OutputState
    work: Work


def plan_job(options: PipelineOptions) -> JobPlan:
    inputs = resolve_inputs(options)
    output = Output(inputs.bv.output, inputs.storage_options)
    state = read_state(output)
    why = conflict(state, inputs.description)
    if why and not inputs.bv.force:
        raise UsageError(
            f"{output.url} {why}; write to a new --output, or pass --force to replace them"
        )
    for url in inputs.bv.reuse_from or ():
        check_reuse_source(inputs.description, Output(url, inputs.storage_options))
    for path, why in state.damaged.items():  # those shards are redone (contract.check_part)
        LOG.warning("%s is damaged (%s): its shard is embedded again", path, why)
    work = split_work(inputs.shards, state, inputs.description.config_fingerprint, inputs.bv.force,
                      retry_reasons(inputs.bv.retry_dead_letters))
    return JobPlan(inputs, output, state, work)


def check_output_writable(output: Output) -> None:
    """Write and delete a small object under the output before any text is sent:
    a missing bucket, wrong credentials, a read-only grant or a full disk stop
    the run here, in one line, not when the first shard commits after its
    quota is spent."""
    probe = output.path(PROBE)
    existed = output.fs.exists(output.root)
    try:
        output.makedirs(output.root)
        with output.fs.open(probe, "wb") as fh:
            fh.write(b"beamvec checks that it may write here\n")
    except OSError as exc:
        output.remove(probe)
        reason = reason_of(exc)
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            raise SystemicError(f"cannot write to the output {output.url}: {reason}; free some space") from None
        raise SystemicError(
            f"cannot write to the output {output.url}: {reason}; check that the bucket exists "
            "and that the credentials in the environment may create and delete objects in it"
        ) from None
    output.remove(probe)
    if not existed and output.renames:  # leave no empty directory behind a run that stops here
        with contextlib.suppress(OSError):
            output.fs.rmdir(output.root)


def _nothing_to_do(plan: JobPlan, out: Any) -> None:
    """Every shard is committed: finish what a crash may have left unfinished,
    and prune when asked."""
    inputs = plan.inputs
    print(f"beamvec: all {len(inputs.shards)} shards are already committed in {plan.output.url}; "
          "nothing to do (pass --force to redo them)", file=out)
    manifest = read_manifest(plan.output)
    expected = {s.name for s in inputs.shards}
    lost = manifest is None or any(c.name not in manifest.shards for c in plan.work.carried)
    prunable = inputs.bv.prune and manifest is not None and any(
        rec.shard_name not in expected for rec in manifest.shards.values()
    )
    if lost or prunable:
        # A crash after the last shard's commit but before the manifest, or a prune.
        commit_run(
            plan.output, [], [], sorted(expected), plan.work.carried, inputs.run_config,
            inputs.description, None, inputs.bv.prune,
        )
        return
    plan.output.remove_tree(plan.output.path(PARTIAL_DIR))  # left by a crash after a commit
    plan.output.write_bytes(plan.output.path(SUCCESS), b"")


def worker_count(options: PipelineOptions, bv: Any) -> int:
    """Workers sharing the quota, as far as the driver knows (see quota/)."""
    return max(1, bv.quota_workers, worker_processes(options))


def run_job(argv: Sequence[str], out: Any = None) -> dict[str, Any]:
    """Plan, run and summarize; returns the summary. Raises UsageError or SystemicError."""
    out = out or sys.stdout
    started = time.time()
    options = parse_options(argv)
    plan = plan_job(options)
    # One writer per output: a second run refuses here, naming the holder (lease.py).
    with hold_lease(plan.output, plan.inputs.bv.break_lease):
        return _run_planned(plan, options, started, out)


def _run_planned(plan: JobPlan, options: PipelineOptions, started: float, out: Any) -> dict[str, Any]:
    inputs, bv = plan.inputs, plan.inputs.bv
    check_batch_flags(bv)
    run_id = new_run_id(started)
    plan.output.run_id = run_id  # staged files go under _tmp/<run_id>/
    if not plan.work.todo:
        _nothing_to_do(plan, out)
        if bv.batch_api:  # a run killed after its commit left the jobs' files on the service
            finish_batch_phase(plan.output, inputs)
        return summarize(plan, started, out)
    checkpoint = bv.checkpoint if bv.checkpoint is not None else inputs.backend.name != "local"
    # Only when there is work: a no-op rerun sends nothing, and the text it
    # embeds is one the run needs, kept as a checkpoint (a run with k texts to send bills k).
    check_output_writable(plan.output)  # before any text is sent
    batch = (
        run_batch_phase(plan.output, inputs, plan.work.todo, out, state=plan.state) if bv.batch_api else None
    )
    if batch is not None and not batch.ready:  # --no-wait: jobs still running
        return {"output": plan.output.url, "complete": False, "waiting": True, "status": batch.status}
    checked = None if batch else preflight(
        plan.output, inputs, plan.work.todo, reuse=not bv.force, state=plan.state
    )
    # The output is about to change: it is not complete again until this run commits.
    plan.output.remove(plan.output.path(SUCCESS))
    max_in_flight = bv.max_in_flight or (1 if inputs.backend.name == "local" else 8)
    config = WorkerConfig(
        output=bv.output,
        reader=inputs.reader,
        prepare=inputs.prepare,
        description=inputs.description,
        storage_options=inputs.storage_options,
        reuse=not bv.force,
        reuse_from=tuple(bv.reuse_from or ()),
        # Checkpoints cost a small file per batch: worth it where a batch costs quota.
        checkpoint=checkpoint,
        seed=checked.seed if checked is not None else None,
        refusals=batch.refusals if batch is not None else Refusals(),
        run_id=run_id,
        retry_reasons=retry_reasons(bv.retry_dead_letters),
    )
    settings = EmbedSettings(
        max_in_flight=max_in_flight,
        retry=RetryPolicy(max_attempts=bv.max_attempts, deadline=bv.batch_deadline),
        fail_on_exhausted=bv.fail_on_exhausted,
    )
    workers = worker_count(options, bv)
    quota = QuotaSettings(
        bv.quota_rpm, bv.quota_tpm, share=1.0 / workers, window_s=bv.quota_window,
        discover=inputs.backend.name != "local",  # a local model has no server limit to find
        preflight_at=checked.sent_at if checked is not None else None,
    )
    plan.output.clean_staging(older_than=0.0)  # under the lease: only dead runs' files
    clear_failures(bv.output, inputs.storage_options)
    work = write_work(
        plan.output, run_id, plan.work.todo, [s.name for s in inputs.shards], plan.work.carried
    )
    # A large reuse source meets the records in a join rather than each process's index.
    joined = plan_reuse(config, plan.state, sum(max(0, s.size) for s in plan.work.todo))
    if joined:
        LOG.info("reuse: joining the records with %s reusable vectors by content hash", f"{joined:,}")
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | "EmbedCorpus" >> EmbedCorpus(
        work, inputs.backend, config, settings, quota, inputs.run_config, bv.concurrent_shards,
        split_bytes(bv, inputs.backend.name), bv.prune, joined,
    )
    live = not bv.quiet and _in_process(options)
    total_bytes = sum(max(0, s.size) for s in plan.work.todo)
    reporter = Reporter(len(plan.work.todo), total_bytes, interval=bv.progress_interval)
    timeline = (
        Timeline(bv.output, PROGRESS.read, inputs.storage_options, run_id=run_id)
        if _in_process(options) else nullcontext()
    )
    with reporter if live else nullcontext(), timeline:  # inside: the reporter resets PROGRESS
        try:
            result = pipeline.run()
            result.wait_until_finish()
        except Exception as exc:  # a worker's SystemicError reaches here as text on most runners
            raise_recorded_failure(bv.output, inputs.storage_options, exc)
            if _interrupted(exc):  # Ctrl-C inside a bundle, wrapped by the runner
                raise _interruption(plan) from None
            raise
        except KeyboardInterrupt:
            raise _interruption(plan) from None
    clear_failures(bv.output, inputs.storage_options)  # left by bundles the runner retried
    if batch is not None:
        finish_batch_phase(plan.output, inputs)  # the jobs' files off the service
    plan.output.finish_staging()
    return summarize(plan, started, out, beam_counters(result))


def _interrupted(exc: BaseException) -> bool:
    """Whether a runner's error is a Ctrl-C it caught in a bundle (Beam
    re-raises it as RuntimeError("KeyboardInterrupt [while running ...]"))."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt) or str(current).startswith("KeyboardInterrupt"):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _interruption(plan: JobPlan) -> Interrupted:
    """Ctrl-C: one line saying how many shards stand committed."""
    try:
        done = complete_shards(read_state(plan.output).committed.values())
        names = {s.name: s.fingerprint for s in plan.inputs.shards}
        count = sum(1 for name, fp in done.items() if names.get(name) == fp)
        what = f"{count} of {len(names)} shards are committed in {plan.output.url}"
    except Exception:  # noqa: BLE001 - the line must come out whatever the output's state
        what = f"the shards committed in {plan.output.url} stay committed"
    return Interrupted(f"interrupted; {what}; rerun the same command to embed the rest")


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
    manifest = read_manifest(plan.output)
    # A large file is committed as parts, each under its own name: match a
    # record by the input file it belongs to, not by its name.
    todo = {s.name: s.fingerprint for s in plan.work.todo}
    records = [
        rec for rec in (manifest.shards.values() if manifest else [])
        if todo.get(rec.shard_name) == rec.file_fingerprint
    ]
    done = [rec.counts for rec in records]
    reasons: dict[str, int] = {}
    for counts in done:
        for reason, count in counts.dead_letters_by_reason.items():
            reasons[reason] = reasons.get(reason, 0) + count
    wall = time.time() - started
    read = sum(c.read for c in done)
    description = plan.inputs.description
    summary = {
        "output": plan.output.url,
        "shards": len(plan.inputs.shards),
        "shards_run": len({rec.shard_name for rec in records}),
        "shards_skipped": len(plan.work.skipped),
        "read": read,
        "embedded": sum(c.embedded for c in done),
        "dead_lettered": sum(c.dead_lettered for c in done),
        "dead_letters_by_reason": reasons,
        "reused": sum(c.reused for c in done),
        "sent": sum(c.sent for c in done),
        "batch_sent": sum(c.batch_sent for c in done),
        "deduplicated": sum(c.deduplicated for c in done),
        "tokens": sum(c.tokens for c in done),
        "wall_seconds": round(wall, 2),
        "records_per_second": round(read / wall, 1) if wall else 0.0,
        "complete": plan.output.fs.exists(plan.output.path(SUCCESS)),
        "model": description.model,
        "dimension": description.dimension,
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
    if s.get("batch_sent"):
        lines.append(f"  billed         {s['batch_sent']:,} texts through batch jobs, {s['sent']:,} online")
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
