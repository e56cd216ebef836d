"""Reuse as a join: records and reusable vectors meet by content hash, so
each row group of a reuse source is read once per run, whatever the order of
the records, and no worker holds an index that grows with the output.

    splits ─► SplitHashes ─► (bucket, KeyChunk)  ──────────────────┐
    sources ─► ListRowGroups ─► Spread ─► ReadRowGroup              ├─► CoGroupByKey(bucket) ─► JoinBucket
                              ─► (bucket, VectorChunk) ────────────┘        ─► (split name, found batch)
    splits ─► (split name, split) ─────────────► CoGroupByKey(split name) ◄──┘
                                                  ─► SplitReuse ─► EmbedShards (a JoinedLookup per split)

A sort-merge by hash range through the run's staging area: a bucket is a
range of hashes small enough to join in one worker's memory (``BUCKET_BYTES``
of vectors). Each step writes what it found as one Arrow IPC file, a record
batch per bucket (or per split), under ``_tmp/<run id>/join/``; only
references to those batches cross the runner's shuffle, a few per (split,
bucket), so neither the runner nor a worker ever holds more than a bucket's
or a split's vectors, on the in-memory DirectRunner as on Dataflow.

The join is on the full content hash: a vector is reused only for exactly
its text. When several sources hold one text, the first source (the run's
own output, then each ``--reuse-from`` in order; files and row groups in
order) gives it, so the output does not depend on the runner's order.

The in-process index (lookup.py) stays where it wins: small reuse sources or
few records to route (``choose_join``).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beamvec.backends.base import Backend
from beamvec.contract import OutputState, read_state
from beamvec.contract import columns as col
from beamvec.errors import InputVanishedError
from beamvec.pipeline.worker import FETCH_WINDOW, WorkerConfig
from beamvec.records import Record, Split
from beamvec.route.lookup import reusable_files
from beamvec.route.prepare import prepare
from beamvec.sources import read_split
from beamvec.write.sink import TMP_DIR, Output

#: The join replaces the in-process index when the reuse sources hold at least
#: this many vectors of the run's configuration ...
JOIN_MIN_VECTORS = 250_000
#: ... and the run routes at least this many records (a few of the worker's
#: fetch windows: below that, the index's random reads cost less than reading
#: every reusable vector once).
JOIN_MIN_RECORDS = 4 * FETCH_WINDOW
#: Bytes of vectors one bucket of the join holds in a worker's memory.
BUCKET_BYTES = 64 * 1024 * 1024
#: Bytes of input a record takes, when no committed shard says better.
BYTES_PER_RECORD = 200


# -- choosing between the join and the in-process index -----------------------------


def reusable_vectors(state: OutputState, fingerprint: str, dimension: int) -> int:
    """Committed vectors of this configuration in an output, from its manifest
    and commit records (no vector file is opened)."""
    if state.description is not None and state.description.dimension != dimension:
        return 0
    return sum(
        rec.counts.embedded for rec in state.committed.values()
        if rec.config_fingerprint in (None, fingerprint)
    )


def bytes_per_record(state: OutputState) -> float:
    """Input bytes per record read, as the output's committed shards measured it."""
    sizes: dict[str, int] = {}  # every part of a shard carries the shard's size
    read = 0
    for rec in state.committed.values():
        sizes[rec.shard_name] = max(0, rec.input_size)
        read += rec.counts.read
    size = sum(sizes.values())
    return size / read if size > 0 and read > 0 else float(BYTES_PER_RECORD)


def choose_join(vectors: int, records: int) -> bool:
    """Whether reuse goes through the join: a large reuse source and enough
    records that a random order would make the index read it many times."""
    return vectors >= JOIN_MIN_VECTORS and records >= JOIN_MIN_RECORDS


def bucket_count(vectors: int, dimension: int) -> int:
    """Buckets such that one holds about ``BUCKET_BYTES`` of vectors."""
    return max(1, math.ceil(vectors * 4 * dimension / BUCKET_BYTES))


def bucket_of(content_hash: str, buckets: int) -> int:
    return int(content_hash[:8], 16) % buckets


# -- what crosses the shuffle: references to batches in the run's staging area ----------


