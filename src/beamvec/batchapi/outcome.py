"""What a Batch API run is told (``BatchSettings``) and what it reports back:
small records, no text and no vector (but ``BatchOutcome.vectors`` for
callers without a sink)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from beamvec.batchapi.journal import BatchJob, BatchJournal
from beamvec.batchapi.jsonl import MAX_FILE_BYTES, MAX_REQUESTS_PER_FILE, LineError
from beamvec.batchapi.results import JobReport
from beamvec.batchapi.room import FILE_LIFETIME_S, MAX_SERVICE_BYTES


@dataclass(frozen=True)
class BatchSettings:
    wait: bool = True
    poll_interval_s: float = 30.0
    max_poll_interval_s: float = 600.0
    max_resubmits: int = 2  # new jobs for the texts of a FAILED/EXPIRED/CANCELLED job
    max_line_retries: int = 2  # later jobs for a line answered with a retryable error
    max_requests_per_file: int = MAX_REQUESTS_PER_FILE
    max_file_bytes: int = MAX_FILE_BYTES
    max_concurrent_jobs: int = 100  # the service's cap (about 100); more files wait in the journal
    max_service_bytes: int = MAX_SERVICE_BYTES  # files on the service (Google: 20 GB a project)
    file_lifetime_s: float = FILE_LIFETIME_S  # an input file older than this is uploaded again
    max_wait_s: float | None = None  # stop waiting after this long (None: until done)


#: Reads finished (SUCCEEDED) jobs' result files into their checkpoints and says
#: what each held, by job id: here, one at a time (``local_reader``), or on the
#: pipeline's workers (pipeline/batch_stage.py).
JobReader = Callable[[Sequence[BatchJob]], Mapping[str, JobReport]]


@dataclass(frozen=True)
class BatchProgress:
    jobs_by_state: Mapping[str, int]
    keys_total: int
    keys_done: int
    keys_failed: int


@dataclass(frozen=True)
class PendingKeys:
    """The keys of jobs not settled yet: counted from the job records, read
    from the journal only if someone iterates them."""

    journal: BatchJournal
    jobs: tuple[BatchJob, ...]

    def __len__(self) -> int:
        return sum(job.count for job in self.jobs)

    def __iter__(self) -> Iterator[str]:
        for job in self.jobs:
            yield from self.journal.keys(job)


@dataclass(frozen=True)
class BatchOutcome:
    vectors: Mapping[str, np.ndarray]  # empty when a ``sink`` took them
    failures: Mapping[str, LineError]  # texts failed for good (rare; read from the journal)
    pending: PendingKeys  # submitted, not settled yet (no-wait, or max_wait_s)
    jobs: tuple[BatchJob, ...]  # every journal job not cleaned yet, latest record
    jobs_by_state: Mapping[str, int]
    jobs_submitted: int  # created by this call
    texts_billed: int  # keys whose vector came from a batch result in this call
    lines_failed: int  # result lines answered with an error, over the jobs read
    texts: int = 0  # distinct texts of this call's stream

    @property
    def complete(self) -> bool:
        return not self.pending


