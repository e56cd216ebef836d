"""One record's fate: dead letter, reuse, follow a text in flight, or send.

``run`` and ``plan`` both route every record through ``Router.route``, so a
plan is the run's prediction: the same validation, duplicate-id rule, reuse
lookup and memory of what this process already sent, and one ``ShardCounts``.

Pure apart from a lock: no Beam, no I/O. What is already embedded is asked of
a ``Lookup`` (the output, ``--reuse-from`` outputs, checkpoints); what this
process sent in this run is remembered in a ``RunMemory`` shared by every
shard the process has open, so a text repeated across shards is sent once.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from beamvec import records as r
from beamvec.contract import ShardCounts
from beamvec.records import DeadLetter, RawRecord, Record
from beamvec.route.prepare import PrepareConfig, prepare

#: Vectors of this run's texts kept for later repeats, in bytes per process.
#: Past it, the oldest are forgotten and a repeat that old is sent again.
RUN_MEMORY_BYTES = 128 * 1024 * 1024


class Lookup(Protocol):
    """Vectors already embedded under this configuration, by content hash.
    ``in`` may say yes to a hash ``get`` then misses (a key prefix matches)."""

    def get(self, content_hash: str) -> np.ndarray | None: ...

    def get_many(self, content_hashes: Iterable[str]) -> Mapping[str, np.ndarray]: ...

    def __contains__(self, content_hash: object) -> bool: ...


class NoLookup:
    def get(self, content_hash: str) -> np.ndarray | None:
        return None

    def get_many(self, content_hashes: Iterable[str]) -> Mapping[str, np.ndarray]:
        return {}

    def __contains__(self, content_hash: object) -> bool:
        return False


@dataclass(frozen=True)
class Reuse:
    record: Record
    vector: np.ndarray | None  # None only when planning (no vector is read)
    embedded_before: bool = True  # False: a repeat of a text this run sent (or batched)


@dataclass(frozen=True)
class Follow:
    """The same text is in flight: take its vector (or its failure) when it lands."""

    record: Record


@dataclass(frozen=True)
class Fetch:
    """The lookup probably holds the text's vector: read it together with
    others (``Router.fetch``), which decides reuse, or send if it is not there."""

    record: Record


@dataclass(frozen=True)
class Send:
    record: Record
    vector: np.ndarray | None = None  # set when the preflight already embedded it


Decision = DeadLetter | Reuse | Follow | Send
Routed = Decision | Fetch


@dataclass(frozen=True)
class Refusals:
    """Texts, by content hash, that must not be sent: each becomes a dead letter
    with the given reason and message (a Batch API line that failed for good)."""

    by_hash: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # hash -> (reason, message)

    def get(self, content_hash: str) -> tuple[str, str] | None:
        return self.by_hash.get(content_hash)

    def __len__(self) -> int:
        return len(self.by_hash)


@dataclass(frozen=True)
class Seed:
    """The text the driver's preflight embedded for this run, and which record
    it was taken from: only that record counts it as sent, so that a run whose
    shards land on several processes still counts it once."""

    content_hash: str
    vector: tuple[float, ...]
    shard: str  # the input path of the record's shard
    position: int


#: Where a sent or followed text's outcome goes: its vector, the dead letter
#: of the sent text, or the systemic fault that stops the run.
Deliver = Callable[[Record, "np.ndarray | DeadLetter | BaseException"], None]


class RunMemory:
    """Texts this process sent in this run: in flight (with their followers)
    and recently done (with their vectors), shared by all its open shards."""

    def __init__(self, dimension: int, budget_bytes: int = RUN_MEMORY_BYTES) -> None:
        self.capacity = max(1_000, budget_bytes // max(1, 4 * dimension))
        self._lock = threading.Lock()
        self._done: OrderedDict[str, np.ndarray | None] = OrderedDict()
        self._in_flight: dict[str, list[tuple[Record, Deliver]]] = {}
        self._seeds: dict[str, tuple[np.ndarray, tuple[str, int]]] = {}

    def seed(self, seed: Seed) -> None:
        """A text the driver's preflight already sent for this run."""
        with self._lock:
            self._seeds[seed.content_hash] = (np.asarray(seed.vector, np.float32), (seed.shard, seed.position))

    def take_seed(self, record: Record, shard: str) -> Send | None:
        """The preflight's text, when ``record`` (of the shard at input path
        ``shard``) is the record it was taken from: that record counts it as
        sent, in whatever process it lands and even when another shard has
        committed the text meanwhile, because the preflight billed it once.
        The seed stays: a bundle Beam retries reads that record again, in a
        process whose memory (shared by its DoFn copies) outlived the failure."""
        with self._lock:
            seeded = self._seeds.get(record.content_hash)
            if seeded is None or seeded[1] != (shard, record.position):
                return None
            return Send(record, seeded[0])

    def claim(self, record: Record, deliver: Deliver) -> Decision:
        """Reuse a vector this run made, follow the text in flight, or send it.

        A record that repeats the preflight's text (other than the one it
        was taken from, see ``take_seed``) reuses its vector."""
        digest = record.content_hash
        with self._lock:
            seeded = self._seeds.get(digest)
            if seeded is not None:
                return Reuse(record, seeded[0], embedded_before=False)
            if digest in self._done:
                self._done.move_to_end(digest)
                return Reuse(record, self._done[digest], embedded_before=False)
            waiting = self._in_flight.get(digest)
            if waiting is not None:
                waiting.append((record, deliver))
                return Follow(record)
            self._in_flight[digest] = [(record, deliver)]
            return Send(record)

    def remember(self, digest: str, vector: np.ndarray | None) -> bool:
        """A text embedded for this run elsewhere (a batch job): True the first
        time this process sees it, False for a repeat."""
        with self._lock:
            if digest in self._done:
                self._done.move_to_end(digest)
                return False
            self._done[digest] = vector
            while len(self._done) > self.capacity:
                self._done.popitem(last=False)
            return True

    def resolve(
        self, digest: str, outcome: np.ndarray | DeadLetter | BaseException | None
    ) -> list[tuple[Record, Deliver]]:
        """A sent text landed: remember its vector; hand back who waits for it,
        the sender first, then its followers."""
        with self._lock:
            waiting = self._in_flight.pop(digest, [])
            if not isinstance(outcome, (DeadLetter, BaseException)):
                # A row of its batch's matrix would keep the whole matrix alive
                # as long as the text is remembered (the budget counts one row).
                owned = outcome is None or outcome.base is None
                self._done[digest] = outcome if owned else outcome.copy()
                while len(self._done) > self.capacity:
                    self._done.popitem(last=False)
        return waiting

    def pending(self) -> int:
        with self._lock:
            return len(self._in_flight)


