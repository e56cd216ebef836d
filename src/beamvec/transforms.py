"""The Beam PTransforms: thin wrappers around the pure pieces.

    Create(shards) ─► Reshuffle ─► EmbedShards ─► ToList ─► Commit

Vectors never pass through a GroupByKey: a shard is read, embedded and
written inside EmbedShards, on one worker (worker.py); only small commit
records (shard, counts, fingerprint) are gathered for the manifest.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beamvec import quota
from beamvec.backends.base import Backend
from beamvec.contract import (
    CommitRecord,
    Description,
    RunConfig,
    RunRecord,
    finalize,
    merge_manifest,
    read_manifest,
    total,
)
from beamvec.embedder import Embedder, EmbedSettings
from beamvec.failures import systemic_failures_recorded
from beamvec.pricing import estimate_cost
from beamvec.progress import PROGRESS
from beamvec.records import Shard
from beamvec.sink import Output
from beamvec.worker import Worker, WorkerConfig

LOG = logging.getLogger("beamvec")
NAMESPACE = "beamvec"
#: Beam's well-known counter name; Dataflow's autoscaler reads it.
THROTTLING_COUNTER = "throttling-msecs"


class QuotaSettings:
    """The job's quota and this worker's share of it; picklable."""

    def __init__(
        self, rpm: float | None, tpm: float | None, share: float = 1.0, window_s: float = 60.0
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.share = share
        self.window_s = window_s

    def limiter(self, key: str) -> quota.AdaptiveLimiter | None:
        if not self.rpm and not self.tpm:
            return None
        return quota.shared_limiter(
            f"{key}:{self.rpm}:{self.tpm}:{self.share}:{self.window_s}",
            lambda: quota.AdaptiveLimiter(
                self.rpm, self.tpm, share=self.share, window_s=self.window_s
            ),
        )


#: Shards a worker keeps open at once: reading, or waiting for their texts.
#: Tiny shards finish reading at once, so many can share each request.
MAX_OPEN_SHARDS = 64


class EmbedShards(beam.DoFn):
    """Shard in, commit record out. A few shards read at once and many wait
    for their results, all feeding one process-wide pool of requests."""

    def __init__(
        self,
        backend: Backend,
        config: WorkerConfig,
        settings: EmbedSettings,
        quota_settings: QuotaSettings,
        concurrent_shards: int = 4,
    ) -> None:
        self.backend = backend
        self.config = config
        self.settings = settings
        self.quota_settings = quota_settings
        self.concurrent_shards = max(1, concurrent_shards)

    def setup(self) -> None:
        with systemic_failures_recorded(self.config.output, self.config.storage_options):
            self.backend.load()
        limiter = self.quota_settings.limiter(f"{self.backend.name}:{self.backend.model}")
        self.embedder = Embedder(self.backend, self.settings, limiter)
        self.worker = Worker(self.backend, self.embedder, self.config, self.settings.max_in_flight)
        PROGRESS.watch(self.embedder.stats.snapshot)
        max_open = max(MAX_OPEN_SHARDS, self.concurrent_shards)
        self.shard_pool = ThreadPoolExecutor(max_open, thread_name_prefix="beamvec-shard")
        self.reading = threading.Semaphore(self.concurrent_shards)
        self.open = threading.Semaphore(max_open)
        self.reported: dict[str, float] = {}
        self.shards_done = Metrics.counter(NAMESPACE, "shards")
        self.records_read = Metrics.counter(NAMESPACE, "records_read")
        self.records_embedded = Metrics.counter(NAMESPACE, "records_embedded")
        self.records_dead = Metrics.counter(NAMESPACE, "dead_letters")

    def start_bundle(self) -> None:
        self.pending: list[Future[CommitRecord]] = []
        self.worker.collector.draining(False)

    def _run(self, shard: Shard) -> CommitRecord:
        try:
            with systemic_failures_recorded(self.config.output, self.config.storage_options):
                return self.worker.process(shard, on_read=self.reading.release)
        finally:
            self.open.release()

    def _report(self, result: CommitRecord | None = None) -> None:
        """Hand counts to Beam's metrics, on the DoFn's own thread."""
        for key, value in self.embedder.stats.snapshot().items():
            delta = int(value - self.reported.get(key, 0))
            if delta:
                name = THROTTLING_COUNTER if key == "throttled_ms" else key
                Metrics.counter(NAMESPACE, name).inc(delta)
                self.reported[key] = self.reported.get(key, 0) + delta
        if result is not None:
            self.shards_done.inc()
            self.records_read.inc(result.counts.read)
            self.records_embedded.inc(result.counts.embedded)
            self.records_dead.inc(result.counts.dead_lettered)

    def _drain(self, timeout: float | None) -> Iterator[CommitRecord]:
        """Results of the shards that finish within ``timeout`` (None: at least one)."""
        if not self.pending:
            return
        done, _ = wait(self.pending, timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            self.pending.remove(future)
            result = future.result()
            self._report(result)
            yield result

    def process(self, shard: Shard) -> Iterator[CommitRecord]:
        # Wait for a reading slot and an open slot, yielding what finishes meanwhile.
        for slot in (self.open, self.reading):
            while not slot.acquire(timeout=0.2):
                yield from self._drain(0)
        self.pending.append(self.shard_pool.submit(self._run, shard))
        yield from self._drain(0)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        self.worker.collector.draining(True)
        while self.pending:
            for result in self._drain(None):
                yield WindowedValue(result, MIN_TIMESTAMP, [GlobalWindow()])
        self._report()

    def teardown(self) -> None:
        if hasattr(self, "worker"):
            self.worker.close()
            self.embedder.close()
            self.shard_pool.shutdown(wait=False, cancel_futures=True)


class CommitManifest(beam.DoFn):
    """Writes the manifest from all commit records, then ``_SUCCESS``."""

    def __init__(
        self,
        output: str,
        storage_options: dict[str, object],
        expected: list[str],
        config: RunConfig,
        description: Description,
        started: float,
        carried: list[CommitRecord] | None = None,
    ) -> None:
        self.output = output
        self.storage_options = storage_options
        self.expected = expected
        self.config = config
        self.description = description
        self.started = started
        self.carried = carried or []

    def process(self, results: list[CommitRecord]) -> Iterator[list[str]]:
        out = Output(self.output, self.storage_options)
        # Shards skipped as committed whose manifest entry a crash lost come back here.
        manifest = merge_manifest(
            read_manifest(out), [*self.carried, *results], self.config, self.description,
            run_record(results, self.description, self.started),
        )
        yield finalize(out, manifest, self.expected)


def run_record(results: list[CommitRecord], description: Description, started: float | None) -> RunRecord:
    """One line of the run history: what this run did and what it cost."""
    counts = total(r.counts for r in results)
    cost = estimate_cost(description.backend, description.model, counts.sent_tokens, counts.billable_characters)
    return RunRecord(
        started_at=None if started is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        shards=len(results), read=counts.read, embedded=counts.embedded,
        dead_lettered=counts.dead_lettered, tokens=counts.tokens, sent=counts.sent,
        sent_tokens=counts.sent_tokens, reused=counts.reused, deduplicated=counts.deduplicated,
        config_fingerprint=description.config_fingerprint,
        estimated_cost_usd=None if cost.standard is None else round(cost.standard, 6),
        cost_basis=cost.basis,
    )


class EmbedCorpus(beam.PTransform):
    """Shards in, committed output out."""

    def __init__(
        self,
        shards: list[Shard],
        backend: Backend,
        config: WorkerConfig,
        settings: EmbedSettings,
        quota_settings: QuotaSettings,
        run_config: RunConfig,
        expected: list[str],
        concurrent_shards: int = 4,
        carried: list[CommitRecord] | None = None,
    ) -> None:
        super().__init__()
        self.shards = shards
        self.backend = backend
        self.config = config
        self.settings = settings
        self.quota_settings = quota_settings
        self.run_config = run_config
        self.expected = expected
        self.concurrent_shards = concurrent_shards
        self.carried = carried or []

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        started = time.time()
        return (
            pbegin
            | "ListShards" >> beam.Create(self.shards)
            | "Spread" >> beam.Reshuffle()
            | "EmbedShards"
            >> beam.ParDo(
                EmbedShards(
                    self.backend, self.config, self.settings, self.quota_settings,
                    self.concurrent_shards,
                )
            )
            | "Gather" >> beam.combiners.ToList()
            | "Commit"
            >> beam.ParDo(
                CommitManifest(
                    self.config.output, self.config.storage_options, self.expected,
                    self.run_config, self.config.description, started, self.carried,
                )
            )
        )
