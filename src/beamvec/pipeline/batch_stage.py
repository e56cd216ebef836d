"""The Batch API's per-record work, on the pipeline's workers.

    jobs ─► Spread ─► CollectJob ─► a report per job (staging)

A SUCCEEDED job's result file is downloaded (in chunks, to disk) and streamed
by one worker into the job's checkpoint (``batchapi.checkpoint``); what the
driver gets back is the job's report: how many keys got a vector, and the
keys that did not with the service's message (``batchapi.results.JobReport``),
written at a path derived from the job, so a retried bundle rewrites the
same file. The driver settles the jobs from the reports and never sees a
vector or a result line.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beamvec.backends.base import Backend
from beamvec.batchapi.checkpoint import CheckpointSink
from beamvec.batchapi.client import BatchClient
from beamvec.batchapi.journal import BatchJob, BatchJournal
from beamvec.batchapi.jsonl import BatchSpec
from beamvec.batchapi.results import JobReport, collect_job, read_report, write_report
from beamvec.contract.failures import (
    clear_failures,
    raise_recorded_failure,
    systemic_failures_recorded,
)
from beamvec.contract.layout import BATCH_DIR
from beamvec.write.sink import Output

#: Per run: what the workers hand the driver (``<run id>/reports/<job id>.jsonl``).
STAGING_DIR = f"{BATCH_DIR}/staging"


@dataclass(frozen=True)
class BatchTarget:
    """Where and how the workers reach the Batch API and the output; picklable,
    no secret (the key is read on the worker, as the online path does)."""

    output: str
    spec: BatchSpec
    fingerprint: str
    dimension: int
    run_id: str
    base_url: str | None = None
    api_version: str | None = None
    timeout_s: float = 120.0
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False)

    def staging(self, *parts: str) -> str:
        return Output(self.output, self.storage_options).path(STAGING_DIR, self.run_id, *parts)

    def connect(self, backend: Backend) -> BatchClient:
        return BatchClient.connect(
            backend.read_api_key(),  # type: ignore[attr-defined] - GenaiBackend (gemini) only
            self.spec.model, base_url=self.base_url, api_version=self.api_version,
            timeout_s=self.timeout_s,
        )  # fmt: skip


class CollectJob(beam.DoFn):
    """A SUCCEEDED job in, its result file read into its checkpoint, its id out
    once its report is written."""

    def __init__(self, backend: Backend, target: BatchTarget) -> None:
        self.backend, self.target = backend, target

    def setup(self) -> None:
        with self._recorded():
            self.client = self.target.connect(self.backend)
        self.output = Output(self.target.output, self.target.storage_options)
        self.journal = BatchJournal(self.target.output, self.target.storage_options)
        self.sink = CheckpointSink(self.output, self.target.fingerprint, self.target.dimension)

    def _recorded(self) -> Any:
        return systemic_failures_recorded(self.target.output, self.target.storage_options)

    def process(self, job: BatchJob) -> Any:
        keys = frozenset(self.journal.keys(job))
        with self._recorded():
            report = collect_job(job, self.client, keys, self.target.spec, self.sink)
        path = self.target.staging("reports", f"{job.id}.jsonl")
        self.output.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.output.fs.open(path, "wb") as fh:
            write_report(report, fh)
        yield job.id


def collect_on_workers(
    jobs: Sequence[BatchJob], backend: Backend, target: BatchTarget, options: PipelineOptions
) -> Mapping[str, JobReport]:
    """Run ``CollectJob`` over ``jobs`` as a pipeline of its own; their reports."""
    pipeline = beam.Pipeline(options=options)
    _ = (
        pipeline
        | "Jobs" >> beam.Create(list(jobs))
        | "Spread" >> beam.Reshuffle()
        | "CollectJob" >> beam.ParDo(CollectJob(backend, target))
    )
    run_stage(pipeline, target)
    return StagedReports(target, [job.id for job in jobs])


class StagedReports(Mapping[str, JobReport]):
    """The stage's reports, each read from its file when the driver settles
    its job (and the file removed): one report in memory at a time."""

    def __init__(self, target: BatchTarget, job_ids: Sequence[str]) -> None:
        self.target, self.ids = target, list(job_ids)
        self.output = Output(target.output, target.storage_options)

    def __getitem__(self, job_id: str) -> JobReport:
        if job_id not in self.ids:
            raise KeyError(job_id)
        path = self.target.staging("reports", f"{job_id}.jsonl")
        with self.output.fs.open(path, "rb") as fh:
            report = read_report(fh)
        self.output.remove(path)
        return report

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def run_stage(pipeline: beam.Pipeline, target: BatchTarget) -> None:
    """Run a stage to its end; a worker's SystemicError comes back as its one line."""
    clear_failures(target.output, target.storage_options)
    try:
        pipeline.run().wait_until_finish()
    except Exception as exc:
        raise_recorded_failure(target.output, target.storage_options, exc)
        raise
