"""Fakes for the routing core without Beam (router, collector, worker,
DoFn): a small vector space, records, JSONL shards, and a backend that
counts every text it embeds."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from beamvec.backends.base import Backend, Limits
from beamvec.contract import Description, ShardCounts, vector_path
from beamvec.embed.embedder import Embedder, EmbedSettings
from beamvec.pipeline.worker import Worker, WorkerConfig
from beamvec.records import Record, Shard, Split, content_hash
from beamvec.route.prepare import PrepareConfig
from beamvec.route.router import Seed
from beamvec.sources import ReaderConfig
from beamvec.write.sink import Output

DIM = 4


def words(text: str) -> int:
    return len(text.split())


def vec(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)



def record(text: str, rid: str = "x", position: int = 1) -> Record:
    return Record(rid, text, content_hash(text), words(text), False, position)


class FakeBackend(Backend):
    """Vectors from the text's hash; counts every text it embeds."""

    name = "fake"

    def __init__(self) -> None:
        self.texts: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def limits(self) -> Limits:
        return Limits(max_items=8, max_request_tokens=1000, max_text_tokens=100, dimension=DIM)

    @property
    def model(self) -> str:
        return "fake-1"

    def embed(self, texts: Sequence[str], titles: Sequence[str | None] | None = None) -> np.ndarray:
        with self._lock:
            self.texts.update(texts)
        return np.stack([fake_vector(t) for t in texts])

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()  # an unpickled copy counts its own texts


def fake_vector(text: str) -> np.ndarray:
    return vec(int(content_hash(text)[:8], 16))


def make_worker(output: Path, backend: FakeBackend, seed: Seed | None = None, reuse_from=()) -> Worker:
    description = Description("fake", "fake-1", DIM, config_fingerprint="fp-fake")
    config = WorkerConfig(
        output=str(output), reader=ReaderConfig(), prepare=PrepareConfig(max_text_tokens=100),
        description=description, reuse_from=tuple(reuse_from), seed=seed,
    )
    worker = Worker(backend, Embedder(backend, EmbedSettings(max_in_flight=2)), config, max_in_flight=2)
    worker.collector.bundle_ending()  # no bundle: partial batches go once no shard is reading
    return worker


def embed_shard(output: Path, backend: FakeBackend, split: Split, seed: Seed | None = None) -> ShardCounts:
    """One shard through a worker of its own, closed afterwards: its counts."""
    worker = make_worker(output, backend, seed)
    try:
        return worker.process(split).counts
    finally:
        worker.close()
        worker.embedder.close()


def shard_file(path: Path, rows: list[tuple[str, str]]) -> Split:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows))
    return Split.whole(Shard(str(path), path.stem, path.stat().st_size, str(path.stat().st_mtime_ns)))


def read_vectors(output: Path, name: str) -> dict[str, np.ndarray]:
    table = pq.read_table(vector_path(Output(str(output)), name))
    matrix = np.asarray(table.column("vector").combine_chunks().flatten()).reshape(-1, DIM)
    return dict(zip(table.column("id").to_pylist(), matrix, strict=True))
