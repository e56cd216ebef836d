"""The record of every batch job, kept in the output so a run can be killed and rerun.

One small JSON per job under ``OUTPUT/_batch/jobs/<id>.json`` and its keys (one
per line) beside it in ``<id>.keys``. A job is recorded BEFORE anything is
uploaded or created (state ``CREATING``), updated with its input file, then
with its service name, then with each state it is seen in; a rerun reads the
journal first and collects, waits for, or adopts (by display name) every job
recorded there instead of submitting its texts again.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from beamvec.contract.fence import fenced
from beamvec.contract.layout import JOURNAL_DIR as JOURNAL_DIR
from beamvec.contract.output import Output

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


class BatchJournal:
    """Job records under ``<output>/_batch/jobs`` on any fsspec filesystem."""

    def __init__(self, output: str, storage_options: dict[str, Any] | None = None) -> None:
        self.fs, root = fsspec.core.url_to_fs(output, **(storage_options or {}))
        self.output = Output(output, storage_options)
        self.dir = f"{root.rstrip('/')}/{JOURNAL_DIR}"

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

    def new_job(self, keys: Sequence[str], shards: Sequence[str], attempt: int = 1) -> BatchJob:
        """Record a job about to be submitted: its keys first, then the record."""
        job_id = f"{int(time.time() * 1000):013d}-{secrets.token_hex(4)}"
        keys_file = f"{job_id}.keys"
        self._write(keys_file, ("\n".join(keys) + "\n").encode())
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        job = BatchJob(job_id, keys_file, len(keys), tuple(sorted(set(shards))), now, attempt)
        self.save(job)
        return job

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
        return done
