"""Reuse as a join: records and reusable vectors meet by content hash, so
each row group of a reuse source is read once per run, whatever the order of
the records, and no worker holds an index that grows with the output.

    splits ─► SplitHashes ─► split keys ─► Positions ───────────────┐ (side inputs)
    sources ─► ListRowGroups ─► Spread ─► ReadRowGroup ─► ranks ─────┤
    buckets ─► Spread ─► JoinBucket ◄────────────────────────────────┘
                          ─► bucket numbers ─┐ (side input: every bucket joined)
    splits ─► WithFound ◄────────────────────┘ ─► SplitReuse ─► EmbedShards (a JoinedLookup per split)

A sort-merge by hash range through a staging folder (reuse_stage.py): a
bucket is a range of hashes small enough to join in one worker's memory
(``BUCKET_BYTES`` of vectors). Each step writes what it found as one Arrow
IPC file at a path derived from its split, row group or bucket, a batch per
bucket (or per split); what crosses the runner is a key per split and per
row group and a number per bucket, so the runner's share does not grow with
splits × buckets, and neither it nor a worker holds more than a bucket's or
a split's vectors.

The join is on the full content hash: a vector is reused only for exactly
its text. When several sources hold one text, the first source (the run's
own output, then each ``--reuse-from`` in order; files and row groups in
order) gives it, so the output does not depend on the runner's order.

`plan` runs the same steps in its own process without the vectors
(``join_in_process``), so it counts reuse by the same merge. The choice
between the join and the in-process index is reuse_choice.py's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beamvec.backends.base import Backend
from beamvec.contract import columns as col
from beamvec.errors import InputVanishedError
from beamvec.pipeline.reuse_stage import (
    HASHES,
    Stage,
    bucket_count,
    by_bucket,
    matrix_of,
    merge_bucket,
    split_key,
    vector_schema,
)
from beamvec.pipeline.worker import WorkerConfig
from beamvec.progress import PROGRESS
from beamvec.records import Record, Split
from beamvec.route.lookup import reusable_files
from beamvec.route.prepare import PrepareConfig, prepare, uncounted
from beamvec.sources import ReaderConfig, read_split
from beamvec.write.sink import TMP_DIR, Output

#: The key under which the join's steps count into ``PROGRESS``.
JOIN_STEPS = "join_steps"


class _Steps:
    """Steps of the join done in this process (a split hashed, a row group
    staged, a batch merged): a join of millions of vectors writes no record
    for minutes, and the run's liveness (job._Liveness) must see it move."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.done = 0

    def step(self) -> None:
        with self._lock:
            self.done += 1

    def snapshot(self) -> dict[str, float]:
        return {JOIN_STEPS: self.done}


STEPS = _Steps()


class _Counted(beam.DoFn):
    def setup(self) -> None:
        PROGRESS.watch(STEPS.snapshot)  # once per instance: a copy adds nothing the liveness minds


@dataclass(frozen=True)
class JoinSpec:
    """What every step of one join needs to know."""

    stage: Stage
    buckets: int
    dimension: int
    fingerprint: str
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False)
    carry_vectors: bool = True  # False for `plan`: hashes only

    @property
    def found_dimension(self) -> int | None:
        return self.dimension if self.carry_vectors else None


def run_stage(config: WorkerConfig) -> Stage:
    """A run's join folder: ``_tmp/<run id>/join/``, removed with the run's staging."""
    output = Output(config.output, config.storage_options)
    return Stage(output.path(TMP_DIR, *([config.run_id] if config.run_id else []), "join"),
                 config.storage_options)


@dataclass(frozen=True, slots=True)
class RowGroup:
    rank: tuple[int, int, int]  # (source, file, row group): the first wins a text several hold
    url: str
    path: str
    group: int


class JoinedLookup:
    """The vectors the join found for one split's texts, by full content hash:
    the split's ``Lookup`` in place of the process's index."""

    def __init__(self, found: Iterable[tuple[Sequence[str], np.ndarray]] = ()) -> None:
        self._vectors: dict[str, np.ndarray] = {}
        for hashes, matrix in found:
            for at, digest in enumerate(hashes):
                self._vectors.setdefault(digest, matrix[at])

    def __len__(self) -> int:
        return len(self._vectors)

    def __contains__(self, content_hash: object) -> bool:
        return content_hash in self._vectors

    def get(self, content_hash: str) -> np.ndarray | None:
        return self._vectors.get(content_hash)

    def get_many(self, content_hashes: Iterable[str]) -> Mapping[str, np.ndarray]:
        return {h: self._vectors[h] for h in content_hashes if h in self._vectors}


