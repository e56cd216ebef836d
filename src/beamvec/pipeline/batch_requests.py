"""The Batch API's request files, written by the pipeline's workers.

    shards ─► Spread ─► PlanSplits ─► Spread ─► RouteSplit ─► (hash, text)
      ─► OnePerHash ─► by bucket ─► WriteRequestFiles ─► a listing per bucket (staging)

Each split is read and routed as the embedding workers route it (the same
reader, ``prepare``, refusals, and lookups of the output's, --reuse-from's and
earlier batch jobs' vectors, one per process): the texts it would send come
out keyed by content hash. A text several splits hold is kept once by the
runner (a combine per hash keeps the least (text, title, shard), whatever the
order). Hashes are then grouped in ``buckets`` ranges; one worker streams a
bucket into request files of at most ``max_requests`` lines and
``max_bytes`` bytes, with their key lists, at paths derived from the bucket
(a retried bundle rewrites the same files), leaving out the texts the
journal's jobs hold already (counted, never sent twice), and writes the
bucket's listing last. The driver reads the listings only: files, counts and
shard names, never a text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.utils.shared import Shared

from beamvec.backends.base import Backend
from beamvec.batchapi.journal import BatchJournal, StagedFile
from beamvec.batchapi.jsonl import BatchRequest, BatchSpec, request_line
from beamvec.batchapi.keys import KeySet
from beamvec.errors import InputVanishedError
from beamvec.pipeline.work_list import PlanSplits, ReadWork
from beamvec.pipeline.worker import Worker, WorkerConfig
from beamvec.records import Split, bucket_of
from beamvec.route.lookup import Lookups
from beamvec.route.router import Router, RunMemory, Send
from beamvec.sources import read_split
from beamvec.write.sink import Output

#: Input bytes a bucket covers: about 1 GiB of input, a few million texts, is
#: one worker's stream of request files; the rest goes to other workers.
BUCKET_INPUT_BYTES = 1 << 30


@dataclass(frozen=True)
class RequestPlan:
    """What the request stage writes, and where; picklable, no secret."""

    staging: str  # the run's batch staging folder in the output
    spec: BatchSpec
    buckets: int
    max_requests: int
    max_bytes: int
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False)

    def listing(self, bucket: int) -> str:
        return f"{self.staging}/requests/{bucket:05d}.json"

    def file(self, bucket: int, number: int, suffix: str) -> str:
        return f"{self.staging}/requests/{bucket:05d}-{number:05d}.{suffix}"


def bucket_count(input_bytes: int) -> int:
    return max(1, -(-input_bytes // BUCKET_INPUT_BYTES))


class _Process:
    """What RouteSplit's copies in one process share: the lookups (built once)."""

    def __init__(self, lookups: Lookups) -> None:
        self.lookups = lookups


class RouteSplit(beam.DoFn):
    """A split in, (content hash, (text, title, shard)) out for each text it
    would send; a repeat within the process is sent once already here."""

    def __init__(self, backend: Backend, config: WorkerConfig) -> None:
        self.backend, self.config = backend, config
        self._shared = Shared()

    def setup(self) -> None:
        self.backend.load()
        config, dimension = self.config, self.backend.limits.dimension
        self.process_state: _Process = self._shared.acquire(
            lambda: _Process(Worker.lookups_for(config, dimension)), tag=(config.output, config.run_id)
        )

    def process(self, split: Split) -> Iterator[tuple[str, tuple[str, str | None, str]]]:
        lookups, backend, config = self.process_state.lookups, self.backend, self.config
        router = Router(
            config.prepare, backend.count_tokens, backend.truncate, lookups.index(),
            RunMemory(backend.limits.dimension, budget_bytes=0), lambda record, outcome: None,
            planning=True, refusals=config.refusals, batch=lookups.batch_index(),
        )  # fmt: skip
        try:
            for raw in read_split(split, config.reader, config.storage_options):
                decision = router.route(raw)
                if isinstance(decision, Send):
                    router.memory.resolve(decision.record.content_hash, None)
                    record = decision.record
                    yield record.content_hash, (record.text, record.title, split.shard.name)
        except InputVanishedError:
            return  # the embedding worker records the shard as failed


class HeldKeys:
    """The keys of the journal's jobs not cleaned (their texts are not sent
    again), read once per process: 8 bytes a key, however many copies of
    ``WriteRequestFiles`` the process runs."""

    def __init__(self, output: str, storage_options: dict[str, Any]) -> None:
        journal = BatchJournal(output, storage_options)
        self.keys = KeySet()
        for job in journal.pending():
            for key in journal.keys(job):
                self.keys.add(key)


