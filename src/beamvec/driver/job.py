"""One embedding job, from flags to a summary: the driver side of `beamvec run`.

Resolves the flags (resolve.py), decides which shards to embed, checks what can
be checked before any worker starts (the backend answers, the output is
writable), builds and runs the pipeline, and summarizes from the manifest the
pipeline wrote.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from beamvec import counters as c
from beamvec.contract import (
    PARTIAL_DIR,
    SUCCESS,
    CommitRecord,
    OutputState,
    complete_shards,
    read_manifest,
    read_state,
    total,
)
from beamvec.contract.failures import clear_failures, raise_recorded_failure
from beamvec.contract.fence import LOST, fenced, lost_error
from beamvec.contract.layout import PROBE as PROBE
from beamvec.counters import THROTTLING_COUNTER
from beamvec.driver.batch_phase import check_batch_flags, finish_batch_phase, run_batch_phase
from beamvec.driver.lease import STALL_S, hold_lease
from beamvec.driver.options import BeamvecOptions
from beamvec.driver.preflight import preflight
from beamvec.driver.resolve import (
    JobInputs,
    Work,
    conflict,
    parse_options,
    resolve_inputs,
    retry_reasons,
    retry_refusals,
    split_bytes,
    split_work,
    uncovered_by_force,
    worker_processes,
)
from beamvec.driver.reuse_choice import plan_reuse
from beamvec.driver.run_summary import (
    READ_ERRORS,
    DamagedInput,
    Requests,
    RunSummary,
    exit_code,
    format_summary,
)
from beamvec.driver.timeline import Timeline, new_run_id
from beamvec.embed.embedder import EmbedSettings
from beamvec.errors import Interrupted, SystemicError, UsageError, reason_of
from beamvec.interrupt import STOP, Terminated, signals_handled
from beamvec.pipeline.transforms import EmbedCorpus, commit_run, write_work
from beamvec.pipeline.worker import WorkerConfig
from beamvec.progress import PROGRESS, Reporter
from beamvec.quota import QuotaSettings
from beamvec.retry import RetryPolicy
from beamvec.route.lookup import check_reuse_source
from beamvec.route.retry_letters import merged
from beamvec.route.router import Refusals
from beamvec.write.sink import Output

LOG = logging.getLogger("beamvec")


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
    uncovered = uncovered_by_force(state, inputs.shards) if why else None
    if uncovered:
        raise UsageError(f"{output.url}: {uncovered}")
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
    liveness = _Liveness(_in_process(options))
    with signals_handled(), hold_lease(plan.output, plan.inputs.bv.break_lease, progress=liveness,
                                       on_stall=_stalled, on_lost=_lost) as lease:
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


class _Liveness:
    """What the lease's renewer asks: has the run moved since it last asked?
    Only while the pipeline runs in this process, where its workers count
    into ``PROGRESS``; before (planning, batch jobs) it always has."""

    def __init__(self, in_process: bool) -> None:
        self.in_process = in_process
        self.watching = False

    def __call__(self) -> object:
        return PROGRESS.read() if self.watching and self.in_process else object()


def _stalled() -> None:
    """The run made no progress for ``STALL_S``: stop it (the lease stops being renewed)."""
    import _thread

    STOP.request("stalled")
    _thread.interrupt_main()  # the driver ends the run in one line (``_stopped``)


def _lost() -> None:
    """Another run took the output over: this one stops sending at once, and
    its commits are refused from now on (contract.fence)."""
    import _thread

    STOP.request(LOST)
    _thread.interrupt_main()


def _stopped(plan: JobPlan, cause: BaseException) -> BaseException:
    """After the pipeline failed or was stopped: let the workers settle, then
    say why in one line (what stays committed, when it was a signal)."""
    if not STOP.requested:
        STOP.request("a worker failed")
    STOP.settle()  # no shard commits after this: the count below is the truth
    if STOP.reason == LOST:
        return lost_error(plan.output)
    if STOP.reason == "stalled":
        return SystemicError(
            f"the run made no progress for {STALL_S:.0f} s and was stopped; committed shards "
            "stay committed: rerun the same command (with --debug to see where it stalled)"
        )
    if STOP.signum is not None or isinstance(cause, KeyboardInterrupt) or _interrupted(cause):
        return _interruption(plan)
    return cause


def _run_planned(
    plan: JobPlan, options: PipelineOptions, started: float, out: Any, liveness: _Liveness,
    lease_owner: str = "",
) -> RunSummary:
    inputs, bv = plan.inputs, plan.inputs.bv
    check_batch_flags(bv)
    run_id = new_run_id(started)
    plan.output.run_id = run_id  # staged files go under _tmp/<run_id>/
    if not plan.work.todo:
        _nothing_to_do(plan, out)
        if bv.batch_api:  # a run killed after its commit left the jobs' files on the service
            finish_batch_phase(plan.output, inputs)
        return summarize(plan, started)
    checkpoint = bv.checkpoint if bv.checkpoint is not None else inputs.backend.name != "local"
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
        refusals=merged(refused, batch.refusals if batch is not None else Refusals()),
        run_id=run_id,
        retry_reasons=retry_reasons(bv.retry_dead_letters),
        lease_owner=lease_owner,
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
    joined = choice.vectors if choice.join else 0
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | "EmbedCorpus" >> EmbedCorpus(
        work, inputs.backend, config, settings, quota, inputs.run_config, bv.concurrent_shards,
        split_bytes(bv, inputs.backend.name), bv.prune, joined,
    )
    live = not bv.quiet and bv.progress_interval != 0 and _in_process(options)
    total_bytes = sum(max(0, s.size) for s in plan.work.todo)
    reporter = Reporter(len(plan.work.todo), total_bytes, interval=bv.progress_interval)
    timeline = (
        Timeline(bv.output, PROGRESS.read, inputs.storage_options, run_id=run_id)
        if _in_process(options) else nullcontext()
    )
    PROGRESS.reset()  # the summary reads the quota's wall-clock wait from it
    with reporter if live else nullcontext(), timeline:  # inside: the reporter resets PROGRESS
        result = None
        try:
            liveness.watching = True
            result = pipeline.run()
            result.wait_until_finish()
        except BaseException as exc:  # noqa: BLE001 - Ctrl-C, SIGTERM, a stall, a worker's fault
            if result is not None and not _in_process(options):
                _cancel_remote(result)  # its workers would go on writing without the lease
            stopped = _stopped(plan, exc)
            if stopped is exc and isinstance(exc, Exception):
                # a worker's SystemicError reaches here as text on most runners
                raise_recorded_failure(bv.output, inputs.storage_options, exc)
                raise
            raise stopped from None
        finally:
            liveness.watching = False
    clear_failures(bv.output, inputs.storage_options)  # left by bundles the runner retried
    if batch is not None:
        finish_batch_phase(plan.output, inputs)  # the jobs' files off the service
    plan.output.finish_staging()
    return summarize(plan, started, beam_counters(result), _in_process(options))


#: How long a stopped launcher waits for its remote job to be cancelled.
CANCEL_WAIT_S = 300


def _cancel_remote(result: Any) -> None:
    """Ctrl-C, SIGTERM or a lost lease on a launcher whose job runs remotely
    (Dataflow, Flink, Spark): cancel the job and wait until it ends, so that
    the lease is released only once no worker of it can write. Where that
    fails, say in one line that the job goes on (its commits stay fenced)."""
    try:
        result.cancel()
        result.wait_until_finish(duration=CANCEL_WAIT_S * 1000)
        state = str(getattr(result, "state", ""))
    except Exception as exc:  # noqa: BLE001 - a runner without cancel, an API error
        state = f"not cancelled ({reason_of(exc)})"
    if "CANCELLED" not in state and "DONE" not in state and "FAILED" not in state:
        print(f"beamvec run: the remote job is {state or 'still running'}; it goes on and its "
              "commits are refused once another run holds the output: cancel it on its runner",
              file=sys.stderr)


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
    kind = Terminated if STOP.signum == signal.SIGTERM else Interrupted
    return kind(f"{STOP.reason or 'interrupted'}; {what}; rerun the same command to embed the rest")


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
    plan: JobPlan, started: float, counters: dict[str, int] | None = None, in_process: bool = False,
) -> RunSummary:
    """The end-of-run summary, read back from the manifest the pipeline wrote."""
    manifest = read_manifest(plan.output)
    # A large file is committed as parts, each under its own name: match a
    # record by the input file it belongs to, not by its name.
    todo = {s.name: s.fingerprint for s in plan.work.todo}
    records = [
        rec for rec in (manifest.shards.values() if manifest else [])
        if todo.get(rec.shard_name) == rec.file_fingerprint
    ]
    done = total(rec.counts for rec in records)
    wall = time.time() - started
    description = plan.inputs.description
    status = "complete" if plan.output.fs.exists(plan.output.path(SUCCESS)) else "incomplete"
    return RunSummary(
        output=plan.output.url,
        status=status,
        exit_code=exit_code(status, done.dead_lettered, plan.inputs.bv.fail_on_dead_letters),
        shards=len(plan.inputs.shards),
        shards_run=len({rec.shard_name for rec in records}),
        shards_skipped=len(plan.work.skipped),
        read=done.read,
        embedded=done.embedded,
        sent=done.sent,
        batch_sent=done.batch_sent,
        reused=done.reused,
        deduplicated=done.deduplicated,
        dead_lettered=done.dead_lettered,
        dead_letters_by_reason=dict(sorted(done.dead_letters_by_reason.items())),
        damaged_inputs=damaged_inputs(records),
        tokens=done.tokens,
        sent_tokens=done.sent_tokens + done.batch_sent_tokens,
        wall_seconds=round(wall, 2),
        records_per_second=round(done.read / wall, 1) if wall else 0.0,
        model=description.model,
        dimension=description.dimension,
        requests=_requests(counters, in_process) if counters else None,
    )


def damaged_inputs(records: Sequence[CommitRecord]) -> tuple[DamagedInput, ...]:
    """The input files whose bytes could not all be read, each once (a large
    file is committed as several parts)."""
    by_input: dict[str, dict[str, int]] = {}
    for rec in records:
        for reason, count in rec.counts.dead_letters_by_reason.items():
            if reason in READ_ERRORS and count:
                reasons = by_input.setdefault(rec.input, {})
                reasons[reason] = reasons.get(reason, 0) + count
    return tuple(
        DamagedInput(path, sum(reasons.values()), dict(sorted(reasons.items())))
        for path, reasons in sorted(by_input.items())
    )


def _requests(counters: dict[str, int], in_process: bool) -> Requests:
    """The API calls, from Beam's counters; the quota's wait as wall time where
    the workers ran in this process (the counter sums it over threads)."""
    return Requests(
        requests=counters.get(c.REQUESTS, 0),
        retries=counters.get(c.RETRIES, 0),
        throttled_429=counters.get(c.THROTTLED_429, 0),
        retries_by_status=c.retries_by_status(counters),
        throttled_seconds=round(PROGRESS.read()[c.THROTTLED_WALL_MS] / 1000, 2) if in_process else 0.0,
        throttled_thread_seconds=round(counters.get(THROTTLING_COUNTER, 0) / 1000, 2),
    )