class JoinedKeys:
    """The hashes the join found for one shard's texts, without their vectors
    (`plan` asks by key only)."""

    def __init__(self, found: frozenset[str]) -> None:
        self._found = found

    def __contains__(self, content_hash: object) -> bool:
        return content_hash in self._found

    def get(self, content_hash: str) -> np.ndarray | None:
        return None

    def get_many(self, content_hashes: Iterable[str]) -> Mapping[str, np.ndarray]:
        return {}


def found_batches(stage: Stage, position: int, buckets: int) -> Iterator[pa.RecordBatch]:
    """A split's hits, bucket by bucket (``position``: its place in split-key order)."""
    if position < 0:
        return
    for bucket in range(buckets):
        batch = stage.read(stage.found(bucket), position)
        if batch.num_rows:
            yield batch


@dataclass(frozen=True, slots=True)
class SplitReuse:
    """A split and where the join left the vectors its texts reuse."""

    split: Split
    position: int  # the split's batch in every found file; -1: none
    buckets: int

    def lookup(self, config: WorkerConfig, dimension: int) -> JoinedLookup:
        batches = found_batches(run_stage(config), self.position, self.buckets)
        return JoinedLookup((b.column(0).to_pylist(), matrix_of(b, dimension)) for b in batches)


# -- the steps -------------------------------------------------------------------------


class SplitHashes(_Counted):
    """A split in, its key out, once its distinct content hashes are staged by
    bucket: the same reader, ``prepare`` and cut as the worker, so the hashes
    are the ones it routes (the token figure, which no hash holds, is not counted)."""

    def __init__(self, backend: Backend, reader: ReaderConfig, rules: PrepareConfig, spec: JoinSpec) -> None:
        self.backend, self.reader, self.rules, self.spec = backend, reader, rules, spec

    def setup(self) -> None:
        super().setup()
        self.backend.load()

    def process(self, split: Split) -> Iterator[str]:
        backend, spec = self.backend, self.spec
        hashes: set[str] = set()
        try:
            for raw in read_split(split, self.reader, spec.storage_options):
                item = prepare(raw, self.rules, uncounted, backend.truncate)
                if isinstance(item, Record):
                    hashes.add(item.content_hash)
        except InputVanishedError:
            hashes = set()  # the worker records the split as failed
        key = split_key(split.name)
        table = pa.table({col.CONTENT_HASH: pa.array(sorted(hashes), pa.string())})
        spec.stage.write(spec.stage.keys(key), HASHES, by_bucket(table, spec.buckets))
        STEPS.step()
        yield key


class ListRowGroups(_Counted):
    """A reuse source in, the row groups of its vector files of this
    configuration out (on a worker: the job graph never carries file lists)."""

    def __init__(self, spec: JoinSpec) -> None:
        self.spec = spec

    def process(self, source: tuple[int, str]) -> Iterator[RowGroup]:
        rank, url = source
        spec = self.spec
        output = Output(url, spec.storage_options)
        wanted = pa.list_(pa.float32(), spec.dimension)
        for number, path in enumerate(reusable_files(output, spec.fingerprint, spec.dimension)):
            try:
                with output.fs.open(path, "rb") as fh:
                    pf = pq.ParquetFile(fh)
                    if pf.schema_arrow.field(col.VECTOR).type != wanted:
                        continue
                    groups = pf.num_row_groups
            except Exception:  # noqa: BLE001 - gone or damaged: a miss is always safe
                continue
            finally:
                STEPS.step()
            for group in range(groups):
                yield RowGroup((rank, number, group), url, path, group)


class ReadRowGroup(_Counted):
    """A row group in, its rank out once its rows are staged by bucket: each
    row group of a reuse source is read once per run."""

    def __init__(self, spec: JoinSpec) -> None:
        self.spec = spec

    def process(self, ref: RowGroup) -> Iterator[tuple[int, int, int]]:
        spec = self.spec
        schema = vector_schema(spec.found_dimension)
        source = Output(ref.url, spec.storage_options)
        try:
            with source.fs.open(ref.path, "rb") as fh:
                table = pq.ParquetFile(fh).read_row_group(ref.group, columns=schema.names)
        except Exception:  # noqa: BLE001 - replaced or removed meanwhile: those texts are sent
            return
        STEPS.step()
        if table.num_rows:
            spec.stage.write(spec.stage.vectors(ref.rank), schema, by_bucket(table, spec.buckets))
            yield ref.rank