@dataclass(frozen=True, slots=True)
class BatchRef:
    """One record batch of an Arrow IPC file under the run's ``_tmp/<run id>/join/``
    (its name there: the runner holds a few of these per split and bucket)."""

    name: str
    batch: int


@dataclass(frozen=True, slots=True)
class KeyChunk:
    """A split's distinct content hashes that fall in one bucket."""

    split: str
    ref: BatchRef  # content_hash


@dataclass(frozen=True, slots=True)
class VectorChunk:
    """The (hash, vector) rows of one row group of a reuse source that fall in one bucket."""

    rank: tuple[int, int, int]  # (source, file, row group): the first wins a text several hold
    ref: BatchRef  # content_hash, vector


@dataclass(frozen=True, slots=True)
class RowGroup:
    rank: tuple[int, int, int]
    url: str
    path: str
    group: int


def _staging(config: WorkerConfig) -> tuple[Output, str]:
    output = Output(config.output, config.storage_options, run_id=config.run_id)
    return output, output.path(TMP_DIR, *([config.run_id] if config.run_id else []), "join")


def _write(output: Output, path: str, schema: pa.Schema, parts: Sequence[pa.Table]) -> None:
    """One IPC file, one record batch per part, in order."""
    with output.fs.open(path, "wb") as fh, pa.ipc.new_file(fh, schema) as writer:
        for part in parts:
            writer.write_batch(part.combine_chunks().to_batches()[0])


def _read(output: Output, where: str, ref: BatchRef) -> pa.RecordBatch:
    with output.fs.open(f"{where}/{ref.name}", "rb") as fh:
        return pa.ipc.open_file(fh).get_batch(ref.batch)


def _by_bucket(table: pa.Table, buckets: int) -> list[tuple[int, pa.Table]]:
    """The rows of ``table`` by bucket of their content hash, buckets in order."""
    ids = np.fromiter((bucket_of(h, buckets) for h in table.column(col.CONTENT_HASH).to_pylist()),
                      np.int64, table.num_rows)
    order = np.argsort(ids, kind="stable")
    ids, table = ids[order], table.take(pa.array(order))
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, np.int64)
    stops = [*starts[1:].tolist(), len(ids)]
    return [(int(ids[a]), table.slice(a, b - a)) for a, b in zip(starts.tolist(), stops, strict=True)]


def _matrix(batch: pa.RecordBatch | pa.Table, dimension: int) -> np.ndarray:
    column = batch.column(batch.schema.get_field_index("vector"))
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return np.asarray(column.flatten(), dtype=np.float32).reshape(len(batch), dimension)


def vector_rows(hashes: Sequence[str], matrix: np.ndarray) -> pa.Table:
    dimension = matrix.shape[1] if matrix.ndim == 2 else 0
    return pa.table({
        col.CONTENT_HASH: pa.array(hashes, pa.string()),
        col.VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()), dimension),
    })


class JoinedLookup:
    """The vectors the join found for one split's texts, by full content hash:
    the split's ``Lookup`` in place of the process's index."""

    def __init__(self, found: Iterable[tuple[Sequence[str], np.ndarray]] = ()) -> None:
        self._vectors: dict[str, np.ndarray] = {}
        for hashes, matrix in found:
            for at, digest in enumerate(hashes):
                self._vectors.setdefault(digest, matrix[at])

    @classmethod
    def load(cls, output: Output, where: str, refs: Iterable[BatchRef], dimension: int) -> JoinedLookup:
        chunks = []
        for ref in refs:
            batch = _read(output, where, ref)
            chunks.append((batch.column(0).to_pylist(), _matrix(batch, dimension)))
        return cls(chunks)

    def __len__(self) -> int:
        return len(self._vectors)

    def __contains__(self, content_hash: object) -> bool:
        return content_hash in self._vectors

    def get(self, content_hash: str) -> np.ndarray | None:
        return self._vectors.get(content_hash)

    def get_many(self, content_hashes: Iterable[str]) -> Mapping[str, np.ndarray]:
        return {h: self._vectors[h] for h in content_hashes if h in self._vectors}


