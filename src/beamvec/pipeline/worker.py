"""What a worker process does with its shards: read, route, batch, embed, write, commit.

One ``Worker`` per DoFn instance holds what its open shards share: the
embedder (requests in flight), the ``Collector`` that fills requests across
shards, and the ``RunMemory`` of texts sent in this run. What the instances
of one process share is per process (Beam's ``Shared``): the quota limiter
and the ``Lookups`` of vectors already in the output. Each shard is read and
written on its own thread, streaming; results come back to it through a
queue (landing.py), so only that thread touches its files (shard_files.py).
Memory is bounded by what is in flight, not shard size.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from beamvec.backends.base import Backend
from beamvec.contract import CommitRecord, Description, ShardCounts
from beamvec.embed.collector import Collector, Result
from beamvec.embed.embedder import Embedder
from beamvec.errors import InputVanishedError, SystemicError, unwritable
from beamvec.interrupt import STOP
from beamvec.pipeline.landing import Landing
from beamvec.pipeline.shard_files import ShardSink, commit_part, committed_part
from beamvec.progress import PROGRESS
from beamvec.records import DeadLetter, Embedded, Record, Split
from beamvec.route.lookup import Lookups, checkpoint_dir
from beamvec.route.prepare import PrepareConfig
from beamvec.route.router import (
    Decision,
    Fetch,
    Lookup,
    Refusals,
    Reuse,
    Router,
    RunMemory,
    Seed,
    Send,
)
from beamvec.sources import ReaderConfig, read_split
from beamvec.write.sink import Output, checkpoint_table

LOG = logging.getLogger("beamvec")
#: Records whose reused vectors are read together (each row group they fall in
#: once), whatever their order; they wait for it, with their texts: a window
#: also closes at ``FETCH_WINDOW_CHARS`` characters, so long texts stay a few MB.
FETCH_WINDOW = 4096
FETCH_WINDOW_CHARS = 4 * 1024 * 1024
#: Texts the local model sorts by length at a time (bounded memory, less padding).
LOCAL_SORT_WINDOW = 1024


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs besides the backend; picklable, no secrets."""

    output: str
    reader: ReaderConfig
    prepare: PrepareConfig
    description: Description
    storage_options: dict[str, Any] = field(default_factory=dict)
    reuse: bool = True  # reuse vectors already embedded under this configuration
    reuse_from: tuple[str, ...] = ()  # other outputs to reuse from
    checkpoint: bool = False  # save finished batches so a crashed run loses none
    refusals: Refusals = field(default_factory=Refusals)  # texts not to send (batch lines failed for good)
    seed: Seed | None = None  # the preflight's text, its vector and the record it came from
    run_id: str = ""  # files are staged under the output's _tmp/<run_id>/
    retry_reasons: tuple[str, ...] = ()  # parts with dead letters of these reasons are redone
    lease_owner: str = ""  # the run's fencing token: a part commits only while it holds the lease

    @property
    def fingerprint(self) -> str:
        return self.description.config_fingerprint



