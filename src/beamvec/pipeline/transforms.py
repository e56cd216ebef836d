"""The pipeline's one composite transform: the run's flow, end to end.

Vectors never pass through a GroupByKey: a split is read, embedded and
written inside ``EmbedShards`` (embed_shards.py), on one worker (worker.py);
only small commit records (shard, counts, fingerprint) are gathered for the
manifest (commit.py). The work list and its splits: work_list.py.
"""

from __future__ import annotations

import time

import apache_beam as beam

from beamvec.backends.base import Backend
from beamvec.contract import RunConfig
from beamvec.embed.embedder import EmbedSettings
from beamvec.pipeline.commit import CommitManifest
from beamvec.pipeline.embed_shards import EmbedShards
from beamvec.pipeline.reuse_join import JoinReuse, join_sources
from beamvec.pipeline.work_list import PlanSplits, ReadWork
from beamvec.pipeline.worker import WorkerConfig
from beamvec.quota import QuotaSettings


class EmbedCorpus(beam.PTransform):
    """The work list in, committed output out.

        work list ─► ReadWork ─► Spread ─► PlanSplits ─► Spread ─► [JoinReuse] ─► EmbedShards ─► Gather ─► Commit
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
