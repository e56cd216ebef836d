"""`beamvec run --batch-api`: the texts a run needs, embedded through Gemini Batch
API jobs before the normal pipeline runs. The per-record work runs on the
pipeline's workers; the driver holds job names and states.

1. Request stage (pipeline/batch_requests.py, a pipeline of its own): workers
   read and route the splits exactly as the embedding workers will (the
   output's, --reuse-from's and earlier batch jobs' vectors, refusals), keep
   one of each text across splits through the runner, and write request
   files with their key lists to ``_batch/staging/<run id>/``.
2. ``batch_run.run_batch_staged`` moves each file into the journal BEFORE it
   is uploaded and created (a killed run's rerun collects, never resubmits),
   keeps at most ~100 jobs on the service, and polls per job.
3. Results stage (pipeline/batch_stage.py): each pass, the jobs that
   finished are read by workers, each result file streamed into the
   checkpoint ``_partial/<fingerprint>/batch-<job id>.parquet``; the driver
   settles each job from its small report (retry jobs, resubmissions, final
   failures).
4. When every text is resolved, the ordinary pipeline runs: each record finds
   its vector in the checkpoints (counted as ``batch_sent``), nothing is sent
   online except, with ``--batch-fallback online``, the texts the batch
   service kept failing; with ``none`` those are dead letters
   (``routing.Refusals``). With ``--no-wait`` and jobs still running, the run
   prints one status line and stops before the pipeline.
5. Once the pipeline has committed, ``finish_batch_phase`` deletes the jobs'
   files from the service (they count against the project's 20 GB).

``requests_to_send`` routes on the driver, one shard at a time: what the
request stage computes, for ``plan``-like callers and tests.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import apache_beam as beam

from beamvec.batchapi.checkpoint import CheckpointSink as CheckpointSink
from beamvec.batchapi.client import BatchClient
from beamvec.batchapi.journal import BatchJob, BatchJournal, StagedFile
from beamvec.batchapi.jsonl import MAX_FILE_BYTES, BatchRequest, BatchSpec, LineError
from beamvec.batchapi.keys import KeySet
from beamvec.batchapi.results import JobReport
from beamvec.batchapi.run import (
    BatchOutcome,
    BatchProgress,
    BatchSettings,
    cleanup_jobs,
    run_batch_staged,
)
from beamvec.contract import SUCCESS, OutputState, complete_shards, read_state
from beamvec.driver.resolve import JobInputs, planning_router, reuse_lookup, routed, split_bytes
from beamvec.errors import BackendError, UsageError
from beamvec.pipeline.batch_requests import RequestPlan, WriteRequests, bucket_count, read_listings
from beamvec.pipeline.batch_stage import STAGING_DIR, BatchTarget, collect_on_workers, run_stage
from beamvec.pipeline.worker import WorkerConfig
from beamvec.records import BAD_REQUEST, EMBED_FAILED, Shard
from beamvec.route.lookup import build_batch_index
from beamvec.route.router import Lookup, NoLookup, Refusals, RunMemory, Send
from beamvec.write.sink import Output

LOG = logging.getLogger("beamvec")
#: What Google states for Batch mode: a target turnaround, not a promise.
TURNAROUND = "up to 24 h (Google's target; most jobs finish much sooner)"


def check_batch_flags(bv: Any) -> None:
    """One line for flags that cannot work together, before anything is read."""
    if bv.batch_api and bv.backend != "gemini":
        raise UsageError(
            f"--batch-api works with --backend gemini only (got --backend {bv.backend}); "
            "Vertex batch prediction is not supported yet: drop --batch-api"
        )
    if not bv.batch_api and bv.no_wait:
        raise UsageError("--no-wait applies to --batch-api runs: add --batch-api or drop --no-wait")
    if bv.batch_api and (
        bv.batch_poll_interval <= 0 or bv.batch_max_resubmits < 0 or bv.batch_max_requests_per_file < 1
    ):
        raise UsageError(
            "--batch-poll-interval must be > 0, --batch-max-resubmits >= 0 and "
            "--batch-max-requests-per-file >= 1"
        )


@dataclass(frozen=True)
class BatchPhase:
    """What the batch jobs left for the pipeline, or why it must wait."""

    ready: bool  # every text has a vector or a final failure: run the pipeline
    refusals: Refusals  # texts to dead-letter (--batch-fallback none)
    texts: int  # distinct texts this run embeds through batch jobs
    collected: int  # of them, with a vector
    failed: int  # of them, failed for good
    jobs_by_state: Mapping[str, int]
    jobs_submitted: int
    online_fallback: int  # failed texts the pipeline sends online (--batch-fallback online)
    status: str  # one line: jobs by state, texts collected and pending


# -- 1. what to send ------------------------------------------------------------


def requests_to_send(
    output: Output, inputs: JobInputs, todo: list[Shard], reuse: bool, quiet: bool = True,
    state: OutputState | None = None, refusals: Refusals | None = None,
) -> Iterator[tuple[str, BatchRequest]]:
    """(shard name, text) for each text the shards would send, routed as the
    workers route them, one shard at a time as they are read.

    A text already embedded (the output, --reuse-from, earlier batch jobs'
    checkpoints) is not listed; a repeat is not listed again (``KeySet``: 8
    bytes a text). No vector is read. The router's own memory only needs to
    be small here: it decides nothing that the key set does not."""
    fingerprint = inputs.description.config_fingerprint
    dimension = inputs.backend.limits.dimension
    lookup: Lookup = reuse_lookup(inputs, output, state) if reuse else NoLookup()
    batch = build_batch_index(output, fingerprint, dimension)
    memory = RunMemory(dimension, budget_bytes=0)  # its floor: 1,000 recent texts
    listed = KeySet()
    for i, shard in enumerate(todo, start=1):
        if not quiet:
            print(f"beamvec batch: reading shard {i}/{len(todo)} {shard.name}", file=sys.stderr)
        router = planning_router(inputs, lookup, memory, batch, refusals)
        for d in routed(router, shard, inputs):
            if isinstance(d, Send) and listed.add(d.record.content_hash):
                yield shard.name, BatchRequest(d.record.content_hash, d.record.text, d.record.title)


def collect_requests(
    output: Output, inputs: JobInputs, todo: list[Shard], reuse: bool, quiet: bool = True,
    state: OutputState | None = None, refusals: Refusals | None = None,
) -> dict[str, list[BatchRequest]]:
    """``requests_to_send`` held as shard name -> texts (``plan`` and tests)."""
    out: dict[str, list[BatchRequest]] = {shard.name: [] for shard in todo}
    for name, request in requests_to_send(output, inputs, todo, reuse, quiet, state, refusals):
        out[name].append(request)
    return out


# -- 2. the jobs ----------------------------------------------------------------


def batch_settings(bv: Any) -> BatchSettings:
    return BatchSettings(
        wait=not bv.no_wait,
        poll_interval_s=bv.batch_poll_interval,
        max_poll_interval_s=max(bv.batch_poll_interval, 600.0),
        max_resubmits=bv.batch_max_resubmits,
        max_requests_per_file=bv.batch_max_requests_per_file,
    )


def batch_spec(inputs: JobInputs) -> BatchSpec:
    backend = inputs.backend
    return BatchSpec(
        model=backend.model,
        task_type=backend.task_type,
        output_dimensionality=getattr(backend, "output_dimensionality", None),
    )


def batch_target(inputs: JobInputs, output: Output) -> BatchTarget:
    """What the workers of the Batch API's stages need to know; no secret."""
    bv = inputs.bv
    return BatchTarget(
        bv.output, batch_spec(inputs), inputs.description.config_fingerprint,
        inputs.backend.limits.dimension, output.run_id or secrets.token_hex(6),
        base_url=bv.api_base_url, api_version=bv.api_version, timeout_s=bv.request_timeout,
        storage_options=inputs.storage_options,
    )  # fmt: skip


