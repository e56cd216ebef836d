"""One embedding job, from flags to a summary: the driver side of `beamvec run`.

Resolves the flags (resolve.py), decides which shards to embed (job_plan.py),
checks what can be checked before any worker starts (the backend answers, the
output is writable), builds and runs the pipeline, and summarizes from the
manifest the pipeline wrote (summarize.py). How a run stops is stops.py.
"""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beamvec.contract import PARTIAL_DIR, SUCCESS, read_manifest
from beamvec.contract.failures import clear_failures, raise_recorded_failure
from beamvec.contract.fence import LOST, fenced, lost_error
from beamvec.driver.batch_phase import check_batch_flags, finish_batch_phase, run_batch_phase
from beamvec.driver.job_plan import JobPlan as JobPlan
from beamvec.driver.job_plan import check_output_writable as check_output_writable
from beamvec.driver.job_plan import plan_job as plan_job
from beamvec.driver.lease import hold_lease
from beamvec.driver.options import BeamvecOptions
from beamvec.driver.preflight import Preflight, preflight
from beamvec.driver.resolve import (
    parse_options,
    retry_reasons,
    retry_refusals,
    split_bytes,
    worker_processes,
)
from beamvec.driver.reuse_choice import plan_reuse
from beamvec.driver.run_summary import RunSummary, exit_code, format_summary
from beamvec.driver.stops import CANCEL_WAIT_S as CANCEL_WAIT_S
from beamvec.driver.stops import Liveness, in_process, lost, stalled, stopped
from beamvec.driver.stops import cancel_remote as _cancel_remote
from beamvec.driver.summarize import beam_counters, summarize
from beamvec.driver.timeline import Timeline, new_run_id
from beamvec.embed.embedder import EmbedSettings
from beamvec.interrupt import STOP, signals_handled
from beamvec.pipeline.commit import commit_run
from beamvec.pipeline.transforms import EmbedCorpus
from beamvec.pipeline.work_list import write_work
from beamvec.pipeline.worker import WorkerConfig
from beamvec.progress import PROGRESS, Reporter
from beamvec.quota import QuotaSettings
from beamvec.retry import RetryPolicy
from beamvec.route.retry_letters import merged
from beamvec.route.router import Refusals

LOG = logging.getLogger("beamvec")


def _nothing_to_do(plan: JobPlan, out: Any) -> None:
    """Every shard is committed: finish what a crash may have left unfinished,
    and prune when asked."""
    inputs = plan.inputs
    print(f"beamvec: all {len(inputs.shards)} shards are already committed in {plan.output.url}; "
          "nothing to do (pass --force to redo them)", file=out)
    manifest = read_manifest(plan.output)
    expected = {s.name for s in inputs.shards}
    unrecorded = manifest is None or any(c.name not in manifest.shards for c in plan.work.carried)
    prunable = inputs.bv.prune and manifest is not None and any(
        rec.shard_name not in expected for rec in manifest.shards.values()
    )
    if unrecorded or prunable:
        # A crash after the last shard's commit but before the manifest, or a prune.
        commit_run(
            plan.output, [], [], sorted(expected), plan.work.carried, inputs.run_config,
            inputs.description, None, inputs.bv.prune,
        )
        return
    with fenced(plan.output):
        plan.output.remove_tree(plan.output.path(PARTIAL_DIR))  # left by a crash after a commit
        plan.output.write_bytes(plan.output.path(SUCCESS), b"")


def worker_count(options: PipelineOptions, bv: Any) -> int:
    """Workers sharing the quota, as far as the driver knows (see quota/)."""
    return max(1, bv.quota_workers, worker_processes(options))


def run_job(argv: Sequence[str], out: Any = None) -> RunSummary:
    """Plan, run and summarize; prints the summary (text, or JSON with --json)
    and returns it. Raises UsageError or SystemicError."""
    started = time.time()
    options = parse_options(argv)
    bv = options.view_as(BeamvecOptions)
    # --json: stdout holds the JSON alone; --quiet: no lines but warnings and errors.
    stdout = out or sys.stdout
    lines = io.StringIO() if bv.quiet else (sys.stderr if bv.json else stdout)
    plan = plan_job(options)
    # One writer per output: a second run refuses here, naming the holder (lease.py),
    # renewed while this process's workers make progress (in-process runners).
    liveness = Liveness(in_process(options))
    with signals_handled(), hold_lease(plan.output, plan.inputs.bv.break_lease, progress=liveness,
                                       on_stall=stalled, on_lost=lost) as lease:
        try:
            summary = _run_planned(plan, options, started, lines, liveness, lease.owner)
        except KeyboardInterrupt:  # the lease was lost outside the pipeline (planning, summary)
            if STOP.reason == LOST:
                raise lost_error(plan.output) from None
            raise
    if bv.json:
        print(summary.to_json(), file=stdout)
    elif not bv.quiet and summary.status != "pending":  # pending: the batch phase said so
        print(format_summary(summary), file=stdout)
    return summary


