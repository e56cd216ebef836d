"""The record of every batch job, kept in the output so a run can be killed and rerun.

One small JSON per job under ``OUTPUT/_batch/jobs/<id>.json``, its keys (one
per line) beside it in ``<id>.keys`` and its request file in
``<id>.requests.jsonl`` (a retry or resubmission is built from it, and a job
the service could not take yet is created from it later). A job is recorded
BEFORE anything is uploaded or created (state ``CREATING``), updated with its
input file, then with its service name, then with each state it is seen in,
and once read (``collected``) with how many of its texts failed for good
(listed in ``<id>.failed``). A rerun reads the journal first and collects,
waits for, or adopts (by display name) every job recorded there instead of
submitting its texts again. The records and key files are small; the driver
reads a job's keys only when it reads that job's results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from beamvec.batchapi.jsonl import LineError
from beamvec.contract.fence import fenced
from beamvec.contract.layout import JOURNAL_DIR as JOURNAL_DIR
from beamvec.contract.output import Output

#: Recorded, not uploaded: the service is at its job cap; created in a later pass.
WAITING = "WAITING"
#: Service states (google-genai's JobState without the ``JOB_STATE_`` prefix).
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"})
FAILED_STATES = frozenset({"FAILED", "CANCELLED", "EXPIRED"})


@dataclass(frozen=True)
class BatchJob:
    """One submitted (or about to be submitted) batch job."""

    id: str
    keys_file: str  # relative to the journal directory
    count: int  # requests in the input file
    shards: tuple[str, ...]  # shards whose texts it holds
    created_at: str  # RFC 3339, UTC
    attempt: int = 1  # 1 + how many earlier jobs held any of its keys without a vector
    input_file: str | None = None  # files/... once uploaded
    name: str | None = None  # batches/... once created
    state: str = "CREATING"  # CREATING, then the service's PENDING .. EXPIRED
    result_file: str | None = None
    error: str | None = None  # the service's message for a failed job
    cleaned: bool = False  # inputs and results deleted from the service
    requests_file: str | None = None  # its request file, kept in the journal
    parent: str | None = None  # the job whose failed lines (or whole file) it sends again
    resubmits: int = 0  # how many FAILED/EXPIRED jobs its texts went through
    line_retries: int = 0  # how many jobs answered its texts with a retryable error
    collected: bool = False  # its results are read: vectors stored, failures settled
    final: int = 0  # of its texts, how many failed for good (``<id>.failed``)
    size: int = 0  # bytes of its request file (what its input file holds on the service)
    uploaded_at: str | None = None  # RFC 3339, UTC: when its input file was uploaded
    files_deleted: bool = False  # its files and job deleted from the service (read and settled)

    @property
    def display_name(self) -> str:
        """What the job and its input file are called on the service (for adoption)."""
        return f"beamvec-{self.id}"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["shards"] = list(self.shards)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchJob:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["shards"] = tuple(values.get("shards") or ())
        return cls(**values)


@dataclass(frozen=True)
class StagedFile:
    """A request file a worker wrote (pipeline/batch_requests.py), with its key
    list beside it: paths on the output's filesystem."""

    requests: str
    keys: str
    count: int
    shards: tuple[str, ...]
    size: int = 0  # bytes of the request file (0: unknown, read from the store)


