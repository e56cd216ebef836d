"""The embed step as a Beam DoFn: splits in, commit records out, and what
the DoFn's copies in one worker process share (``PerProcess``)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.shared import Shared
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beamvec import counters as c
from beamvec.backends.base import Backend
from beamvec.contract import CommitRecord
from beamvec.contract.failures import systemic_failures_recorded
from beamvec.counters import NAMESPACE, THROTTLING_COUNTER
from beamvec.embed.embedder import Embedder, EmbedSettings
from beamvec.pipeline.reuse_join import SplitReuse
from beamvec.pipeline.worker import Worker, WorkerConfig
from beamvec.progress import PROGRESS
from beamvec.quota import Limiter, QuotaSettings
from beamvec.records import Split
from beamvec.route.lookup import Lookups
from beamvec.route.router import RunMemory

#: Shards a worker keeps open at once: reading, or waiting for their texts.
#: Tiny shards finish reading at once, so many can share each request.
MAX_OPEN_SHARDS = 64


class PerProcess:
    """What every copy of ``EmbedShards`` in a worker process shares.

    Beam unpickles a DoFn once per thread, several to a process: each copy
    with its own limiter would take a whole share of the quota, each with
    its own index would read the output's hash columns and hold the index
    again, each with its own run memory would send a text its shards share
    with another copy's again, and each with its own collector would cut
    its own partial requests (1,000 shards of 20 on four copies: 343
    requests where 200 suffice). So the copies share one ``Worker`` (its
    embedder, collector and memory), built by the first copy to attach and
    closed when the last one detaches. Limiters hold locks and clocks, so
    this is built on the worker, never pickled. One object behind one
    ``Shared`` token, because Beam keeps only one token per stage alive
    between bundles."""

    def __init__(self, limiter: Limiter | None, lookups: Lookups, memory: RunMemory) -> None:
        self.limiter = limiter
        self.lookups = lookups
        self.memory = memory
        self._lock = threading.Lock()
        self._worker: Worker | None = None
        self._users = 0
        self._reported: dict[str, float] = {}  # the worker's counts handed to Beam's metrics

    def attach(self, build: Callable[[], Worker]) -> Worker:
        """The process's worker: built by the first copy (again after the last left)."""
        with self._lock:
            if self._worker is None:
                self._worker = build()
                self._reported = {}
            self._users += 1
            return self._worker

    def detach(self) -> None:
        """A copy is torn down; the last one closes the worker."""
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._worker is None:
                return
            worker, self._worker = self._worker, None
        worker.close()
        worker.embedder.close()

    def unreported(self, counts: dict[str, float]) -> dict[str, int]:
        """What of the worker's ``counts`` no copy has handed to Beam's metrics yet."""
        deltas: dict[str, int] = {}
        with self._lock:
            for key, value in counts.items():
                delta = int(value - self._reported.get(key, 0))
                if delta:
                    deltas[key] = delta
                    self._reported[key] = self._reported.get(key, 0) + delta
        return deltas


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
        self._shared = Shared()  # one PerProcess per worker process, whatever the DoFn copies

    def setup(self) -> None:
        with systemic_failures_recorded(self.config.output, self.config.storage_options):
            self.backend.load()
        config, quota, dimension = self.config, self.quota_settings, self.backend.limits.dimension
        self.shared: PerProcess = self._shared.acquire(
            lambda: PerProcess(quota.build(), Worker.lookups_for(config, dimension),
                               Worker.memory_for(config, dimension)),
            tag=(self.backend.name, self.backend.model, quota, config.output, config.run_id),
        )
        self.worker = self.shared.attach(self._build_worker)
        self.embedder = self.worker.embedder
        self._in_bundle = False
        # What is loaded by now (Beam, the SDK, pyarrow, the model) lives as
        # long as the process. Out of the collector's sight, a full collection
        # takes ~15 ms instead of 100-150 ms that held every thread, and with
        # them the sends the limiter had spaced (benchmarks/quota_benchmark.py).
        gc.freeze()
        max_open = max(MAX_OPEN_SHARDS, self.concurrent_shards)
        self.shard_pool = ThreadPoolExecutor(max_open, thread_name_prefix="beamvec-shard")
        self.reading = threading.Semaphore(self.concurrent_shards)
        self.open = threading.Semaphore(max_open)
        self.shards_done = Metrics.counter(NAMESPACE, c.SHARDS)
        self.records_read = Metrics.counter(NAMESPACE, c.RECORDS_READ)
        self.records_embedded = Metrics.counter(NAMESPACE, c.RECORDS_EMBEDDED)
        self.records_dead = Metrics.counter(NAMESPACE, c.DEAD_LETTERS)

    def _build_worker(self) -> Worker:
        shared = self.shared
        embedder = Embedder(self.backend, self.settings, shared.limiter)
        PROGRESS.watch(embedder.stats.snapshot)
        return Worker(self.backend, embedder, self.config, self.settings.max_in_flight,
                      shared.lookups, shared.memory)

    def start_bundle(self) -> None:
        self.pending: list[Future[CommitRecord]] = []
        self.worker.collector.bundle_started()
        self._in_bundle = True

    def _run(self, shard: Split, joined: SplitReuse | None) -> CommitRecord:
        try:
            with systemic_failures_recorded(self.config.output, self.config.storage_options):
                reuse = None if joined is None else joined.lookup(self.config, self.backend.limits.dimension)
                return self.worker.process(shard, on_read=self.reading.release, reuse=reuse)
        finally:
            self.open.release()

    def _report(self, result: CommitRecord | None = None) -> None:
        """Hand counts to Beam's metrics, on the DoFn's own thread."""
        counts = self.embedder.stats.snapshot()
        for gauge in c.GAUGES:  # levels, not counts
            counts.pop(gauge, None)
        for key, delta in self.shared.unreported(counts).items():
            Metrics.counter(NAMESPACE, THROTTLING_COUNTER if key == c.THROTTLED_MS else key).inc(delta)
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

    def process(self, element: Split | SplitReuse) -> Iterator[CommitRecord]:
        """A split, or a split with where the reuse join left its vectors."""
        shard, reuse = (element.split, element) if isinstance(element, SplitReuse) else (element, None)
        # Wait for a reading slot and an open slot, yielding what finishes meanwhile.
        for slot in (self.open, self.reading):
            while not slot.acquire(timeout=0.2):
                yield from self._drain(0)
        self.pending.append(self.shard_pool.submit(self._run, shard, reuse))
        yield from self._drain(0)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        self._in_bundle = False
        self.worker.collector.bundle_ending()
        while self.pending:
            for result in self._drain(None):
                yield WindowedValue(result, MIN_TIMESTAMP, [GlobalWindow()])
        self._report()

    def teardown(self) -> None:
        if hasattr(self, "worker"):
            if self._in_bundle:  # a bundle that failed: it hands over no more shards
                self.worker.collector.bundle_ending()
            self.shared.detach()
            self.shard_pool.shutdown(wait=False, cancel_futures=True)
