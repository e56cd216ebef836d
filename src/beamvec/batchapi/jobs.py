"""The state of one Batch API run (``run.py`` drives it): job records,
submission within the service's limits (about 100 jobs, 20 GB of files a
project, each file kept 48 hours), polling, and settling each finished job
from its report (retry jobs for retryable lines, resubmissions for failed
jobs, final failures recorded in the journal); a settled job's files are
deleted from the service at once, to make room for the files waiting."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import IO

from beamvec.backends.google_errors import names_file
from beamvec.batchapi.client import BatchClient
from beamvec.batchapi.journal import (
    FAILED_STATES,
    TERMINAL_STATES,
    WAITING,
    BatchJob,
    BatchJournal,
    StagedFile,
)
from beamvec.batchapi.jsonl import BatchRequest, BatchSpec, LineError, request_line
from beamvec.batchapi.keys import KeySet
from beamvec.batchapi.outcome import (
    BatchOutcome,
    BatchProgress,
    BatchSettings,
    JobReader,
    PendingKeys,
)
from beamvec.batchapi.results import (
    BUSY,
    GONE,
    JobReport,
    MemoryWriter,
    VectorSink,
    collect_job,
)
from beamvec.batchapi.room import needed_bytes, service_bytes
from beamvec.batchapi.spool import Spool, line_key
from beamvec.errors import BackendError, SystemicError


class BatchRun:
    """The state of one run: the journal's job records (and, for a stream, a
    key set of its texts), counts, and how many jobs are live on the service."""

    def __init__(
        self,
        client: BatchClient,
        journal: BatchJournal,
        spec: BatchSpec,
        settings: BatchSettings,
        sink: VectorSink | None = None,
        reader: JobReader | None = None,
    ) -> None:
        self.client, self.journal, self.spec, self.settings = client, journal, spec, settings
        self.memory = MemoryWriter()  # vectors kept only without a sink
        self.sink: VectorSink = sink or (lambda job: self.memory)
        self.reader: JobReader = reader or self.local_reader
        self.jobs = {job.id: job for job in journal.pending()}
        self.seen = KeySet()  # keys of this call's stream
        self.texts = 0
        self.at_cap = False  # the service refused a job this pass: create the rest later
        self.live = self._count_live()  # jobs created and not finished: at most max_concurrent_jobs
        self.submitted = 0
        self.billed = 0
        self.lines_failed = 0

    def _save(self, job: BatchJob, **changes: object) -> BatchJob:
        job = dataclasses.replace(job, **changes)  # type: ignore[arg-type]
        self.journal.save(job)
        self.jobs[job.id] = job
        return job

    def _count_live(self) -> int:
        return sum(1 for j in self.jobs.values() if j.name and not j.cleaned and not j.terminal)

    def _room(self, job: BatchJob) -> bool:
        """Whether ``job`` may be created now: the service's job cap (~100), and
        the project's file storage (``max_service_bytes``; when nothing is
        held, any one file goes)."""
        if self.at_cap or self.live >= self.settings.max_concurrent_jobs:
            return False
        held = service_bytes(self.jobs.values(), self.spec.dimension)
        need = needed_bytes(job.size, job.count, self.spec.dimension)
        return held == 0 or held + need <= self.settings.max_service_bytes

    def _stale(self, job: BatchJob, stamp: str | None = None) -> bool:
        """Whether the job's input file (uploaded at ``stamp``) may be gone by the
        time the job runs: Google deletes a file 48 h after upload."""
        stamp = stamp or job.uploaded_at or job.created_at  # uploaded after it was recorded
        return self.journal.age_s(stamp) > self.settings.file_lifetime_s

    def held(self) -> KeySet:
        """The keys of the journal's jobs not cleaned: never submitted again."""
        held = KeySet()
        for job in self.jobs.values():
            for key in self.journal.keys(job):
                held.add(key)
        return held

    def unsettled(self) -> list[BatchJob]:
        return sorted(
            (j for j in self.jobs.values() if not j.cleaned and not j.collected), key=lambda j: j.id
        )

    # -- submitting ------------------------------------------------------------

    def route(self, requests: Iterable[tuple[str, BatchRequest]]) -> None:
        """Write the stream's new texts into request files and submit each
        file as it fills: nothing is kept per text but its 8-byte key."""
        spool: Spool | None = None
        held = self.held()
        try:
            for shard, request in requests:
                if not self.seen.add(request.key):
                    continue
                self.texts += 1
                if request.key in held:
                    continue
                line = (request_line(request, self.spec) + "\n").encode("utf-8", "surrogatepass")
                if spool is not None and not spool.fits(line, self.settings):
                    self._submit(spool, spool.shards)
                    spool.file.close()
                    spool = None
                spool = spool or Spool()
                spool.add(request.key, line, shard)
                if len(spool.keys) >= self.settings.max_requests_per_file:  # full: out it goes
                    self._submit(spool, spool.shards)
                    spool.file.close()
                    spool = None
            if spool is not None:
                self._submit(spool, spool.shards)
        finally:
            if spool is not None:
                spool.file.close()

    def _submit(self, spool: Spool, shards: Iterable[str], parent: BatchJob | None = None,
                resubmit: bool = False) -> None:  # fmt: skip
        """Record the file (journal first), then upload it and create its job;
        while the service is at its job cap, the file waits in the journal."""
        spool.file.seek(0)
        lineage: dict[str, object] = {}
        attempt = 1
        if parent is not None:
            attempt = parent.attempt + 1
            lineage = {
                "parent": parent.id,
                "resubmits": parent.resubmits + resubmit,
                "line_retries": parent.line_retries + (not resubmit),
            }
        job = self.journal.new_job(spool.keys, sorted(shards), attempt, spool.file, **lineage)
        self.jobs[job.id] = job
        if not self._room(job):
            self._save(job, state=WAITING)
            return
        stamp = self.journal.now()
        job = self._save(job, input_file=self.client.upload(spool.file, job.display_name), uploaded_at=stamp)
        self._create(job)

    def record_staged(self, files: Iterable[StagedFile]) -> None:
        """Record each request file the workers wrote (journal first), then
        upload and create its job while the service has room; the rest wait
        in the journal (``WAITING``), in order, for a later pass."""
        waiting = False
        for staged in files:
            job = self.journal.record_staged(staged, WAITING)
            self.jobs[job.id] = job
            waiting = waiting or not self._room(job)
            if not waiting:
                self._start(job)

    def _start(self, job: BatchJob) -> None:
        """Upload a recorded job's request file from the journal and create it."""
        job = self._save(job, state="CREATING")  # from here a rerun looks for it on the service
        uploaded = self._upload(job)
        if uploaded is not None:
            self._create(uploaded)

    def _start_waiting(self) -> None:
        """Create waiting jobs, oldest first, while the service has room."""
        for job in self.unsettled():
            if job.state != WAITING:
                continue
            if not self._room(job):
                return
            try:
                self._start(job)
            except BackendError as exc:
                if not exc.retryable:
                    raise

    def _upload(self, job: BatchJob) -> BatchJob | None:
        """Upload a recorded job's request file from the journal; None when it
        is not there (removed by hand: its texts are no longer held, the
        pipeline sends them)."""
        source = self.journal.open_requests(job)
        if source is None:
            self._save(job, state="CANCELLED", cleaned=True)
            return None
        stamp = self.journal.now()  # before the upload: its age is never underestimated
        with source, tempfile.TemporaryFile(prefix="beamvec-requests-") as spool:
            shutil.copyfileobj(source, spool, 1 << 20)
            name = self.client.upload(spool, job.display_name)
        return self._save(job, input_file=name, uploaded_at=stamp)

    def _create(self, job: BatchJob, again: bool = True) -> bool:
        """Create the job from its input file; a file the service no longer has
        (deleted 48 h after upload: a 403 or 404 that names it) is uploaded
        again, once."""
        try:
            status = self.client.create(job.input_file, job.display_name)  # type: ignore[arg-type]
        except BackendError as exc:
            if exc.retryable:
                self.at_cap = True
                return False
            if again and names_file(exc, job.input_file):
                uploaded = self._upload(job)
                return uploaded is not None and self._create(uploaded, again=False)
            raise SystemicError(f"gemini batch: cannot create a batch job: {exc}") from None
        self._save(job, name=status.name, state=status.state, result_file=status.result_file)
        self.submitted += 1
        self.live += 1
        return True

    def _resume(self, job: BatchJob) -> None:
        """A job recorded but not known to be created: adopt it, or create it
        from its input file (uploaded again when it is near its 48 h, or gone)
        or its request file; without either, drop it (its texts are no longer
        held and the pipeline sends them online)."""
        found = self.client.find_job(job.display_name)
        if found is not None:
            self._save(job, name=found.name, state=found.state, result_file=found.result_file)
            self.live += found.state not in TERMINAL_STATES
            return
        if job.input_file and self._stale(job):
            self.client.delete_file(job.input_file)  # gone already, or about to be
            job = self._save(job, input_file=None, uploaded_at=None)
        if not job.input_file:
            # a killed run's upload, made after the record: no older than the record
            existing = None if self._stale(job, job.created_at) else self.client.find_file(job.display_name)
            if existing is not None:
                job = self._save(job, input_file=existing, uploaded_at=job.created_at)
            else:
                uploaded = self._upload(job)
                if uploaded is None:
                    return
                job = uploaded
        self._create(job)

    # -- one pass ------------------------------------------------------------

    def refresh(self) -> None:
        """Ask the service about every job not settled: one call a job; then
        create waiting jobs while there is room."""
        self.at_cap = False
        for job in self.unsettled():
            if job.terminal or job.state == WAITING or (job.state == "CREATING" and self.at_cap):
                continue
            try:
                if job.state == "CREATING":
                    self._resume(job)
                else:
                    self._poll(job)
            except BackendError as exc:
                if not exc.retryable:
                    raise
                # the service is busy or unreachable after retries: look again next pass
        self.live = self._count_live()
        for job in list(self.jobs.values()):
            if job.collected and not job.cleaned and not job.files_deleted:
                self._release(job)  # settled by an earlier run that did not delete its files
        self._start_waiting()

    def _poll(self, job: BatchJob) -> None:
        status = self.client.get(job.name)  # type: ignore[arg-type]
        if status.state == "MISSING":
            self._save(job, state="FAILED", error=status.error)
        elif status.state != job.state or status.result_file != job.result_file:
            self._save(job, state=status.state, result_file=status.result_file, error=status.error)

    def collect(self) -> None:
        """Read and settle every finished job: the readable ones all at once
        through ``reader``, each settled from its small report."""
        finished = [j for j in self.unsettled() if j.terminal]
        readable = [j for j in finished if j.state not in FAILED_STATES and j.result_file]
        reports = self.reader(readable) if readable else {}
        for job in finished:
            if job.state in FAILED_STATES or not job.result_file:
                self._job_failed(job, f"batch job {job.name} {job.state}: {job.error or 'no message'}")
                continue
            report = reports.get(job.id)
            if report is None or report.status == BUSY:
                continue  # read it next pass, never resubmit for this
            if report.status == GONE:  # gone (48 h) or refused: these texts go again
                self._job_failed(job, report.message)
                continue
            self.billed += report.good
            self.lines_failed += len(report.errors)
            can_retry = job.line_retries < self.settings.max_line_retries
            again = {k for k, e in report.errors.items() if e.retryable and can_retry}
            final = [e for k, e in report.errors.items() if k not in again]
            self._settle(job, again, final, resubmit=False)
        for job in finished:
            if self.jobs[job.id].collected:
                self._release(self.jobs[job.id])
        self._start_waiting()  # the room they held

    def _release(self, job: BatchJob) -> None:
        """Delete a settled job's files and the job from the service, before its
        shards are committed: its vectors are in its checkpoint and its failures
        in the journal, so nothing there is read again, and the files waiting
        need the room (were it held until the commit, a run whose files all
        wait for room would wait forever). A busy service: next pass."""
        try:
            self.client.cleanup(job)
        except BackendError as exc:
            if not exc.retryable:
                raise
            return
        self._save(job, files_deleted=True)

    def local_reader(self, jobs: Sequence[BatchJob]) -> dict[str, JobReport]:
        """Each job's result file read here, one after the other."""
        return {
            job.id: collect_job(job, self.client, frozenset(self.journal.keys(job)), self.spec, self.sink)
            for job in jobs
        }

    def _job_failed(self, job: BatchJob, reason: str) -> None:
        keys = self.journal.keys(job)
        if job.resubmits < self.settings.max_resubmits:
            self._settle(job, set(keys), [], resubmit=True)
        else:
            self._settle(job, set(), [LineError(k, reason) for k in keys], resubmit=True)

    def _settle(self, job: BatchJob, again: set[str], final: list[LineError], resubmit: bool) -> None:
        """Send ``again`` in a job of their own (built from this job's request
        file, unless a killed run did so already), record ``final``, and mark
        the job read. A job without a request file (an older journal) cannot
        be rebuilt: its texts fail, retryably, for the pipeline to send."""
        child = next((j for j in self.jobs.values() if j.parent == job.id), None)
        if again and child is None:
            source = self.journal.open_requests(job)
            if source is None:
                reason = "its request file is not in the journal (an older beamvec wrote it)"
                final = [*final, *(LineError(k, reason) for k in sorted(again))]
            else:
                with source:
                    self._resend(job, source, again, resubmit)
        tries = job.attempt
        suffix = f" (after {tries} batch attempt{'s' if tries != 1 else ''})"
        failed = self.journal.write_failures(
            job, (dataclasses.replace(e, message=e.message + suffix) for e in final)
        )
        self._save(job, collected=True, final=failed)

    def _resend(self, job: BatchJob, source: IO[bytes], keys: set[str], resubmit: bool) -> None:
        spool = Spool()
        try:
            for raw in source:
                key = line_key(raw)
                if key in keys:
                    spool.add(key, raw if raw.endswith(b"\n") else raw + b"\n", "")
            if spool.keys:
                self._submit(spool, job.shards, parent=job, resubmit=resubmit)
        finally:
            spool.file.close()

    # -- reporting -----------------------------------------------------------

    def by_state(self) -> dict[str, int]:
        return dict(Counter(job.state for job in self.jobs.values() if not job.cleaned))

    def failed(self) -> int:
        return sum(j.final for j in self.jobs.values() if not j.cleaned and j.collected)

    def pending(self) -> PendingKeys:
        return PendingKeys(self.journal, tuple(self.unsettled()))

    def progress(self) -> BatchProgress:
        pending, failed = len(self.pending()), self.failed()
        done = max(0, self.texts - pending - failed)
        return BatchProgress(self.by_state(), self.texts, done, failed)

    def outcome(self) -> BatchOutcome:
        failures: dict[str, LineError] = {}
        for job in self.jobs.values():
            if not job.cleaned and job.collected:
                failures.update((f.key, f) for f in self.journal.failures(job))
        return BatchOutcome(
            vectors=dict(self.memory.vectors),
            failures=failures,
            pending=self.pending(),
            jobs=tuple(j for j in self.jobs.values() if not j.cleaned),
            jobs_by_state=self.by_state(),
            jobs_submitted=self.submitted,
            texts_billed=self.billed,
            lines_failed=self.lines_failed,
            texts=self.texts,
        )