def connect(inputs: JobInputs) -> BatchClient:
    """A Batch API client with the run's key, endpoint and timeout."""
    bv, backend = inputs.bv, inputs.backend
    return BatchClient.connect(
        backend.read_api_key(),  # type: ignore[attr-defined] - GenaiBackend (gemini) only
        batch_spec(inputs).model,
        base_url=bv.api_base_url,
        api_version=bv.api_version,
        timeout_s=bv.request_timeout,
    )


def format_progress(p: BatchProgress) -> str:
    states = ", ".join(f"{n} {s}" for s, n in sorted(p.jobs_by_state.items())) or "none"
    return (
        f"beamvec batch: jobs {states}; texts {p.keys_done:,}/{p.keys_total:,} collected, "
        f"{p.keys_failed:,} failed"
    )


def refusals_of(failures: Mapping[str, LineError]) -> Refusals:
    """Dead letters for texts the batch service kept failing (--batch-fallback none)."""
    return Refusals({
        key: (EMBED_FAILED if error.retryable else BAD_REQUEST, f"batch: {error.message}")
        for key, error in failures.items()
    })


def stage_config(inputs: JobInputs, output: Output, refusals: Refusals | None) -> WorkerConfig:
    """What the request stage's workers route with: as the embedding workers."""
    bv = inputs.bv
    return WorkerConfig(
        output=bv.output, reader=inputs.reader, prepare=inputs.prepare,
        description=inputs.description, storage_options=inputs.storage_options,
        reuse=not bv.force, reuse_from=tuple(bv.reuse_from or ()),
        refusals=refusals or Refusals(), run_id=output.run_id,
    )  # fmt: skip