def _run_planned(
    plan: JobPlan, options: PipelineOptions, started: float, out: Any, liveness: Liveness,
    lease_owner: str = "",
) -> RunSummary:
    """The run's steps in order: finish a no-op, check, send the batch jobs or
    the preflight's text, withdraw _SUCCESS, run the pipeline, summarize."""
    inputs, bv = plan.inputs, plan.inputs.bv
    check_batch_flags(bv)
    run_id = new_run_id(started)
    plan.output.run_id = run_id  # staged files go under _tmp/<run_id>/
    if not plan.work.todo:
        _nothing_to_do(plan, out)
        if bv.batch_api:  # a run killed after its commit left the jobs' files on the service
            finish_batch_phase(plan.output, inputs)
        return summarize(plan, started)
    # Only when there is work: a no-op rerun sends nothing, and the text it
    # embeds is one the run needs, kept as a checkpoint (a run with k texts to send bills k).
    check_output_writable(plan.output)  # before any text is sent
    refused = retry_refusals(plan.output, plan.state, plan.work.todo, inputs.description.config_fingerprint,
                             retry_reasons(bv.retry_dead_letters))
    batch = (
        run_batch_phase(plan.output, inputs, plan.work.todo, out, state=plan.state, refusals=refused)
        if bv.batch_api else None
    )
    if batch is not None and not batch.ready:  # --no-wait: jobs still running
        return RunSummary(plan.output.url, "pending", exit_code("pending", 0, False),
                          shards=len(inputs.shards), batch_status=batch.status)
    # A large reuse source meets the records in a join rather than each process's index.
    choice = plan_reuse(inputs, plan.output, plan.state, plan.work.todo)
    LOG.info("reuse: by %s (%s)", choice.by, choice.why)
    checked = None if batch else preflight(
        plan.output, inputs, plan.work.todo, reuse=not bv.force, state=plan.state, refusals=refused,
        joined=choice.join,
    )
    # The output is about to change: it is not complete again until this run commits.
    with fenced(plan.output):
        plan.output.remove(plan.output.path(SUCCESS))
    config = _worker_config(
        plan, run_id, lease_owner, checked,
        refusals=merged(refused, batch.refusals if batch is not None else Refusals()),
    )
    joined = choice.vectors if choice.join else 0
    corpus = _embed_corpus(plan, options, run_id, config, checked, joined)
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | "EmbedCorpus" >> corpus
    result = _run_pipeline(plan, options, pipeline, run_id, liveness)
    clear_failures(bv.output, inputs.storage_options)  # left by bundles the runner retried
    if batch is not None:
        finish_batch_phase(plan.output, inputs)  # the jobs' files off the service
    plan.output.finish_staging()
    return summarize(plan, started, beam_counters(result), in_process(options))


def _worker_config(
    plan: JobPlan, run_id: str, lease_owner: str, checked: Preflight | None, refusals: Refusals,
) -> WorkerConfig:
    """What every worker is told: where to read and write, and what not to send."""
    inputs, bv = plan.inputs, plan.inputs.bv
    checkpoint = bv.checkpoint if bv.checkpoint is not None else inputs.backend.name != "local"
    return WorkerConfig(
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
        refusals=refusals,
        run_id=run_id,
        retry_reasons=retry_reasons(bv.retry_dead_letters),
        lease_owner=lease_owner,
    )


def _embed_corpus(
    plan: JobPlan, options: PipelineOptions, run_id: str, config: WorkerConfig, checked: Preflight | None,
    joined: int,
) -> EmbedCorpus:
    """The pipeline's one transform: pacing and retries set, its work list
    staged in the output; ``joined``: the reusable vectors a join meets (0: by index)."""
    inputs, bv = plan.inputs, plan.inputs.bv
    max_in_flight = bv.max_in_flight or (1 if inputs.backend.name == "local" else 8)
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
    return EmbedCorpus(
        work, inputs.backend, config, settings, quota, inputs.run_config, bv.concurrent_shards,
        split_bytes(bv, inputs.backend.name), bv.prune, joined,
    )


def _run_pipeline(
    plan: JobPlan, options: PipelineOptions, pipeline: beam.Pipeline, run_id: str, liveness: Liveness,
) -> Any:
    """Run it to its end, with live progress and the timeline where workers run
    here; a failure or a stop comes out as one line (stops.stopped)."""
    inputs, bv = plan.inputs, plan.inputs.bv
    here = in_process(options)
    live = not bv.quiet and bv.progress_interval != 0 and here
    total_bytes = sum(max(0, s.size) for s in plan.work.todo)
    reporter = Reporter(len(plan.work.todo), total_bytes, interval=bv.progress_interval)
    timeline = (
        Timeline(bv.output, PROGRESS.read, inputs.storage_options, run_id=run_id)
        if here else nullcontext()
    )
    PROGRESS.reset()  # the summary reads the quota's wall-clock wait from it
    with reporter if live else nullcontext(), timeline:  # inside: the reporter resets PROGRESS
        result = None
        try:
            liveness.watching = True
            result = pipeline.run()
            result.wait_until_finish()
        except BaseException as exc:  # noqa: BLE001 - Ctrl-C, SIGTERM, a stall, a worker's fault
            if result is not None and not here:
                _cancel_remote(result)  # its workers would go on writing without the lease
            halted = stopped(plan, exc)
            if halted is exc and isinstance(exc, Exception):
                # a worker's SystemicError reaches here as text on most runners
                raise_recorded_failure(bv.output, inputs.storage_options, exc)
                raise
            raise halted from None
        finally:
            liveness.watching = False
    return result