def _id_key(record_id: str) -> bytes:
    """A short digest of an id: the per-shard set of seen ids stays small."""
    return hashlib.blake2b(record_id.encode("utf-8", "surrogatepass"), digest_size=12).digest()


class Router:
    """Routes the records of one shard; counts what it decided."""

    def __init__(
        self,
        config: PrepareConfig,
        count_tokens: Callable[[str], int],
        truncate: Callable[[str, int], str],
        lookup: Lookup,
        memory: RunMemory,
        deliver: Deliver,
        planning: bool = False,
        refusals: Refusals | None = None,
        batch: Lookup | None = None,
        shard: str = "",
    ) -> None:
        self.config = config
        self.count_tokens = count_tokens
        self.truncate = truncate
        self.lookup = lookup
        self.memory = memory
        self.deliver = deliver
        self.planning = planning
        self.refusals = refusals or Refusals()
        self.batch = batch or NoLookup()  # vectors of this run's batch jobs
        self.shard = shard  # the input path of the shard routed (to recognize the preflight's record)
        self._seen: set[bytes] = set()
        self.counts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()

    def route(self, raw: RawRecord) -> Routed:
        self.counts["read"] += 1
        item = prepare(raw, self.config, self.count_tokens, self.truncate)
        if isinstance(item, DeadLetter):
            self.reasons[item.reason] += 1
            return item
        key = _id_key(item.id)
        if key in self._seen:
            self.reasons[r.DUPLICATE_ID] += 1
            return DeadLetter(item.id, item.position, r.DUPLICATE_ID,
                              "id already seen earlier in this shard", item.text[:200])
        self._seen.add(key)
        refused = self.refusals.get(item.content_hash)
        if refused is not None:
            self.reasons[refused[0]] += 1
            return DeadLetter(item.id, item.position, refused[0], refused[1], item.text[:200],
                              content_hash=item.content_hash)
        batched = self._from_batch(item)
        if batched is not None:
            return batched
        if self.planning:
            if item.content_hash in self.lookup:
                self.counts["reused"] += 1
                return Reuse(item, None)
            decision = self.memory.claim(item, self.deliver)
        else:
            decision = self.memory.take_seed(item, self.shard)
            if decision is None:
                if item.content_hash in self.lookup:
                    return Fetch(item)
                decision = self.memory.claim(item, self.deliver)
        return self._counted(decision)

    def fetch(self, records: Sequence[Record]) -> list[Decision]:
        """The decisions of records routed ``Fetch``: their vectors read in one
        ``get_many``; one not there after all is sent (or follows) as if the
        lookup had never known it."""
        found = self.lookup.get_many(rec.content_hash for rec in records)
        decisions: list[Decision] = []
        for rec in records:
            vector = found.get(rec.content_hash)
            if vector is not None:
                self.counts["reused"] += 1
                decisions.append(Reuse(rec, vector))
            else:
                decisions.append(self._counted(self.memory.claim(rec, self.deliver)))
        return decisions

    def _counted(self, decision: Reuse | Follow | Send) -> Decision:
        item = decision.record
        if isinstance(decision, Send):
            self.counts["sent"] += 1
            self.counts["sent_tokens"] += item.tokens
            self.counts["sent_characters"] += len(item.text)
            self.counts["billable_characters"] += len("".join(item.text.split()))  # split() drops what isspace() is
        else:
            self.counts["deduplicated"] += 1
        return decision

    def _from_batch(self, item: Record) -> Reuse | None:
        """A vector a batch job of this run made: the first record of its text
        in this process counts it as batch-sent, later ones as repeats."""
        if self.planning:
            if item.content_hash not in self.batch:
                return None
            vector = None
        else:
            vector = self.batch.get(item.content_hash)
            if vector is None:
                return None
        if self.memory.remember(item.content_hash, vector):
            self.counts["batch_sent"] += 1
            self.counts["batch_sent_tokens"] += item.tokens
        else:
            self.counts["deduplicated"] += 1
        return Reuse(item, vector, embedded_before=False)

    def dead_letters(self) -> int:
        return sum(self.reasons.values())

    def shard_counts(self, embedded: int, failed: Counter[str], tokens: int, truncated: int) -> ShardCounts:
        """The shard's counts once every decision has landed: ``failed`` are the
        dead letters of texts that were sent (or followed) and not embedded."""
        reasons = self.reasons + failed
        return ShardCounts(
            read=self.counts["read"],
            embedded=embedded,
            dead_lettered=sum(reasons.values()),
            dead_letters_by_reason=dict(sorted(reasons.items())),
            reused=self.counts["reused"],
            deduplicated=self.counts["deduplicated"],
            sent=self.counts["sent"],
            sent_tokens=self.counts["sent_tokens"],
            sent_characters=self.counts["sent_characters"],
            billable_characters=self.counts["billable_characters"],
            tokens=tokens,
            truncated=truncated,
            batch_sent=self.counts["batch_sent"],
            batch_sent_tokens=self.counts["batch_sent_tokens"],
        )