class JoinBucket(_Counted):
    """A bucket number in: every split's hashes and every source row group's
    rows of that bucket merged; out, once each split's hits are staged in
    split-key order, the bucket number."""

    def __init__(self, spec: JoinSpec) -> None:
        self.spec = spec

    def process(
        self, bucket: int, positions: Mapping[str, int], ranks: Iterable[tuple[int, int, int]]
    ) -> Iterator[int]:
        stage, dimension = self.spec.stage, self.spec.found_dimension
        keys = sorted(positions, key=positions.__getitem__)
        asked = [self._read(stage.keys(key), bucket).column(0).to_pylist() for key in keys]
        sources = (self._read(stage.vectors(tuple(rank)), bucket) for rank in sorted(map(tuple, ranks)))
        parts = merge_bucket(asked, sources, dimension)
        stage.write(stage.found(bucket), vector_schema(dimension), parts)
        yield bucket

    def _read(self, name: str, batch: int) -> pa.RecordBatch:
        STEPS.step()
        return self.spec.stage.read(name, batch)


def positions_of(keys: Iterable[str]) -> dict[str, int]:
    """Each split key's batch number in the found files: its place in key order."""
    return {key: at for at, key in enumerate(sorted(set(keys)))}


class WithFound(beam.DoFn):
    def __init__(self, buckets: int) -> None:
        self.buckets = buckets

    def process(self, split: Split, positions: Mapping[str, int], _joined: Iterable[int]) -> Iterator[SplitReuse]:
        yield SplitReuse(split, positions.get(split_key(split.name), -1), self.buckets)


class JoinReuse(beam.PTransform):
    """Splits in, each with where the join left the vectors its texts reuse, out.

    Only keys and numbers cross the runner (a key per split and per row
    group, a number per bucket): memory stays flat on the in-memory
    DirectRunner too, whatever the output's size."""

    def __init__(self, backend: Backend, config: WorkerConfig, sources: Sequence[str], vectors: int) -> None:
        super().__init__()
        self.backend, self.config, self.sources = backend, config, tuple(sources)
        dimension = backend.limits.dimension
        self.spec = JoinSpec(run_stage(config), bucket_count(vectors, 4 * dimension), dimension,
                             config.fingerprint, config.storage_options)

    def expand(self, splits: beam.PCollection) -> beam.PCollection:
        spec, config = self.spec, self.config
        keys = splits | "SplitHashes" >> beam.ParDo(SplitHashes(self.backend, config.reader, config.prepare, spec))
        positions = (
            keys
            | "AllSplits" >> beam.combiners.ToList()
            | "Positions" >> beam.FlatMap(lambda all_keys: positions_of(all_keys).items())
        )
        ranks = (
            splits.pipeline
            | "Sources" >> beam.Create(list(enumerate(self.sources)))
            | "ListRowGroups" >> beam.ParDo(ListRowGroups(spec))
            | "SpreadRowGroups" >> beam.Reshuffle()
            | "ReadRowGroups" >> beam.ParDo(ReadRowGroup(spec))
        )
        joined = (
            splits.pipeline
            | "Buckets" >> beam.Create(list(range(spec.buckets)))
            | "SpreadBuckets" >> beam.Reshuffle()
            | "JoinBuckets" >> beam.ParDo(
                JoinBucket(spec), beam.pvalue.AsDict(positions), beam.pvalue.AsList(ranks))
        )
        return splits | "WithFound" >> beam.ParDo(
            WithFound(spec.buckets), beam.pvalue.AsDict(positions), beam.pvalue.AsList(joined))


def join_sources(config: WorkerConfig) -> list[str]:
    """The outputs reuse reads, in the order that breaks ties: own, then --reuse-from."""
    return [config.output, *config.reuse_from] if config.reuse else []


def join_in_process(
    backend: Backend, reader: ReaderConfig, rules: PrepareConfig, spec: JoinSpec,
    splits: Sequence[Split], sources: Sequence[str],
) -> dict[str, frozenset[str]]:
    """The join's steps in this process, without the runner: each split's
    hashes the sources hold, by split name (`plan`, with hashes only)."""
    hashing = SplitHashes(backend, reader, rules, spec)
    hashing.setup()
    positions = positions_of(key for split in splits for key in hashing.process(split))
    listing, reading = ListRowGroups(spec), ReadRowGroup(spec)
    ranks = [rank for source in enumerate(sources) for group in listing.process(source)
             for rank in reading.process(group)]
    joining = JoinBucket(spec)
    for bucket in range(spec.buckets):
        for _ in joining.process(bucket, positions, ranks):
            pass
    return {
        split.name: frozenset(
            h for batch in found_batches(spec.stage, positions.get(split_key(split.name), -1), spec.buckets)
            for h in batch.column(0).to_pylist()
        )
        for split in splits
    }