class WriteRequestFiles(beam.DoFn):
    """A bucket's texts in, its request files and listing written, its number out."""

    def __init__(self, plan: RequestPlan, output: str) -> None:
        self.plan, self.output_url = plan, output
        self._shared = Shared()  # one HeldKeys per worker process

    def setup(self) -> None:
        self.output = Output(self.output_url, self.plan.storage_options)
        url, options = self.output_url, self.plan.storage_options
        self.process_held: HeldKeys = self._shared.acquire(
            lambda: HeldKeys(url, options), tag=(url, self.plan.staging)
        )
        self.held = self.process_held.keys

    def process(self, element: tuple[int, Iterable[tuple[str, tuple[str, str | None, str]]]]) -> Iterator[int]:
        bucket, texts = element
        writer = _FileWriter(self.plan, self.output, bucket)
        distinct = 0
        try:
            for key, (text, title, shard) in texts:
                distinct += 1
                if key not in self.held:
                    line = request_line(BatchRequest(key, text, title), self.plan.spec) + "\n"
                    writer.add(key, line.encode("utf-8", "surrogatepass"), shard)
            writer.close()
        finally:
            writer.abort()
        listing = {"texts": distinct, "files": [asdict(f) for f in writer.files]}
        self.output.write_bytes(self.plan.listing(bucket), json.dumps(listing).encode())
        yield bucket


class _FileWriter:
    """A bucket's request files, one open at a time, each with its key list."""

    def __init__(self, plan: RequestPlan, output: Output, bucket: int) -> None:
        self.plan, self.output, self.bucket = plan, output, bucket
        self.files: list[StagedFile] = []
        self._open: tuple[Any, Any] | None = None
        self.count = self.size = 0
        self.shards: set[str] = set()

    def add(self, key: str, line: bytes, shard: str) -> None:
        if self._open is not None and (
            self.count >= self.plan.max_requests or self.size + len(line) > self.plan.max_bytes
        ):
            self.close()
        if self._open is None:
            number = len(self.files)
            paths = [self.plan.file(self.bucket, number, s) for s in ("requests.jsonl", "keys")]
            self.output.fs.makedirs(paths[0].rsplit("/", 1)[0], exist_ok=True)
            self._open = (self.output.fs.open(paths[0], "wb"), self.output.fs.open(paths[1], "wb"))
            self.count = self.size = 0
            self.shards = set()
        requests, keys = self._open
        requests.write(line)
        keys.write(key.encode() + b"\n")
        self.count += 1
        self.size += len(line)
        self.shards.add(shard)

    def close(self) -> None:
        if self._open is None:
            return
        requests, keys = self._open
        self._open = None
        requests.close()
        keys.close()
        number = len(self.files)
        self.files.append(StagedFile(
            self.plan.file(self.bucket, number, "requests.jsonl"), self.plan.file(self.bucket, number, "keys"),
            self.count, tuple(sorted(self.shards)), self.size,
        ))  # fmt: skip

    def abort(self) -> None:
        if self._open is not None:
            for fh in self._open:
                fh.close()
            self._open = None


def _least(candidates: Iterable[tuple[str, str | None, str]]) -> tuple[str, str | None, str]:
    """One of a text's occurrences, the same whatever the order: the least."""
    return min(candidates, key=lambda c: (c[0], c[1] or "", c[2]))


class WriteRequests(beam.PTransform):
    """The staged shard list in, the request files of the texts to send written."""

    def __init__(self, shards: str, backend: Backend, config: WorkerConfig, plan: RequestPlan,
                 split_bytes: int) -> None:  # fmt: skip
        super().__init__()
        self.shards, self.backend, self.config, self.plan = shards, backend, config, plan
        self.split_bytes = split_bytes

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        buckets = self.plan.buckets
        return (
            pbegin
            | "Shards" >> beam.Create([self.shards])
            | "ReadShards" >> beam.ParDo(ReadWork(self.config.output, self.config.storage_options))
            | "SpreadShards" >> beam.Reshuffle()
            | "PlanSplits" >> beam.ParDo(PlanSplits(self.config, self.split_bytes))
            | "SpreadSplits" >> beam.Reshuffle()
            | "RouteSplit" >> beam.ParDo(RouteSplit(self.backend, self.config))
            | "OnePerHash" >> beam.CombinePerKey(_least)
            | "ByBucket" >> beam.Map(lambda kv: (bucket_of(kv[0], buckets), kv))
            | "Buckets" >> beam.GroupByKey()
            | "WriteRequestFiles" >> beam.ParDo(WriteRequestFiles(self.plan, self.config.output))
        )


def read_listings(plan: RequestPlan, output: Output) -> tuple[list[StagedFile], int]:
    """The staged request files of every bucket, in bucket order, and the
    distinct texts the run needs from batch jobs (those held included)."""
    files: list[StagedFile] = []
    texts = 0
    for bucket in range(plan.buckets):
        listing = output.read_json(plan.listing(bucket))
        if listing is None:
            continue  # a bucket without a text
        texts += int(listing["texts"])
        files += [
            StagedFile(f["requests"], f["keys"], f["count"], tuple(f["shards"]), f.get("size", 0))
            for f in listing["files"]
        ]
    return files, texts
