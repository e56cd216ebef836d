"""What beamvec's files take on the service, against the project's file storage.

Google keeps at most 20 GB of files a project and deletes each 48 hours after
upload. A job holds its input file (its request file's size, in the journal)
from upload until it is deleted, and its result file from the moment it
finishes: that size is not known before, so it is estimated from the job's
lines and the vectors' size, generously (a float printed in JSON takes 9 to 17
significant digits, a sign and an exponent), and reserved when the job is
created so that results landing later never push the project over.
"""

from __future__ import annotations

from collections.abc import Iterable

from beamvec.batchapi.journal import FAILED_STATES, WAITING, BatchJob

#: Google's cap is 20 GB of files a project; leave room for others' files.
MAX_SERVICE_BYTES = 18 * 10**9
#: Google deletes a file 48 h after upload; one older than this is uploaded again.
FILE_LIFETIME_S = 47 * 3600.0
#: Bytes a result line takes per vector value, and per line besides (key, braces).
RESULT_BYTES_PER_VALUE = 20
RESULT_BYTES_PER_LINE = 256


def result_bytes(lines: int, dimension: int) -> int:
    """An upper estimate of a result file's size: ``lines`` vectors of ``dimension``."""
    return lines * (dimension * RESULT_BYTES_PER_VALUE + RESULT_BYTES_PER_LINE)


def needed_bytes(size: int, lines: int, dimension: int) -> int:
    """What a job takes on the service at its peak: its input and its results."""
    return size + result_bytes(lines, dimension)


def held_bytes(job: BatchJob, dimension: int) -> int:
    """What ``job`` holds on the service now, or has reserved there: a job
    being created or run reserves its result file too; a failed one has none."""
    if job.cleaned or job.files_deleted or job.state == WAITING:
        return 0
    if job.state in FAILED_STATES:
        return job.size if job.input_file else 0
    return needed_bytes(job.size, job.count, dimension)


def service_bytes(jobs: Iterable[BatchJob], dimension: int) -> int:
    return sum(held_bytes(job, dimension) for job in jobs)
