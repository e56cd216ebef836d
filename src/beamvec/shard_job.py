"""What a worker does with one shard: read, prepare, batch, embed, write, commit.

Streaming from end to end: records are read lazily, batches go to the
process-wide ``Embedder`` with at most ``max_in_flight`` of this shard's
batches outstanding, and finished batches are written as Parquet row groups
in input order. Memory is bounded by the batches in flight, not by shard size.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from beamvec import __version__
from beamvec import records as r
from beamvec.backends.base import Backend
from beamvec.batching import batches
from beamvec.embedder import Embedder
from beamvec.prepare import PrepareConfig, prepare
from beamvec.progress import PROGRESS
from beamvec.records import DeadLetter, Embedded, Record, Shard
from beamvec.sink import (
    DEAD_LETTER_SCHEMA,
    Output,
    ParquetShardWriter,
    checkpoint_table,
    dead_letter_table,
    reusable_vectors,
    vector_schema,
    vector_table,
)
from beamvec.sources import ReaderConfig, read_shard

FLUSH_ROWS = 2048


@dataclass(frozen=True)
class ShardJobConfig:
    """Everything a worker needs besides the backend; picklable, no secrets."""

    output: str
    reader: ReaderConfig
    prepare: PrepareConfig
    storage_options: dict[str, Any] = field(default_factory=dict)
    output_storage_options: dict[str, Any] = field(default_factory=dict)
    config_fingerprint: str = ""
    reuse: bool = True  # reuse vectors of unchanged texts from the previous output
    checkpoint: bool = False  # save finished batches so a crashed shard resumes


class _Sink:
    """Buffers of vectors and dead letters for one shard, flushed as row groups."""

    def __init__(self, output: Output, shard: Shard, dimension: int) -> None:
        self.shard = shard
        self.dimension = dimension
        self.vectors = ParquetShardWriter(output, output.vectors(shard.name), vector_schema(dimension))
        self.letters = ParquetShardWriter(output, output.dead_letters(shard.name), DEAD_LETTER_SCHEMA)
        self.rows: list[Embedded] = []
        self.dead: list[DeadLetter] = []
        self.reasons: Counter[str] = Counter()
        self.tokens = 0
        self.truncated = 0

    def add(self, embedded: list[Embedded], letters: list[DeadLetter]) -> None:
        self.rows.extend(embedded)
        for row in embedded:
            self.tokens += row.record.tokens
            self.truncated += row.record.truncated
        for letter in letters:
            self.dead_letter(letter)
        if len(self.rows) >= FLUSH_ROWS:
            self.flush()

    def dead_letter(self, letter: DeadLetter) -> None:
        self.dead.append(letter)
        self.reasons[letter.reason] += 1
        if len(self.dead) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.vectors.write(vector_table(self.rows, self.shard.path, self.dimension))
            self.rows = []
        if self.dead:
            self.letters.write(dead_letter_table(self.dead, self.shard.path))
            self.dead = []

    def abort(self) -> None:
        self.vectors.abort()
        self.letters.abort()


#: Texts remembered per shard for in-shard deduplication; past this, repeats
#: are embedded again rather than letting memory grow with the shard.
DEDUP_CAP = 50_000


class _Known:
    """Vectors by content hash (reused or embedded in this shard) and the
    records waiting for a text already in flight."""

    def __init__(self, reusable: dict[str, np.ndarray]) -> None:
        self.vectors = reusable
        self.in_flight: set[str] = set()
        self.followers: dict[str, list[Record]] = {}
        self.added = 0

    def resolve(self, embedded: list[Embedded], letters: list[DeadLetter]) -> tuple[list[Embedded], list[DeadLetter]]:
        """The batch's results plus those of the records that share its texts."""
        extra: list[Embedded] = []
        for row in embedded:
            digest = row.record.content_hash
            self.in_flight.discard(digest)
            if self.added < DEDUP_CAP:
                self.vectors[digest] = row.vector
                self.added += 1
            extra += [Embedded(f, row.vector) for f in self.followers.pop(digest, [])]
        extra_letters: list[DeadLetter] = []
        for letter in letters:
            if letter.content_hash is None:
                continue
            self.in_flight.discard(letter.content_hash)
            for f in self.followers.pop(letter.content_hash, []):
                extra_letters.append(
                    DeadLetter(f.id, f.position, letter.reason, f"same text as {letter.id}: {letter.message}",
                               letter.raw, letter.attempts, letter.status, f.content_hash)
                )
        return embedded + extra, letters + extra_letters


