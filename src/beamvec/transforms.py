"""The Beam PTransforms: thin wrappers around the pure pieces.

    Create(shards) ─► Reshuffle ─► EmbedShards ─► ToList ─► Commit

Vectors never pass through a GroupByKey: a shard is read, embedded and
written inside EmbedShards, on one worker; only small commit records (shard,
counts, fingerprint) are gathered for the manifest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.shared import Shared
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beamvec.backends.base import Backend
from beamvec.embedder import Embedder, EmbedSettings
from beamvec.pricing import estimate_cost
from beamvec.progress import PROGRESS
from beamvec.quota import QuotaSettings
from beamvec.records import Shard
from beamvec.shard_job import ShardJobConfig, process_shard
from beamvec.sink import MANIFEST, PARTIAL_DIR, SUCCESS, Output, build_manifest, write_manifest

LOG = logging.getLogger("beamvec")
NAMESPACE = "beamvec"
#: Beam's well-known counter name; Dataflow's autoscaler reads it.
THROTTLING_COUNTER = "throttling-msecs"


class EmbedShards(beam.DoFn):
    """Shard in, commit record out. Several shards of a bundle run at once, all
    feeding one process-wide pool of requests in flight."""

    def __init__(
        self,
        backend: Backend,
        config: ShardJobConfig,
        settings: EmbedSettings,
        quota_settings: QuotaSettings,
        concurrent_shards: int = 4,
    ) -> None:
        self.backend = backend
        self.config = config
        self.settings = settings
        self.quota_settings = quota_settings
        self.concurrent_shards = max(1, concurrent_shards)
        self._counters: dict[str, Any] = {}
        self._shared = Shared()  # one limiter per worker process, whatever the DoFn copies

    def setup(self) -> None:
        self.backend.load()
        limiter = self.quota_settings.limiter(self._shared, f"{self.backend.name}:{self.backend.model}")
        self.embedder = Embedder(self.backend, self.settings, limiter)
        PROGRESS.watch(self.embedder.stats.snapshot)
        self.shard_pool = ThreadPoolExecutor(self.concurrent_shards, thread_name_prefix="beamvec-shard")
        self.reported: dict[str, float] = {}
        self.shards_done = Metrics.counter(NAMESPACE, "shards")
        self.records_read = Metrics.counter(NAMESPACE, "records_read")
        self.records_embedded = Metrics.counter(NAMESPACE, "records_embedded")
        self.records_dead = Metrics.counter(NAMESPACE, "dead_letters")

    def start_bundle(self) -> None:
        self.pending: list[Future[dict[str, Any]]] = []

    def _run(self, shard: Shard) -> dict[str, Any]:
        return process_shard(
            shard, self.backend, self.embedder, self.config, self.settings.max_in_flight
        )

    def _report(self, result: dict[str, Any] | None = None) -> None:
        """Hand counts to Beam's metrics, on the DoFn's own thread."""
        for key, value in self.embedder.stats.snapshot().items():
            delta = int(value - self.reported.get(key, 0))
            if delta:
                name = THROTTLING_COUNTER if key == "throttled_ms" else key
                Metrics.counter(NAMESPACE, name).inc(delta)
                self.reported[key] = self.reported.get(key, 0) + delta
        if result is not None:
            self.shards_done.inc()
            self.records_read.inc(result["read"])
            self.records_embedded.inc(result["embedded"])
            self.records_dead.inc(result["dead_lettered"])

    def _drain(self, timeout: float | None) -> Iterator[dict[str, Any]]:
        """Results of the shards that finish within ``timeout`` (None: at least one)."""
        if not self.pending:
            return
        done, _ = wait(self.pending, timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            self.pending.remove(future)
            result = future.result()
            self._report(result)
            yield result

    def process(self, shard: Shard) -> Iterator[dict[str, Any]]:
        self.pending.append(self.shard_pool.submit(self._run, shard))
        full = len(self.pending) >= self.concurrent_shards
        yield from self._drain(None if full else 0)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        while self.pending:
            for result in self._drain(None):
                yield WindowedValue(result, MIN_TIMESTAMP, [GlobalWindow()])
        self._report()

    def teardown(self) -> None:
        if hasattr(self, "embedder"):
            self.embedder.close()
            self.shard_pool.shutdown(wait=False, cancel_futures=True)


class CommitManifest(beam.DoFn):
    """Writes the manifest from all commit records, then ``_SUCCESS``."""

    def __init__(
        self,
        output: str,
        storage_options: dict[str, Any],
        expected: list[str],
        config: dict[str, Any],
        description: dict[str, Any],
        started: float,
        carried: list[dict[str, Any]] | None = None,
    ) -> None:
        self.output = output
        self.storage_options = storage_options
        self.expected = expected
        self.config = config
        self.description = description
        self.started = started
        self.carried = carried or []

    def process(self, results: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        out = Output(self.output, self.storage_options)
        previous = out.read_json(out.path(MANIFEST))
        run = {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "shards": len(results),
            "read": sum(r["read"] for r in results),
            "embedded": sum(r["embedded"] for r in results),
            "dead_lettered": sum(r["dead_lettered"] for r in results),
            "tokens": sum(r["tokens"] for r in results),
            "sent_tokens": sum(r.get("sent_tokens", 0) for r in results),
            "config_fingerprint": self.description.get("config_fingerprint"),
        }
        cost = estimate_cost(
            self.description.get("backend", ""), self.description.get("model", ""),
            run["sent_tokens"], sum(r.get("sent_characters", 0) for r in results),
        )
        run["estimated_cost_usd"] = None if cost.standard is None else round(cost.standard, 6)
        run["cost_basis"] = cost.basis
        # Shards skipped as committed whose manifest entry a crash lost come back here.
        manifest = build_manifest(previous, [*self.carried, *results], self.config, self.description, run)
        missing = [name for name in self.expected if name not in manifest["shards"]]
        write_manifest(out, manifest)
        if not missing:
            # Every shard is committed, so no checkpoint can be needed any more,
            # including those a crash between a shard's commit and their removal left.
            out.remove_tree(out.path(PARTIAL_DIR))
            out.write_bytes(out.path(SUCCESS), b"")
            out.clean_staging()
        yield {"manifest": out.path(MANIFEST), "missing": missing}


class EmbedCorpus(beam.PTransform):
    """Shards in, committed output out."""

    def __init__(
        self,
        shards: list[Shard],
        backend: Backend,
        config: ShardJobConfig,
        settings: EmbedSettings,
        quota_settings: QuotaSettings,
        manifest_config: dict[str, Any],
        description: dict[str, Any],
        expected: list[str],
        concurrent_shards: int = 4,
        carried: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.shards = shards
        self.backend = backend
        self.config = config
        self.settings = settings
        self.quota_settings = quota_settings
        self.manifest_config = manifest_config
        self.description = description
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
                    self.config.output, self.config.output_storage_options, self.expected,
                    self.manifest_config, self.description, started, self.carried,
                )
            )
        )