def write_requests(
    output: Output, inputs: JobInputs, todo: list[Shard], target: BatchTarget,
    refusals: Refusals | None = None,
) -> tuple[list[StagedFile], int]:
    """Run the request stage (pipeline/batch_requests.py) over ``todo``: the
    request files the workers wrote, and the distinct texts the run needs
    from batch jobs (those the journal's jobs hold included)."""
    bv = inputs.bv
    plan = RequestPlan(
        target.staging(), target.spec, bucket_count(sum(max(0, s.size) for s in todo)),
        bv.batch_max_requests_per_file, MAX_FILE_BYTES, inputs.storage_options,
    )  # fmt: skip
    output.remove_tree(output.path(STAGING_DIR))  # what killed runs left (one writer at a time: the lease)
    shards = target.staging("shards.jsonl")
    output.write_bytes(shards, "".join(json.dumps({"todo": asdict(s)}) + "\n" for s in todo).encode())
    pipeline = beam.Pipeline(options=inputs.options)
    _ = pipeline | "BatchRequests" >> WriteRequests(
        shards, inputs.backend, stage_config(inputs, output, refusals), plan,
        split_bytes(bv, inputs.backend.name),
    )  # fmt: skip
    run_stage(pipeline, target)
    return read_listings(plan, output)


def run_batch_phase(
    output: Output, inputs: JobInputs, todo: list[Shard], out: TextIO | None = None,
    client: BatchClient | None = None, state: OutputState | None = None,
    refusals: Refusals | None = None,
) -> BatchPhase:
    """Embed the run's texts through batch jobs; see the module docstring.
    ``refusals``: texts `--retry-dead-letters` keeps refused, never sent."""
    bv = inputs.bv
    out = out or sys.stdout
    live = not bv.quiet
    # The output is about to change: not complete again until this run commits.
    output.remove(output.path(SUCCESS))
    target = batch_target(inputs, output)
    try:
        files, texts = write_requests(output, inputs, todo, target, refusals)
        if not texts:  # everything is embedded already (a rerun after the jobs were collected)
            return _phase(None, Refusals(), 0, bv.batch_fallback)
        journal = BatchJournal(bv.output, inputs.storage_options)
        client = client or connect(inputs)

        def read_on_workers(jobs: Sequence[BatchJob]) -> Mapping[str, JobReport]:
            return collect_on_workers(jobs, inputs.backend, target, inputs.options)

        def report(p: BatchProgress) -> None:
            if live:
                print(format_progress(p), file=sys.stderr, flush=True)

        outcome = run_batch_staged(
            files, texts, client, journal, batch_spec(inputs), batch_settings(bv), report,
            reader=read_on_workers,
        )  # fmt: skip
    finally:
        output.remove_tree(target.staging())
    fallback_online = bv.batch_fallback == "online"
    refusals = Refusals() if fallback_online else refusals_of(outcome.failures)
    phase = _phase(outcome, refusals, texts, bv.batch_fallback)
    if not phase.ready:
        print(phase.status, file=out)
    elif live:
        print(phase.status, file=sys.stderr)
    return phase


def _phase(
    outcome: BatchOutcome | None, refusals: Refusals, texts: int, fallback: str
) -> BatchPhase:
    if outcome is None:
        return BatchPhase(True, refusals, 0, 0, 0, {}, 0, 0, "beamvec batch: nothing to send")
    collected = max(0, texts - len(outcome.pending) - len(outcome.failures))  # jobs of other texts
    states = ", ".join(f"{n} {s}" for s, n in sorted(outcome.jobs_by_state.items())) or "none"
    status = (
        f"beamvec batch: jobs {states}; {collected:,} of {texts:,} texts collected, "
        f"{len(outcome.pending):,} pending, {len(outcome.failures):,} failed"
    )
    if not outcome.complete:
        status += "; rerun the same command to collect (nothing committed, no _SUCCESS yet)"
    online = len(outcome.failures) if fallback == "online" else 0
    return BatchPhase(
        outcome.complete, refusals, texts, collected, len(outcome.failures),
        dict(outcome.jobs_by_state), outcome.jobs_submitted, online, status,
    )


# -- 4. after the commit ----------------------------------------------------------


def finish_batch_phase(output: Output, inputs: JobInputs, client: BatchClient | None = None) -> int:
    """Delete from the service the files of every finished job whose shards are
    all committed (files count against the project's 20 GB); how many jobs.
    A service that does not answer now only delays this to the next run."""
    journal = BatchJournal(inputs.bv.output, inputs.storage_options)
    jobs = journal.pending()
    if not jobs:
        return 0
    state = read_state(output)
    fingerprint = inputs.description.config_fingerprint
    committed = complete_shards(
        r for r in state.committed.values() if (r.config_fingerprint or fingerprint) == fingerprint
    )
    try:
        return cleanup_jobs(jobs, client or connect(inputs), journal, committed)
    except BackendError as exc:
        LOG.warning("beamvec batch: could not delete the jobs' files from the service (%s); "
                    "the next run with --batch-api deletes them", exc)
        return 0