@dataclass(frozen=True, slots=True)
class SplitReuse:
    """A split and where the join left the vectors its texts reuse."""

    split: Split
    found: tuple[BatchRef, ...]

    def lookup(self, config: WorkerConfig, dimension: int) -> JoinedLookup:
        return JoinedLookup.load(*_staging(config), self.found, dimension)


# -- the steps -------------------------------------------------------------------------


class SplitHashes(beam.DoFn):
    """A split in, the content hashes of its records out, by bucket: the same
    reader and ``prepare`` as the worker, so the hashes are the ones it routes."""

    def __init__(self, backend: Backend, config: WorkerConfig, buckets: int) -> None:
        self.backend, self.config, self.buckets = backend, config, buckets

    def setup(self) -> None:
        self.backend.load()

    def process(self, split: Split) -> Iterator[tuple[int, KeyChunk]]:
        config, backend = self.config, self.backend
        hashes: set[str] = set()
        try:
            for raw in read_split(split, config.reader, config.storage_options):
                item = prepare(raw, config.prepare, backend.count_tokens, backend.truncate)
                if isinstance(item, Record):
                    hashes.add(item.content_hash)
        except InputVanishedError:
            return  # the worker records the split as failed
        if not hashes:
            return
        output, where = _staging(config)
        name = f"keys/{uuid.uuid4().hex}"
        parts = _by_bucket(pa.table({col.CONTENT_HASH: pa.array(sorted(hashes), pa.string())}), self.buckets)
        output.makedirs(f"{where}/keys")
        _write(output, f"{where}/{name}", parts[0][1].schema, [part for _, part in parts])
        for number, (bucket, _) in enumerate(parts):
            yield bucket, KeyChunk(split.name, BatchRef(name, number))


class ListRowGroups(beam.DoFn):
    """A reuse source in, the row groups of its vector files of this
    configuration out (on a worker: the job graph never carries file lists)."""

    def __init__(self, config: WorkerConfig, dimension: int) -> None:
        self.config, self.dimension = config, dimension

    def process(self, source: tuple[int, str]) -> Iterator[RowGroup]:
        rank, url = source
        output = Output(url, self.config.storage_options)
        wanted = pa.list_(pa.float32(), self.dimension)
        for number, path in enumerate(reusable_files(output, self.config.fingerprint, self.dimension)):
            try:
                with output.fs.open(path, "rb") as fh:
                    pf = pq.ParquetFile(fh)
                    if pf.schema_arrow.field(col.VECTOR).type != wanted:
                        continue
                    groups = pf.num_row_groups
            except Exception:  # noqa: BLE001 - gone or damaged: a miss is always safe
                continue
            for group in range(groups):
                yield RowGroup((rank, number, group), url, path, group)


class ReadRowGroup(beam.DoFn):
    """A row group in, its (hash, vector) rows out by bucket, in one staged
    file: each row group of a reuse source is read once per run."""

    def __init__(self, config: WorkerConfig, buckets: int) -> None:
        self.config, self.buckets = config, buckets

    def process(self, ref: RowGroup) -> Iterator[tuple[int, VectorChunk]]:
        source = Output(ref.url, self.config.storage_options)
        try:
            with source.fs.open(ref.path, "rb") as fh:
                table = pq.ParquetFile(fh).read_row_group(ref.group, columns=[col.CONTENT_HASH, col.VECTOR])
        except Exception:  # noqa: BLE001 - replaced or removed meanwhile: those texts are sent
            return
        if not table.num_rows:
            return
        output, where = _staging(self.config)
        name = f"vectors/{uuid.uuid4().hex}"
        parts = _by_bucket(table, self.buckets)
        output.makedirs(f"{where}/vectors")
        _write(output, f"{where}/{name}", table.schema, [part for _, part in parts])
        for number, (bucket, _) in enumerate(parts):
            yield bucket, VectorChunk(ref.rank, BatchRef(name, number))


