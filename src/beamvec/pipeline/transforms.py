"""The Beam PTransforms: thin wrappers around the pure pieces.

    Create(shards) ─► Reshuffle ─► EmbedShards ─► ToList ─► Commit

Vectors never pass through a GroupByKey: a shard is read, embedded and
written inside EmbedShards, on one worker (worker.py); only small commit
records (shard, counts, fingerprint) are gathered for the manifest.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.shared import Shared
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beamvec import counters as c
from beamvec.backends.base import Backend
from beamvec.contract import (
    CommitRecord,
    Description,
    RunConfig,
    RunRecord,
    finalize,
    merge_manifest,
    read_manifest,
    remove_parts,
    stale_parts,
    total,
)
from beamvec.contract.failures import systemic_failures_recorded
from beamvec.contract.fence import fenced
from beamvec.contract.layout import RUNS_DIR as RUNS_DIR
from beamvec.contract.layout import WORK_FILE as WORK_FILE
from beamvec.counters import NAMESPACE, THROTTLING_COUNTER
from beamvec.embed.embedder import Embedder, EmbedSettings
from beamvec.errors import InputVanishedError
from beamvec.pipeline.reuse_join import JoinReuse, SplitReuse, join_sources
from beamvec.pipeline.worker import Worker, WorkerConfig
from beamvec.pricing import estimate_cost
from beamvec.progress import PROGRESS
from beamvec.quota import Limiter, QuotaSettings
from beamvec.records import Shard, Split
from beamvec.route.lookup import Lookups
from beamvec.route.router import RunMemory
from beamvec.sources import plan_splits
from beamvec.write.sink import Output

LOG = logging.getLogger("beamvec")


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


class CommitManifest(beam.DoFn):
    """Writes the manifest from all commit records, then ``_SUCCESS``."""

    def __init__(
        self,
        output: str,
        storage_options: dict[str, object],
        work: str,
        config: RunConfig,
        description: Description,
        started: float,
        prune: bool = False,
        lease_owner: str = "",
    ) -> None:
        self.output = output
        self.lease_owner = lease_owner
        self.storage_options = storage_options
        self.work = work
        self.config = config
        self.description = description
        self.started = started
        self.prune = prune

    def process(self, results: list[CommitRecord]) -> Iterator[list[str]]:
        out = Output(self.output, self.storage_options)
        todo, expected, carried = read_work(out, self.work)
        yield commit_run(
            out, results, todo, expected, carried, self.config, self.description,
            self.started, self.prune, self.lease_owner or None,
        )


def commit_run(
    out: Output,
    results: list[CommitRecord],
    todo: list[Shard],
    expected: list[str],
    carried: list[CommitRecord],
    config: RunConfig,
    description: Description,
    started: float | None,
    prune: bool,
    lease_owner: str | None = None,
) -> list[str]:
    """This run's commit records into the manifest; stale parts of re-cut
    inputs and, with ``prune``, shards no longer listed, out of the output.
    Returns the shards still missing (failed or not run). Fenced: only while
    ``lease_owner`` (by default, this process's) holds the output's lease,
    read, merge and writes all under one check (contract.fence)."""
    with fenced(out, lease_owner):
        return _commit_run(out, results, todo, expected, carried, config, description, started,
                           prune)


def _commit_run(
    out: Output, results: list[CommitRecord], todo: list[Shard], expected: list[str],
    carried: list[CommitRecord], config: RunConfig, description: Description,
    started: float | None, prune: bool,
) -> list[str]:
    previous = read_manifest(out)
    committed = [r for r in results if r.status == "committed"]
    current = {s.name: s.fingerprint for s in todo}
    removed: list[str] = []
    if previous is not None:
        kept = {r.name for r in committed}
        removed = [name for name in stale_parts(previous, current) if name not in kept]
        if prune:
            listed = set(expected)
            removed += [n for n, rec in previous.shards.items() if rec.shard_name not in listed]
    pruned = sorted({previous.shards[n].shard_name for n in removed if previous and n in previous.shards})
    # A no-op rerun adds no history; one that only prunes says so.
    run = run_record(results, description, started, pruned if prune else ()) if results or removed else None
    # Shards skipped as committed whose manifest entry a crash lost come back here.
    manifest = merge_manifest(previous, [*carried, *committed], config, description, run, removed)
    missing = finalize(out, manifest, expected)
    remove_parts(out, removed)  # after the manifest no longer names them
    if not missing:
        _remove_work_lists(out)
    return missing


def _remove_work_lists(out: Output) -> None:
    """The output is complete and this run holds its lease (the caller is
    fenced): this run's work list is done with, and so are those that killed
    runs left behind, since a run that lost the lease can commit nothing."""
    for left in out.fs.glob(out.path(RUNS_DIR, "*", WORK_FILE)):
        out.remove(left)


def run_record(
    results: list[CommitRecord], description: Description, started: float | None,
    pruned: Sequence[str] = (),
) -> RunRecord:
    """One line of the run history: what this run did and what it cost."""
    counts = total(r.counts for r in results)
    cost = estimate_cost(description.backend, description.model, counts.sent_tokens, counts.billable_characters)
    batch = estimate_cost(description.backend, description.model, counts.batch_sent_tokens, 0)
    usd = None if cost.standard is None else cost.standard + (batch.batch or 0.0)
    return RunRecord(
        started_at=None if started is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        shards=len(results), read=counts.read, embedded=counts.embedded,
        dead_lettered=counts.dead_lettered, tokens=counts.tokens, sent=counts.sent,
        sent_tokens=counts.sent_tokens, reused=counts.reused, deduplicated=counts.deduplicated,
        batch_sent=counts.batch_sent, batch_sent_tokens=counts.batch_sent_tokens,
        config_fingerprint=description.config_fingerprint,
        estimated_cost_usd=None if usd is None else round(usd, 6),
        cost_basis=cost.basis,
        pruned=tuple(pruned),
    )


def write_work(output: Output, run_id: str, todo: list[Shard], expected: list[str],
               carried: list[CommitRecord]) -> str:
    """The run's work list, in the output: the job graph then carries one path
    whatever the number of shards (Dataflow refuses graphs over ~10 MB)."""
    lines = [json.dumps({"todo": dataclasses.asdict(s)}) for s in todo]
    lines += [json.dumps({"expected": name}) for name in expected]
    lines += [json.dumps({"carried": rec.to_json()}) for rec in carried]
    path = output.path(RUNS_DIR, run_id, WORK_FILE)
    output.write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def read_work(output: Output, path: str) -> tuple[list[Shard], list[str], list[CommitRecord]]:
    todo: list[Shard] = []
    expected: list[str] = []
    carried: list[CommitRecord] = []
    with output.fs.open(path, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            item = json.loads(line)
            if "todo" in item:
                todo.append(Shard(**item["todo"]))
            elif "expected" in item:
                expected.append(item["expected"])
            else:
                carried.append(CommitRecord.from_json(item["carried"]))
    return todo, expected, carried


class ReadWork(beam.DoFn):
    """The work list's path in, its shards out, read on a worker."""

    def __init__(self, output: str, storage_options: dict[str, object]) -> None:
        self.output = output
        self.storage_options = storage_options

    def process(self, path: str) -> Iterator[Shard]:
        yield from read_work(Output(self.output, self.storage_options), path)[0]


class PlanSplits(beam.DoFn):
    """A shard in, its splits out: a large uncompressed file becomes byte (or
    row-group) ranges that different workers embed."""

    def __init__(self, config: WorkerConfig, target_bytes: int) -> None:
        self.config = config
        self.target_bytes = target_bytes

    def process(self, shard: Shard) -> Iterator[Split]:
        try:
            yield from plan_splits(shard, self.config.reader, self.config.storage_options, self.target_bytes)
        except InputVanishedError:
            yield Split.whole(shard)  # the worker records it as a failed shard


class EmbedCorpus(beam.PTransform):
    """The work list in, committed output out.

        work list ─► ReadWork ─► Spread ─► PlanSplits ─► Spread ─► EmbedShards ─► Gather ─► Commit
    """

    def __init__(
        self,
        work: str,
        backend: Backend,
        config: WorkerConfig,
        settings: EmbedSettings,
        quota_settings: QuotaSettings,
        run_config: RunConfig,
        concurrent_shards: int = 4,
        split_bytes: int = 0,
        prune: bool = False,
        reuse_join: int = 0,
    ) -> None:
        """``reuse_join``: the reusable vectors to join the splits' texts with
        (reuse_join.py); 0: each process looks them up in its own index."""
        super().__init__()
        self.work = work
        self.backend = backend
        self.config = config
        self.settings = settings
        self.quota_settings = quota_settings
        self.run_config = run_config
        self.concurrent_shards = concurrent_shards
        self.split_bytes = split_bytes
        self.prune = prune
        self.reuse_join = reuse_join

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        started = time.time()
        storage = self.config.storage_options
        splits = (
            pbegin
            | "Work" >> beam.Create([self.work])
            | "ReadWork" >> beam.ParDo(ReadWork(self.config.output, storage))
            | "SpreadShards" >> beam.Reshuffle()
            | "PlanSplits" >> beam.ParDo(PlanSplits(self.config, self.split_bytes))
            | "SpreadSplits" >> beam.Reshuffle()
        )
        if self.reuse_join:
            splits = splits | "JoinReuse" >> JoinReuse(
                self.backend, self.config, join_sources(self.config), self.reuse_join
            )
        return (
            splits
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
                    self.config.output, storage, self.work, self.run_config,
                    self.config.description, started, self.prune, self.config.lease_owner,
                )
            )
        )
