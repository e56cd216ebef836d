"""Vectors already embedded, found by content hash, without loading them all.

The index holds, per vector, a 64-bit prefix of its content hash, the file it
is in and its row: 20 bytes a vector in three sorted numpy arrays (20 MB for
a million). A hit reads the row group that holds the vector (pyarrow, one
range read on object stores) and checks the full hash there, so a prefix
collision or a file rewritten since the index was built is a miss, never a
wrong vector. Workers look up a window of records at once (``get_many``),
one read per row group the window falls in, and a few decoded row groups are
cached: a rerun in the output's order reads each row group about once, and
one in another order about once per window.

Why not a dict of vectors: at a million 3,072-dim vectors that is 12 GB per
worker. Large reuse sources routed in bulk go through the join instead
(reuse_join.py, chosen by ``reuse_choice.plan_reuse``): it reads each row
group once per run whatever the records' order. See docs/reuse-at-scale.md.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beamvec.contract import (
    PARTIAL_DIR,
    Description,
    OutputState,
    description_of,
    name_of,
    read_state,
)
from beamvec.contract import columns as col
from beamvec.errors import UsageError
from beamvec.route.router import Lookup, NoLookup
from beamvec.write.sink import Output

#: Decoded row groups kept per process, in bytes of vectors.
CACHE_BYTES = 96 * 1024 * 1024
SCAN_ROWS = 65_536


def hash_key(content_hash: str) -> int:
    return int(content_hash[:16], 16)


@dataclass(frozen=True)
class Source:
    """One output to reuse from (the run's own, or a --reuse-from)."""

    url: str
    storage_options: tuple[tuple[str, object], ...] = ()

    def open(self) -> Output:
        return Output(self.url, dict(self.storage_options))


def checkpoint_dir(output: Output, fingerprint: str) -> str:
    """Vectors of finished batches of this configuration not yet committed."""
    return output.path(PARTIAL_DIR, fingerprint)


#: Checkpoints of vectors collected from Batch API jobs: ``batch-<job id>.parquet``.
BATCH_PREFIX = "batch-"


def batch_checkpoint(output: Output, fingerprint: str, job_id: str) -> str:
    return f"{checkpoint_dir(output, fingerprint)}/{BATCH_PREFIX}{job_id}.parquet"


def reusable_files(
    output: Output, fingerprint: str, dimension: int, state: OutputState | None = None
) -> list[str]:
    """The vector files (and checkpoints) of ``output`` made with this
    configuration; ``state``: the output's, when the caller has read it already."""
    state = state or read_state(output, check_letters=False)
    files = [
        path for path in state.files
        if (rec := state.committed.get(name_of(path)))
        and rec.config_fingerprint in (None, fingerprint)
        and (state.description is None or state.description.dimension == dimension)
    ]
    return files + list(list_parquet_under(output, checkpoint_dir(output, fingerprint)))


def list_parquet_under(output: Output, path: str) -> list[str]:
    try:
        return sorted(p for p in output.fs.find(path) if p.endswith(".parquet"))
    except FileNotFoundError:
        return []


class VectorIndex:
    """Content hash -> vector over a set of Parquet files of one dimension."""

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        self._files: list[tuple[Output, str, np.ndarray]] = []  # output, path, row-group starts
        self._keys = np.zeros(0, np.uint64)
        self._where = np.zeros(0, np.int64)  # file index << 40 | row
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], tuple[list[str], np.ndarray]] = OrderedDict()
        self._cache_rows = max(4096, CACHE_BYTES // (4 * dimension))
        self.reads = 0  # row groups read from storage (cache misses)

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def build(cls, sources: Sequence[tuple[Output, Iterable[str]]], dimension: int) -> VectorIndex:
        index = cls(dimension)
        keys: list[np.ndarray] = []
        where: list[np.ndarray] = []
        for output, paths in sources:
            for path in paths:
                found = index._scan(output, path)
                if found is None:
                    continue
                file_keys, starts = found
                number = len(index._files)
                index._files.append((output, path, starts))
                keys.append(file_keys)
                where.append((np.int64(number) << 40) | np.arange(len(file_keys), dtype=np.int64))
        if keys:
            all_keys = np.concatenate(keys)
            order = np.argsort(all_keys, kind="stable")
            index._keys = all_keys[order]
            index._where = np.concatenate(where)[order]
        return index

    def _scan(self, output: Output, path: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The hash keys of one file and where its row groups start."""
        try:
            with output.fs.open(path, "rb") as fh:
                pf = pq.ParquetFile(fh, pre_buffer=False)
                if pf.schema_arrow.field(col.VECTOR).type != pa.list_(pa.float32(), self.dimension):
                    return None
                sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
                keys = [
                    np.fromiter((hash_key(h) for h in batch.column(0).to_pylist()), np.uint64)
                    for batch in pf.iter_batches(SCAN_ROWS, columns=[col.CONTENT_HASH])
                ]
        except (FileNotFoundError, KeyError):
            return None  # replaced or removed meanwhile; a miss is always safe
        except Exception:  # noqa: BLE001 - a damaged file is reported by read_state/verify
            return None
        starts = np.cumsum([0, *sizes])
        return (np.concatenate(keys) if keys else np.zeros(0, np.uint64)), starts

    def __contains__(self, content_hash: object) -> bool:
        if not isinstance(content_hash, str) or not len(self._keys):
            return False
        key = np.uint64(hash_key(content_hash))
        i = int(np.searchsorted(self._keys, key))
        return i < len(self._keys) and self._keys[i] == key

    def get(self, content_hash: str) -> np.ndarray | None:
        return self.get_many([content_hash]).get(content_hash)

    def get_many(self, content_hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """The vectors of those of ``content_hashes`` found, reading each row
        group they fall in once, in file order: records in another order than
        the output's (a re-export that shuffled them) cost a read per row
        group per call, not one per record. Each vector is a copy, so that
        rows kept until their shard flushes do not pin whole row groups."""
        wanted: dict[tuple[int, int], list[tuple[int, str]]] = {}
        for digest in set(content_hashes):
            for file_no, group, at in self._candidates(digest):
                wanted.setdefault((file_no, group), []).append((at, digest))
        found: dict[str, np.ndarray] = {}
        for file_no, group in sorted(wanted):
            hashes, matrix = self._group(file_no, group)
            for at, digest in wanted[(file_no, group)]:
                if digest not in found and at < len(hashes) and hashes[at] == digest:
                    found[digest] = matrix[at].copy()
        return found

    def _candidates(self, content_hash: str) -> list[tuple[int, int, int]]:
        """(file, row group, row in it) of every vector whose key matches."""
        if not len(self._keys):
            return []
        key = np.uint64(hash_key(content_hash))
        lo = int(np.searchsorted(self._keys, key, "left"))
        hi = int(np.searchsorted(self._keys, key, "right"))
        out = []
        for where in self._where[lo:hi].tolist():
            file_no, row = where >> 40, where & ((1 << 40) - 1)
            starts = self._files[file_no][2]
            group = int(np.searchsorted(starts, row, "right")) - 1
            out.append((file_no, group, row - int(starts[group])))
        return out

    def _group(self, file_no: int, group: int) -> tuple[list[str], np.ndarray]:
        with self._lock:
            cached = self._cache.get((file_no, group))
            if cached is not None:
                self._cache.move_to_end((file_no, group))
                return cached
        output, path, _ = self._files[file_no]
        hashes: list[str] = []
        matrix = np.zeros((0, self.dimension), np.float32)
        with contextlib.suppress(FileNotFoundError, OSError, IndexError):
            with output.fs.open(path, "rb") as fh:
                table = pq.ParquetFile(fh).read_row_group(group, columns=[col.CONTENT_HASH, col.VECTOR])
            hashes = table.column(col.CONTENT_HASH).to_pylist()
            flat = np.asarray(table.column(col.VECTOR).combine_chunks().flatten(), dtype=np.float32)
            matrix = flat.reshape(len(hashes), self.dimension)
        with self._lock:
            self.reads += 1
            self._cache[(file_no, group)] = (hashes, matrix)
            rows = sum(len(h) for h, _ in self._cache.values())
            while rows > self._cache_rows and len(self._cache) > 1:
                _, (old, _) = self._cache.popitem(last=False)
                rows -= len(old)
        return hashes, matrix


def check_reuse_source(ours: Description, source: Output) -> None:
    """Refuse a --reuse-from output made with another configuration, in one line."""
    state = read_state(source)
    if state.manifest is None and not state.committed:
        raise UsageError(f"--reuse-from {source.url}: no beamvec output there; check the path")
    theirs = description_of(source, state.description, state.files)
    fingerprints = {rec.config_fingerprint for rec in state.committed.values()} - {None}
    if theirs is not None and theirs.config_fingerprint:
        fingerprints.add(theirs.config_fingerprint)
    if fingerprints and fingerprints != {ours.config_fingerprint}:
        what = ", ".join(ours.differences(theirs)) if theirs else "another configuration"
        raise UsageError(
            f"--reuse-from {source.url} holds vectors of {what}; reuse needs the same backend, "
            "model, task type, dimension and text rules: drop that --reuse-from"
        )


def build_index(
    own: Output | None, reuse_from: Sequence[Output], fingerprint: str, dimension: int,
    own_state: OutputState | None = None,
) -> VectorIndex:
    sources = [(own, reusable_files(own, fingerprint, dimension, own_state))] if own else []
    sources += [(o, reusable_files(o, fingerprint, dimension)) for o in reuse_from]
    return VectorIndex.build(sources, dimension)


def build_batch_index(own: Output, fingerprint: str, dimension: int) -> VectorIndex:
    """Vectors collected from this output's batch jobs (not yet committed), so a
    worker can count them as billed through batch rather than reused."""
    files = [
        path for path in list_parquet_under(own, checkpoint_dir(own, fingerprint))
        if path.rsplit("/", 1)[-1].startswith(BATCH_PREFIX)
    ]
    return VectorIndex.build([(own, files)], dimension)


class Lookups:
    """A process's indexes of reusable vectors: built once, on first use.

    Beam runs a DoFn instance per thread, several to a process (Dataflow: up
    to 12); one ``Lookups`` per process (``Shared``, see pipeline/embed_shards.py) reads
    the outputs' hash columns once and holds one index and one row-group
    cache, not one per thread."""

    def __init__(
        self, own: Output, reuse_from: Sequence[Output], fingerprint: str, dimension: int, reuse: bool = True
    ) -> None:
        self.own, self.reuse_from, self.reuse = own, tuple(reuse_from), reuse
        self.fingerprint, self.dimension = fingerprint, dimension
        self._index: VectorIndex | None = None
        self._batch_index: VectorIndex | None = None
        self._lock = threading.Lock()
        self.builds = 0  # indexes built: what sharing saves

    def index(self) -> Lookup:
        """The output's committed vectors, its checkpoints and every
        --reuse-from output of this configuration (none when reuse is off)."""
        if not self.reuse:
            return NoLookup()
        with self._lock:
            if self._index is None:
                self._index = build_index(self.own, self.reuse_from, self.fingerprint, self.dimension)
                self.builds += 1
            return self._index

    def batch_index(self) -> VectorIndex:
        """Vectors this output's batch jobs made (checkpoints ``batch-*.parquet``)."""
        with self._lock:
            if self._batch_index is None:
                self._batch_index = build_batch_index(self.own, self.fingerprint, self.dimension)
                self.builds += 1
            return self._batch_index
