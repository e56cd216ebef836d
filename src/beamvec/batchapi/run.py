"""Embed texts through Gemini batch jobs, resumably: ``run_batch_staged`` for
request files the pipeline's workers wrote (``beamvec run --batch-api``), or
``run_batch`` / ``run_batch_stream`` for texts handed over as a stream.

Independent of Beam: per job it keeps only the journal's small record, and
finished jobs are read by a ``JobReader`` (on the pipeline's workers in a
run: pipeline/batch_stage.py) that hands back a small report. Each call

1. reads the journal's job records (a stream also reads the keys of the jobs
   not yet cleaned: the texts they hold are never submitted again);
2. records each request file (keys and request file in the journal) BEFORE it
   is uploaded and created; while the service holds ``max_concurrent_jobs``
   jobs (or answers 429), files wait in the journal (``WAITING``) and are
   created from there in a later pass;
3. polls the jobs; a finished job's result file streams into its checkpoint
   and the job is settled from its report: lines answered with a retryable error go in a retry job
   built from the job's own request file (at most ``max_line_retries`` times),
   a FAILED / EXPIRED / CANCELLED job's whole file is resubmitted (at most
   ``max_resubmits`` times), and the rest fail for good with the service's
   message (``<id>.failed``). Tries are counted per job: a retry job carries
   its parent's counts;
4. with ``wait``, polls with backoff until every job is settled; without,
   returns after one pass (cron runs it again later).

A poll pass costs per job, never per text. A settled job's files are deleted
from the service at once (the project's 20 GB are shared by the jobs waiting);
``cleanup_jobs`` forgets a job (and deletes what is left of it on the
service) once the caller has committed every shard it holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from beamvec.batchapi.client import BatchClient
from beamvec.batchapi.jobs import BatchRun
from beamvec.batchapi.journal import BatchJob, BatchJournal, StagedFile
from beamvec.batchapi.jsonl import BatchRequest, BatchSpec
from beamvec.batchapi.outcome import BatchOutcome as BatchOutcome
from beamvec.batchapi.outcome import BatchProgress as BatchProgress
from beamvec.batchapi.outcome import BatchSettings as BatchSettings
from beamvec.batchapi.outcome import JobReader as JobReader
from beamvec.batchapi.outcome import PendingKeys as PendingKeys
from beamvec.batchapi.results import VectorSink


def run_batch(
    todo: Mapping[str, Sequence[BatchRequest]],
    client: BatchClient,
    journal: BatchJournal,
    spec: BatchSpec,
    settings: BatchSettings | None = None,
    progress: Callable[[BatchProgress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    sink: VectorSink | None = None,
    reader: JobReader | None = None,
) -> BatchOutcome:
    """Vectors and failures by key for ``todo`` (shard name -> requests):
    ``run_batch_stream`` over its requests in shard order."""
    stream = ((shard, request) for shard, requests in todo.items() for request in requests)
    return run_batch_stream(stream, client, journal, spec, settings, progress, sleep, clock, sink, reader)


def run_batch_stream(
    requests: Iterable[tuple[str, BatchRequest]],
    client: BatchClient,
    journal: BatchJournal,
    spec: BatchSpec,
    settings: BatchSettings | None = None,
    progress: Callable[[BatchProgress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    sink: VectorSink | None = None,
    reader: JobReader | None = None,
) -> BatchOutcome:
    """Embed ``requests`` ((shard, request) pairs, read once) through batch
    jobs recorded in ``journal``; see the module docstring. With ``sink``,
    each finished job's vectors go to a writer of its own as the job's result
    file is streamed (and are not kept: memory stays bounded by one chunk).
    A stream without a text returns at once: nothing of this call is pending."""
    settings = settings or BatchSettings()
    run = BatchRun(client, journal, spec, settings, sink, reader)
    run.route(requests)
    return _drive(run, progress, sleep, clock)


def run_batch_staged(
    files: Iterable[StagedFile],
    texts: int,
    client: BatchClient,
    journal: BatchJournal,
    spec: BatchSpec,
    settings: BatchSettings | None = None,
    progress: Callable[[BatchProgress], None] | None = None,
    reader: JobReader | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> BatchOutcome:
    """As ``run_batch_stream``, for request files the pipeline's workers wrote
    (``texts``: the distinct texts the run needs from batch jobs, those the
    journal's jobs hold included): each is recorded, then submitted while the
    service has room; jobs are polled and settled from their reports."""
    settings = settings or BatchSettings()
    run = BatchRun(client, journal, spec, settings, reader=reader)
    run.record_staged(files)
    run.texts = texts
    return _drive(run, progress, sleep, clock)


def _drive(
    run: BatchRun, progress: Callable[[BatchProgress], None] | None, sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> BatchOutcome:
    """Poll, collect and settle, with backoff, until every job is settled
    (or once, without ``wait``; or until ``max_wait_s``)."""
    if not run.texts:
        return run.outcome()
    settings = run.settings
    interval = settings.poll_interval_s
    deadline = None if settings.max_wait_s is None else clock() + settings.max_wait_s
    while True:
        before = len(run.unsettled()), run.billed
        run.refresh()
        run.collect()
        if progress is not None:
            progress(run.progress())
        if not run.unsettled() or not settings.wait:
            break
        if deadline is not None and clock() >= deadline:
            break
        if (len(run.unsettled()), run.billed) != before:
            interval = settings.poll_interval_s  # things move: look again soon
        sleep(interval)
        interval = min(interval * 1.5, settings.max_poll_interval_s)
    return run.outcome()


def cleanup_jobs(
    jobs: Iterable[BatchJob],
    client: BatchClient,
    journal: BatchJournal,
    committed_shards: Iterable[str],
) -> int:
    """Delete from the service the files and jobs of finished jobs whose shards are
    all committed, and mark them cleaned in the journal. Returns how many."""
    committed = set(committed_shards)
    live = {job.id for job in journal.pending()}  # ``jobs`` may be an older snapshot
    done = 0
    for job in jobs:
        if job.id not in live or not job.terminal:
            continue
        if not set(job.shards) <= committed:
            continue
        if not job.files_deleted:  # deleted already once it was read and settled
            client.cleanup(job)
        journal.mark_cleaned(job)
        done += 1
    return done
