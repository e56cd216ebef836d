"""Embed texts through Gemini batch jobs, from the driver, resumably: ``run_batch``.

Independent of Beam: the job hands it the texts still to embed, grouped by
shard, and gets back vectors and failures by key. Each call

1. reads the journal and never submits again what a recorded job holds: it
   collects finished jobs, waits for running ones, and adopts (by display
   name) a job whose creation a killed run did not get to record;
2. submits what remains as JSONL files, recording each job BEFORE it is
   created;
3. with ``wait``, polls with backoff until every key has a vector or a final
   failure; without, returns after one pass (cron runs it again later);
4. resubmits the keys of FAILED / EXPIRED / CANCELLED jobs (at most
   ``max_resubmits`` times) and the lines answered with a retryable error (at
   most ``max_line_retries`` later jobs); then they are failures carrying the
   service's message.

``cleanup_jobs`` deletes a job's files from the service once the caller has
committed every shard it holds.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from beamvec.batchapi.client import BatchClient
from beamvec.batchapi.journal import FAILED_STATES, BatchJob, BatchJournal
from beamvec.batchapi.jsonl import (
    MAX_FILE_BYTES,
    MAX_REQUESTS_PER_FILE,
    BatchRequest,
    BatchSpec,
    LineError,
    request_line,
    spooled_request_files,
)
from beamvec.batchapi.results import MemoryWriter, VectorWriter, read_results
from beamvec.errors import BackendError, SystemicError


@dataclass(frozen=True)
class BatchSettings:
    wait: bool = True
    poll_interval_s: float = 30.0
    max_poll_interval_s: float = 600.0
    max_resubmits: int = 2  # new jobs for the keys of a FAILED/EXPIRED/CANCELLED job
    max_line_retries: int = 2  # later jobs for a line answered with a retryable error
    max_requests_per_file: int = MAX_REQUESTS_PER_FILE
    max_file_bytes: int = MAX_FILE_BYTES
    max_wait_s: float | None = None  # stop waiting after this long (None: until done)


#: Where a finished job's vectors go: a writer per job (e.g. a checkpoint file).
VectorSink = Callable[[BatchJob], VectorWriter]


@dataclass(frozen=True)
class BatchProgress:
    jobs_by_state: Mapping[str, int]
    keys_total: int
    keys_done: int
    keys_failed: int


@dataclass(frozen=True)
class BatchOutcome:
    vectors: Mapping[str, np.ndarray]  # empty when a ``sink`` took them
    failures: Mapping[str, LineError]
    pending: frozenset[str]  # submitted, not finished yet (no-wait, or max_wait_s)
    jobs: tuple[BatchJob, ...]  # every journal job not cleaned yet, latest record
    jobs_by_state: Mapping[str, int]
    jobs_submitted: int  # created by this call
    texts_billed: int  # keys whose vector came from a batch result in this call
    lines_failed: int  # result lines answered with an error, over the jobs read

    @property
    def complete(self) -> bool:
        return not self.pending


class _Run:
    """The state of one ``run_batch`` call. A poll pass costs per job: keys are
    looked at only when their job is submitted or read."""

    def __init__(
        self,
        todo: Mapping[str, Sequence[BatchRequest]],
        client: BatchClient,
        journal: BatchJournal,
        spec: BatchSpec,
        settings: BatchSettings,
        sink: VectorSink | None = None,
    ) -> None:
        self.client, self.journal, self.spec, self.settings = client, journal, spec, settings
        self.memory = MemoryWriter()  # vectors kept only without a sink
        self.sink: VectorSink = sink or (lambda job: self.memory)
        self.requests: dict[str, BatchRequest] = {}
        self.shard: dict[str, str] = {}  # the first shard of each key
        self.more_shards: dict[str, set[str]] = {}  # others, for the few repeated texts
        for shard, requests in todo.items():
            for request in requests:
                first = self.shard.setdefault(request.key, shard)
                self.requests.setdefault(request.key, request)
                if first != shard:
                    self.more_shards.setdefault(request.key, set()).add(shard)
        self.jobs = {job.id: job for job in journal.pending()}
        self.keys: dict[str, tuple[str, ...]] = {}  # of the jobs holding a wanted key
        self.in_flight: Counter[str] = Counter()  # jobs holding a key, not read yet
        for job in list(self.jobs.values()):
            keys = journal.keys(job)
            if any(key in self.requests for key in keys):  # jobs of other texts: not ours
                self._hold(job, keys)
        self.candidates: list[str] = list(self.requests)  # keys to decide on next
        self.read: set[str] = set()
        self.done: set[str] = set()  # keys with a vector
        self.last_error: dict[str, LineError] = {}
        self.line_errors: Counter[str] = Counter()
        self.job_failures: Counter[str] = Counter()
        self.final: dict[str, LineError] = {}
        self.submitted = 0
        self.lines_failed = 0

    def _hold(self, job: BatchJob, keys: tuple[str, ...]) -> None:
        self.jobs[job.id], self.keys[job.id] = job, keys
        self.in_flight.update(keys)

    def _release(self, job: BatchJob) -> None:
        """The job is read: its keys are free to decide on again."""
        self.read.add(job.id)
        keys = self.keys[job.id]
        self.in_flight.subtract(keys)
        self.candidates.extend(k for k in keys if k in self.requests and k not in self.done)

    def _save(self, job: BatchJob, **changes: object) -> BatchJob:
        job = dataclasses.replace(job, **changes)  # type: ignore[arg-type]
        self.journal.save(job)
        self.jobs[job.id] = job
        return job

    # -- one pass ------------------------------------------------------------

    def refresh(self) -> None:
        """Ask the service about every unfinished job that holds a wanted key."""
        for job in [self.jobs[job_id] for job_id in self.keys]:
            if job.terminal:
                continue
            try:
                self._refresh(job)
            except BackendError as exc:
                if not exc.retryable:
                    raise
                # the service is busy or unreachable after retries: look again next pass

    def _refresh(self, job: BatchJob) -> None:
        if job.state == "CREATING":
            self._resume(job)
        else:
            status = self.client.get(job.name)  # type: ignore[arg-type]
            if status.state == "MISSING":
                self._save(job, state="FAILED", error=status.error)
            elif status.state != job.state or status.result_file != job.result_file:
                self._save(
                    job, state=status.state, result_file=status.result_file, error=status.error
                )

    def collect(self) -> None:
        """Read every finished job once: vectors, line errors, failed jobs."""
        for job in [self.jobs[job_id] for job_id in self.keys]:
            if job.terminal and job.id not in self.read:
                self._collect(job)

    def _collect(self, job: BatchJob) -> None:
        keys = [k for k in self.keys[job.id] if k in self.requests]
        if job.state in FAILED_STATES or not job.result_file:
            reason = f"batch job {job.name} {job.state}: {job.error or 'no message'}"
            self._job_failed(job, keys, reason)
            return
        try:
            stream = self.client.download(job.result_file)
        except BackendError as exc:
            if not exc.retryable:  # gone (48 h) or refused: these keys go again
                self._job_failed(job, keys, f"result file unreadable: {exc}")
            return  # busy: download it next pass, never resubmit for this
        with stream:  # stored before the job counts as read
            results = read_results(stream, set(keys), self.spec, self.sink(job), self.done)
        for key, error in results.errors.items():
            self.lines_failed += 1
            self.line_errors[key] += 1
            self.last_error[key] = error
        self.done.update(results.good)
        self._release(job)

    def _job_failed(self, job: BatchJob, keys: Sequence[str], reason: str) -> None:
        for key in keys:
            self.job_failures[key] += 1
            self.last_error[key] = LineError(key, reason)
        self._release(job)

    def decide(self) -> list[str]:
        """Keys to submit now, from the keys freed since the last pass; keys
        out of tries become final failures."""
        out = []
        candidates, self.candidates = self.candidates, []
        for key in dict.fromkeys(candidates):
            if key in self.done or key in self.final or self.in_flight[key] > 0:
                continue
            error = self.last_error.get(key)
            if error is not None and (
                not error.retryable
                or self.line_errors[key] > self.settings.max_line_retries
                or self.job_failures[key] > self.settings.max_resubmits
            ):
                self.final[key] = error
                continue
            out.append(key)
        return out

    def submit(self, keys: list[str]) -> None:
        """Record, upload and create one job per input file; keys not submitted
        (the service is at its job cap) are decided on again next pass."""
        files = spooled_request_files(
            (self.requests[k] for k in keys),
            self.spec,
            self.settings.max_requests_per_file,
            self.settings.max_file_bytes,
        )
        submitted: set[str] = set()
        for file_keys, spool in files:
            tries = max(self.line_errors[k] + self.job_failures[k] for k in file_keys)
            job = self.journal.new_job(file_keys, self._shards_of(file_keys), attempt=1 + tries)
            self._hold(job, file_keys)
            submitted.update(file_keys)
            job = self._save(job, input_file=self.client.upload(spool, job.display_name))
            if not self._create(job):
                files.close()  # the service is at its job cap: the rest waits for a later pass
                self.candidates.extend(k for k in keys if k not in submitted)
                return

    def _shards_of(self, keys: Sequence[str]) -> list[str]:
        shards = {self.shard[k] for k in keys}
        for key in keys:
            shards.update(self.more_shards.get(key, ()))
        return sorted(shards)

    def _create(self, job: BatchJob) -> bool:
        try:
            status = self.client.create(job.input_file, job.display_name)  # type: ignore[arg-type]
        except BackendError as exc:
            if exc.retryable:
                return False
            raise SystemicError(f"gemini batch: cannot create a batch job: {exc}") from None
        self._save(job, name=status.name, state=status.state, result_file=status.result_file)
        self.submitted += 1
        return True

    def _resume(self, job: BatchJob) -> None:
        """A job recorded but not known to be created: adopt it, or create it now."""
        found = self.client.find_job(job.display_name)
        if found is not None:
            self._save(job, name=found.name, state=found.state, result_file=found.result_file)
            return
        keys = self.keys[job.id]
        if any(key not in self.requests for key in keys):  # its texts are no longer wanted
            if job.input_file:
                self.client.delete_file(job.input_file)
            self._save(job, state="CANCELLED", cleaned=True)
            return
        if not job.input_file or not self.client.file_exists(job.input_file):
            existing = self.client.find_file(job.display_name)
            if existing is None:
                lines = (request_line(self.requests[k], self.spec) + "\n" for k in keys)
                data = "".join(lines).encode("utf-8", "surrogatepass")
                existing = self.client.upload(data, job.display_name)
            job = self._save(job, input_file=existing)
        self._create(job)

    # -- reporting -----------------------------------------------------------

    def by_state(self) -> dict[str, int]:
        return dict(Counter(job.state for job in self.jobs.values() if not job.cleaned))

    def remaining(self) -> int:
        return len(self.requests) - len(self.done) - len(self.final)

    def pending(self) -> frozenset[str]:
        return frozenset(k for k in self.requests if k not in self.done and k not in self.final)

    def progress(self) -> BatchProgress:
        return BatchProgress(
            self.by_state(), len(self.requests), len(self.done), len(self.final)
        )

    def outcome(self) -> BatchOutcome:
        return BatchOutcome(
            vectors=dict(self.memory.vectors),
            failures={
                k: dataclasses.replace(e, message=_tried(e, self, k)) for k, e in self.final.items()
            },
            pending=self.pending(),
            jobs=tuple(j for j in self.jobs.values() if not j.cleaned),
            jobs_by_state=self.by_state(),
            jobs_submitted=self.submitted,
            texts_billed=len(self.done),
            lines_failed=self.lines_failed,
        )


def _tried(error: LineError, run: _Run, key: str) -> str:
    tries = run.line_errors[key] + run.job_failures[key]
    return f"{error.message} (after {tries} batch attempt{'s' if tries != 1 else ''})"


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
) -> BatchOutcome:
    """Vectors and failures by key for ``todo`` (shard name -> requests), through
    batch jobs recorded in ``journal``; see the module docstring. With ``sink``,
    each finished job's vectors go to a writer of its own as the job's result
    file is streamed (and are not kept: memory stays bounded by one chunk)."""
    settings = settings or BatchSettings()
    run = _Run(todo, client, journal, spec, settings, sink)
    interval = settings.poll_interval_s
    deadline = None if settings.max_wait_s is None else clock() + settings.max_wait_s
    while True:
        before = (len(run.done), len(run.final), len(run.read))
        run.refresh()
        run.collect()
        keys = run.decide()
        if keys:
            run.submit(keys)
        if progress is not None:
            progress(run.progress())
        if not run.remaining() or not settings.wait:
            break
        if deadline is not None and clock() >= deadline:
            break
        if (len(run.done), len(run.final), len(run.read)) != before:
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
        client.cleanup(job)
        journal.mark_cleaned(job)
        done += 1
    return done