class BatchJournal:
    """Job records under ``<output>/_batch/jobs`` on any fsspec filesystem."""

    def __init__(
        self, output: str, storage_options: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.fs, root = fsspec.core.url_to_fs(output, **(storage_options or {}))
        self.output = Output(output, storage_options)
        self.dir = f"{root.rstrip('/')}/{JOURNAL_DIR}"
        self.clock = clock  # what the records are stamped with (a test moves it forward)

    def now(self) -> str:
        """The time now, as the records hold it (RFC 3339, UTC)."""
        return _stamp(self.clock())

    def age_s(self, stamp: str) -> float:
        """Seconds since ``stamp`` (one of ``now``'s)."""
        then = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        return self.clock() - then.timestamp()

    def _write(self, name: str, data: bytes) -> None:
        path = f"{self.dir}/{name}"
        with fenced(self.output):  # a run that lost the output's lease records nothing more
            if isinstance(self.fs, LocalFileSystem):  # object stores put whole objects already
                os.makedirs(self.dir, exist_ok=True)
                tmp = f"{path}.tmp-{secrets.token_hex(4)}"
                with open(tmp, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            else:
                self.fs.pipe_file(path, data)

    def _write_stream(self, name: str, source: IO[bytes]) -> None:
        """Copy an open file (a request file: up to 100 MB) without holding it."""
        path = f"{self.dir}/{name}"
        if isinstance(self.fs, LocalFileSystem):
            os.makedirs(self.dir, exist_ok=True)
            tmp = f"{path}.tmp-{secrets.token_hex(4)}"
            with open(tmp, "wb") as fh:
                shutil.copyfileobj(source, fh, 1 << 20)
            os.replace(tmp, path)
        else:
            with self.fs.open(path, "wb") as fh:
                shutil.copyfileobj(source, fh, 1 << 20)

    def new_job(
        self, keys: Sequence[str], shards: Sequence[str], attempt: int = 1,
        requests: IO[bytes] | None = None, **lineage: Any,
    ) -> BatchJob:
        """Record a job about to be submitted: its keys and request file first
        (read from its current position, left at its start), then the record.
        ``lineage``: ``parent``, ``resubmits``, ``line_retries``."""
        job_id = _new_id()
        keys_file = f"{job_id}.keys"
        self._write(keys_file, ("\n".join(keys) + "\n").encode())
        requests_file, size = None, 0
        if requests is not None:
            requests_file = f"{job_id}.requests.jsonl"
            start = requests.tell()
            self._write_stream(requests_file, requests)
            size = requests.tell() - start
            requests.seek(0)
        job = BatchJob(
            job_id, keys_file, len(keys), tuple(sorted(set(shards))), self.now(), attempt,
            requests_file=requests_file, size=size, **lineage,
        )  # fmt: skip
        self.save(job)
        return job

    def record_staged(self, staged: StagedFile, state: str = "CREATING") -> BatchJob:
        """Record a job for a request file the workers wrote: its key list and
        request file are moved into the journal (a rename on disk, a copy
        inside the store elsewhere: no byte passes through here), then the
        record is written, all BEFORE anything is uploaded."""
        job_id = _new_id()
        keys_file, requests_file = f"{job_id}.keys", f"{job_id}.requests.jsonl"
        with fenced(self.output):
            if isinstance(self.fs, LocalFileSystem):
                os.makedirs(self.dir, exist_ok=True)
            self.fs.mv(staged.keys, f"{self.dir}/{keys_file}")
            self.fs.mv(staged.requests, f"{self.dir}/{requests_file}")
        size = staged.size or int(self.fs.size(f"{self.dir}/{requests_file}"))
        job = BatchJob(
            job_id, keys_file, staged.count, tuple(sorted(set(staged.shards))), self.now(),
            requests_file=requests_file, state=state, size=size,
        )  # fmt: skip
        self.save(job)
        return job

    def open_requests(self, job: BatchJob) -> IO[bytes] | None:
        """The job's request file, or None when it has none (an older journal)."""
        if job.requests_file is None:
            return None
        try:
            return self.fs.open(f"{self.dir}/{job.requests_file}", "rb")
        except FileNotFoundError:
            return None

    def write_failures(self, job: BatchJob, failures: Iterable[LineError]) -> int:
        """The texts of ``job`` that failed for good, one JSON line each; how many."""
        lines = [json.dumps(dataclasses.asdict(f)) for f in failures]
        if lines:
            self._write(f"{job.id}.failed", ("\n".join(lines) + "\n").encode())
        return len(lines)

    def failures(self, job: BatchJob) -> Iterator[LineError]:
        if not job.final:
            return
        with self.fs.open(f"{self.dir}/{job.id}.failed", "rb") as fh:
            for line in fh:
                if line.strip():
                    yield LineError(**json.loads(line))

    def save(self, job: BatchJob) -> None:
        self._write(f"{job.id}.json", json.dumps(job.to_json(), indent=1).encode())

    def keys(self, job: BatchJob) -> tuple[str, ...]:
        with self.fs.open(f"{self.dir}/{job.keys_file}", "rb") as fh:
            return tuple(line for line in fh.read().decode().splitlines() if line)

    def jobs(self) -> list[BatchJob]:
        """Every recorded job, oldest first."""
        try:
            paths = self.fs.glob(f"{self.dir}/*.json")
        except FileNotFoundError:
            return []
        out = []
        for path in sorted(paths):
            with self.fs.open(path, "rb") as fh:
                out.append(BatchJob.from_json(json.loads(fh.read())))
        return sorted(out, key=lambda j: j.id)

    def pending(self) -> list[BatchJob]:
        """Jobs whose files are still on the service: to wait for, collect or clean."""
        return [job for job in self.jobs() if not job.cleaned]

    def mark_cleaned(self, job: BatchJob) -> BatchJob:
        """The job's shards are committed and its files deleted: done with it."""
        done = dataclasses.replace(job, cleaned=True)
        self.save(done)
        if job.requests_file is not None:  # up to 100 MB, no longer needed
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(f"{self.dir}/{job.requests_file}")
        return done


def _new_id() -> str:
    """A job id: sorts by creation time, unique across processes."""
    return f"{int(time.time() * 1000):013d}-{secrets.token_hex(4)}"


def _stamp(epoch_s: float) -> str:
    return datetime.datetime.fromtimestamp(epoch_s, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