def process_shard(
    shard: Shard,
    backend: Backend,
    embedder: Embedder,
    config: ShardJobConfig,
    max_in_flight: int,
) -> dict[str, Any]:
    """Embed one shard and commit it; returns its small commit record."""
    started = time.time()
    output = Output(config.output, config.output_storage_options)
    limits = backend.limits
    sink = _Sink(output, shard, limits.dimension)
    reusable = (
        reusable_vectors(output, shard.name, config.config_fingerprint, limits.dimension)
        if config.reuse else {}
    )
    from_previous = set(reusable)
    known = _Known(reusable)
    counts = Counter()
    checkpoints = 0

    def prepared() -> Iterator[Record]:
        seen: set[str] = set()
        for raw in read_shard(shard, config.reader, config.storage_options):
            counts["read"] += 1
            PROGRESS.add_records()
            item = prepare(raw, config.prepare, backend.count_tokens, backend.truncate)
            if isinstance(item, DeadLetter):
                sink.dead_letter(item)
                continue
            if item.id in seen:
                sink.dead_letter(
                    DeadLetter(item.id, item.position, r.DUPLICATE_ID,
                               "id already seen earlier in this shard", item.text[:200])
                )
                continue
            seen.add(item.id)
            vector = known.vectors.get(item.content_hash)
            if vector is not None:
                counts["reused" if item.content_hash in from_previous else "deduplicated"] += 1
                sink.add([Embedded(item, vector)], [])
            elif item.content_hash in known.in_flight:
                counts["deduplicated"] += 1
                known.followers.setdefault(item.content_hash, []).append(item)
            else:
                known.in_flight.add(item.content_hash)
                counts["sent_tokens"] += item.tokens
                counts["sent_characters"] += len(item.text) - sum(c.isspace() for c in item.text)
                yield item

    def finish(future: Future[tuple[list[Embedded], list[DeadLetter]]]) -> None:
        nonlocal checkpoints
        embedded, letters = future.result()
        if config.checkpoint and embedded:
            name = f"{checkpoints:06d}-{uuid.uuid4().hex[:8]}.parquet"
            output.write_table(f"{output.partial(shard.name)}/{name}", checkpoint_table(embedded, limits.dimension))
            checkpoints += 1
        sink.add(*known.resolve(embedded, letters))

    pending: deque[Future[tuple[list[Embedded], list[DeadLetter]]]] = deque()
    try:
        for batch in batches(prepared(), limits.max_items, limits.max_request_tokens):
            pending.append(embedder.submit(batch))
            while len(pending) >= max_in_flight or (pending and pending[0].done()):
                finish(pending.popleft())
        while pending:
            finish(pending.popleft())
        embedded = sink.vectors.rows + len(sink.rows)
        dead = sum(sink.reasons.values())
        sink.flush()
        result = {
            "name": shard.name,
            "input": shard.path,
            "input_fingerprint": shard.fingerprint,
            "input_size": shard.size,
            "input_version": shard.version,
            "status": "committed",
            "read": counts["read"],
            "embedded": embedded,
            "dead_lettered": dead,
            "dead_letters_by_reason": dict(sorted(sink.reasons.items())),
            "reused": counts["reused"],
            "deduplicated": counts["deduplicated"],
            "sent": embedded - counts["reused"] - counts["deduplicated"],
            "sent_tokens": counts["sent_tokens"],
            "sent_characters": counts["sent_characters"],
            "tokens": sink.tokens,
            "truncated": sink.truncated,
            "seconds": round(time.time() - started, 3),
        }
        if dead:
            sink.letters.commit({"shard": result, "beamvec_version": __version__})
        else:
            output.remove(output.dead_letters(shard.name))
        footer = {
            **backend.describe(),
            "beamvec_version": __version__,
            "config_fingerprint": config.config_fingerprint,
            "shard": result,
        }
        sink.vectors.commit(footer)
        output.remove_tree(output.partial(shard.name))
        PROGRESS.shard_done(shard.size)
        return result
    except BaseException:
        for future in pending:
            future.cancel()
        sink.abort()
        raise