class Worker:
    """What the shards open in one DoFn instance share; ``process`` embeds one shard."""

    def __init__(
        self, backend: Backend, embedder: Embedder, config: WorkerConfig, max_in_flight: int,
        lookups: Lookups | None = None, memory: RunMemory | None = None,
    ) -> None:
        self.backend = backend
        self.embedder = embedder
        self.config = config
        limits = backend.limits
        self.output = Output(config.output, config.storage_options, run_id=config.run_id)
        self.memory = memory or Worker.memory_for(config, limits.dimension)
        local = backend.name == "local"
        window = LOCAL_SORT_WINDOW if local else 0
        self.collector = Collector(
            embedder.submit, self._landed, limits.max_items, limits.max_request_tokens,
            # room for a full sort window to gather while the previous one is embedded
            max_outstanding=limits.max_items * (max_in_flight + 1) + 2 * max(window, limits.max_items),
            sort_window=window, max_in_flight=max_in_flight,
        )
        self.lookups = lookups or Worker.lookups_for(config, limits.dimension)
        #: What broke in a result callback: every shard waiting on this worker raises it.
        self.fault: BaseException | None = None

    @staticmethod
    def memory_for(config: WorkerConfig, dimension: int) -> RunMemory:
        """The texts a worker of ``config`` sent in this run, seeded with the
        preflight's; share one per process (``EmbedShards`` does, through
        Beam's ``Shared``), so that a text is sent once a process, not once a
        DoFn copy, and the memory's budget is a process's."""
        memory = RunMemory(dimension)
        if config.seed is not None:
            memory.seed(config.seed)
        return memory

    @staticmethod
    def lookups_for(config: WorkerConfig, dimension: int) -> Lookups:
        """The indexes a worker of ``config`` reuses vectors from; share one per
        process (``EmbedShards`` does, through Beam's ``Shared``)."""
        return Lookups(
            Output(config.output, config.storage_options, run_id=config.run_id),
            [Output(url, config.storage_options) for url in config.reuse_from],
            config.fingerprint, dimension, reuse=config.reuse,
        )

    def close(self) -> None:
        self.collector.close()

    # -- results, on the thread that finished the batch ---------------------------

    def _landed(self, batch: list[Record], result: Result | BaseException) -> None:
        """Hand a finished batch to the shards waiting for its texts. Whatever
        goes wrong here (a checkpoint that cannot be written) reaches them as
        an error: a shard must never wait for results that will not come."""
        try:
            if not isinstance(result, BaseException) and self.config.checkpoint and result[0]:
                self._checkpoint(result[0])
        except Exception as exc:  # noqa: BLE001 - every failure must reach the waiting shards
            result = exc if isinstance(exc, SystemicError) else SystemicError(str(exc))
        try:
            self._deliver(batch, result)
        except BaseException as exc:
            self.fault = exc
            raise

    def _checkpoint(self, embedded: list[Embedded]) -> None:
        """Save a finished batch's vectors so that a stopped run loses none of them."""
        path = f"{checkpoint_dir(self.output, self.config.fingerprint)}/{uuid.uuid4().hex}.parquet"
        try:
            self.output.write_table(path, checkpoint_table(embedded, self.backend.limits.dimension))
        except Exception as exc:  # noqa: BLE001 - a full disk, a store answering 503, ...
            raise unwritable(f"{self.output.url}/{path[len(self.output.root) + 1:]}", exc,
                             what="a checkpoint") from exc

    def _deliver(self, batch: list[Record], result: Result | BaseException) -> None:
        if isinstance(result, BaseException):
            for record in batch:
                for waiting, deliver in self.memory.resolve(record.content_hash, result):
                    deliver(waiting, result)
            return
        embedded, letters = result
        for row in embedded:
            for waiting, deliver in self.memory.resolve(row.record.content_hash, row.vector):
                deliver(waiting, row.vector)
        for letter in letters:
            digest = letter.content_hash or ""
            for waiting, deliver in self.memory.resolve(digest, letter):
                deliver(waiting, letter)

    # -- one shard ----------------------------------------------------------------

    def committed(self, split: Split) -> CommitRecord | None:
        """The commit record of a part a crashed or killed run already
        committed from this same input, when its file still matches it."""
        return committed_part(self.output, split, self.config.fingerprint, self.config.retry_reasons)

    def process(
        self, split: Split, on_read: Callable[[], None] | None = None, reuse: Lookup | None = None
    ) -> CommitRecord:
        """Embed one split (a whole shard or a part of one) and commit it;
        returns its commit record, or a failed one when its input vanished.

        ``on_read`` is called once the last record is read (the split may
        then wait for its results while another one starts reading).
        ``reuse``: the vectors the reuse join found for this split's texts,
        in place of the process's index (reuse_join.py)."""
        done = self.committed(split) if self.config.reuse else None
        if done is not None:
            if on_read is not None:
                on_read()
            return done
        try:
            with STOP.shard():
                return self._embed(split, on_read, reuse)
        except InputVanishedError as exc:
            LOG.warning("%s", exc)
            return self._record(split, ShardCounts(), 0.0, status="failed", message=str(exc))

    def _record(self, split: Split, counts: ShardCounts, seconds: float, **kw: str) -> CommitRecord:
        shard = split.shard
        return CommitRecord(
            name=split.name, input=shard.shown, input_fingerprint=split.fingerprint,
            counts=counts, input_size=shard.size, input_version=shard.version,
            config_fingerprint=self.config.fingerprint, seconds=round(seconds, 3),
            shard=shard.name if split.count > 1 else "", part=split.index, parts=split.count,
            shard_fingerprint=shard.fingerprint if split.count > 1 else "", **kw,
        )

    def _take(self, decision: Decision, sink: ShardSink, landing: Landing) -> None:
        """Write what is decided, or wait for what is sent or followed."""
        if isinstance(decision, DeadLetter):
            sink.dead_letter(decision)
        elif isinstance(decision, Reuse) or (isinstance(decision, Send) and decision.vector is not None):
            sink.add(Embedded(decision.record, decision.vector))
            if isinstance(decision, Reuse) and decision.embedded_before:
                PROGRESS.add_reused()
        else:
            landing.outstanding += 1
            if isinstance(decision, Send):
                self.collector.add(decision.record)

    def _take_all(self, decisions: list[Decision], sink: ShardSink, landing: Landing) -> None:
        for decision in decisions:
            self._take(decision, sink, landing)

    def _embed(
        self, split: Split, on_read: Callable[[], None] | None, reuse: Lookup | None = None
    ) -> CommitRecord:
        started = time.time()
        dimension = self.backend.limits.dimension
        sink = ShardSink(self.output, split, dimension)
        landing = Landing(lambda: self.fault or self.collector.fault)
        router = Router(
            self.config.prepare, self.backend.count_tokens, self.backend.truncate,
            self.lookups.index() if reuse is None else reuse, self.memory, landing.deliver,
            refusals=self.config.refusals, batch=self.lookups.batch_index(), shard=split.shard.path,
        )
        try:
            self.collector.reader_started()
            try:
                items = read_split(
                    split, self.config.reader, self.config.storage_options, on_bytes=PROGRESS.add_bytes
                )
                fetching: list[Record] = []
                fetching_chars = 0
                for raw in items:
                    STOP.check()  # a stopping run reads no further
                    PROGRESS.add_records()
                    routed = router.route(raw)
                    if isinstance(routed, Fetch):
                        fetching.append(routed.record)
                        fetching_chars += len(routed.record.text)
                        if len(fetching) >= FETCH_WINDOW or fetching_chars >= FETCH_WINDOW_CHARS:
                            self._take_all(router.fetch(fetching), sink, landing)
                            fetching, fetching_chars = [], 0
                    else:
                        self._take(routed, sink, landing)
                    landing.drain(sink, block=False)
                self._take_all(router.fetch(fetching), sink, landing)
            finally:
                self.collector.reader_done()
                if on_read is not None:
                    on_read()
            landing.drain(sink, block=True)
            counts = router.shard_counts(sink.embedded, sink.failed, sink.tokens, sink.truncated)
            record = self._record(split, counts, time.time() - started)
            with STOP.committing():  # a stopped run's count of committed shards stays true
                record = commit_part(self.output, split, sink, record, self.config.description,
                                     self.config.lease_owner or None)
            PROGRESS.shard_done(0)  # its bytes were counted as they were read
            return record
        except BaseException:
            sink.abort()
            raise