class JoinBucket(beam.DoFn):
    """One bucket's split hashes and source vectors in; each split's found
    vectors out, as one batch of a staged file per bucket."""

    def __init__(self, config: WorkerConfig, dimension: int) -> None:
        self.config, self.dimension = config, dimension

    def process(self, element: tuple[int, dict[str, Iterable[Any]]]) -> Iterator[tuple[str, BatchRef]]:
        bucket, grouped = element
        keys: list[KeyChunk] = sorted(grouped["keys"], key=lambda c: c.split)
        if not keys:
            return
        output, where = _staging(self.config)
        asked = {chunk.split: _read(output, where, chunk.ref).column(0).to_pylist() for chunk in keys}
        wanted = {h for hashes in asked.values() for h in hashes}
        found: dict[str, np.ndarray] = {}
        for chunk in sorted(grouped["vectors"], key=lambda c: c.rank):
            batch = _read(output, where, chunk.ref)
            hashes = batch.column(0).to_pylist()
            rows = [at for at, h in enumerate(hashes) if h in wanted and h not in found]
            if rows:
                matrix = _matrix(batch, self.dimension)
                for at in rows:
                    found[hashes[at]] = matrix[at]
        parts = []
        for split, hashes in asked.items():
            hits = [h for h in hashes if h in found]
            if hits:
                parts.append((split, vector_rows(hits, np.stack([found[h] for h in hits]))))
        if not parts:
            return
        name = f"found/{bucket:06d}-{uuid.uuid4().hex}"
        output.makedirs(f"{where}/found")
        _write(output, f"{where}/{name}", parts[0][1].schema, [table for _, table in parts])
        for number, (split, _) in enumerate(parts):
            yield split, BatchRef(name, number)


def _with_found(element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[SplitReuse]:
    _, grouped = element
    found = tuple(sorted(grouped["found"], key=lambda ref: ref.name))
    for split in grouped["split"]:
        yield SplitReuse(split, found)


class JoinReuse(beam.PTransform):
    """Splits in, each with where the join left the vectors its texts reuse, out.

    Only references to staged Arrow files cross the runner's shuffle, so the
    runner holds a few bytes per (split, bucket), never the vectors: memory
    stays flat on the in-memory DirectRunner too."""

    def __init__(self, backend: Backend, config: WorkerConfig, sources: Sequence[str], vectors: int) -> None:
        super().__init__()
        self.backend, self.config, self.sources = backend, config, tuple(sources)
        self.dimension = backend.limits.dimension
        self.buckets = bucket_count(vectors, self.dimension)

    def expand(self, splits: beam.PCollection) -> beam.PCollection:
        keys = splits | "SplitHashes" >> beam.ParDo(SplitHashes(self.backend, self.config, self.buckets))
        vectors = (
            splits.pipeline
            | "Sources" >> beam.Create(list(enumerate(self.sources)))
            | "ListRowGroups" >> beam.ParDo(ListRowGroups(self.config, self.dimension))
            | "SpreadRowGroups" >> beam.Reshuffle()
            | "ReadRowGroups" >> beam.ParDo(ReadRowGroup(self.config, self.buckets))
        )
        found = (
            {"keys": keys, "vectors": vectors}
            | "ByBucket" >> beam.CoGroupByKey()
            | "JoinBuckets" >> beam.ParDo(JoinBucket(self.config, self.dimension))
        )
        named = splits | "ByName" >> beam.Map(lambda split: (split.name, split))
        return (
            {"split": named, "found": found}
            | "BySplit" >> beam.CoGroupByKey()
            | "WithFound" >> beam.FlatMap(_with_found)
        )


def join_sources(config: WorkerConfig) -> list[str]:
    """The outputs reuse reads, in the order that breaks ties: own, then --reuse-from."""
    return [config.output, *config.reuse_from] if config.reuse else []


def plan_reuse(
    config: WorkerConfig, own_state: OutputState, input_bytes: int
) -> int:
    """The reusable vectors the join would read, or 0 when the in-process index
    is the better choice for this run (see ``choose_join``)."""
    if not config.reuse:
        return 0
    dimension, fingerprint = config.description.dimension, config.fingerprint
    vectors = reusable_vectors(own_state, fingerprint, dimension)
    for url in config.reuse_from:
        vectors += reusable_vectors(read_state(Output(url, config.storage_options), check_letters=False),
                                    fingerprint, dimension)
    records = int(input_bytes / bytes_per_record(own_state))
    return vectors if choose_join(vectors, records) else 0
