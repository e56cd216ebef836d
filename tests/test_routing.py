"""The reuse core without Beam: Router decisions and counts, RunMemory,
VectorIndex over small Parquet files, the Collector with a fake submit, and a
Worker with a fake backend."""

from __future__ import annotations

import json
import pickle
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from beamvec import records as r
from beamvec.backends.base import Backend, Limits
from beamvec.contract import Description, ShardCounts, read_state, vector_path
from beamvec.embed.collector import Collector
from beamvec.embed.embedder import Embedder, EmbedSettings
from beamvec.pipeline import worker as worker_module
from beamvec.pipeline.transforms import EmbedShards, PerProcess
from beamvec.pipeline.worker import Worker, WorkerConfig
from beamvec.quota import Limiter, QuotaSettings
from beamvec.records import DeadLetter, Embedded, RawRecord, Record, Shard, Split, content_hash
from beamvec.route.lookup import Lookups, VectorIndex
from beamvec.route.prepare import PrepareConfig
from beamvec.route.router import Fetch, Follow, NoLookup, Reuse, Router, RunMemory, Seed, Send
from beamvec.sources import ReaderConfig
from beamvec.write.sink import Output, vector_table

DIM = 4


def words(text: str) -> int:
    return len(text.split())


def keep(text: str, limit: int) -> str:
    return text


def vec(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


class DictLookup:
    """A lookup over a dict, as VectorIndex answers."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors
        self.asked: list[str] = []

    def get(self, content_hash: str) -> np.ndarray | None:
        self.asked.append(content_hash)
        return self.vectors.get(content_hash)

    def get_many(self, content_hashes) -> dict[str, np.ndarray]:
        return {h: v for h in content_hashes if (v := self.get(h)) is not None}

    def __contains__(self, content_hash: object) -> bool:
        return content_hash in self.vectors


def router(memory: RunMemory | None = None, lookup=None, planning: bool = False, shard: str = "",
           delivered: list | None = None) -> Router:
    sink = delivered if delivered is not None else []
    return Router(
        PrepareConfig(), words, keep, lookup or NoLookup(), memory or RunMemory(DIM),
        lambda record, outcome: sink.append((record.id, outcome)), planning=planning, shard=shard,
    )


def record(text: str, rid: str = "x", position: int = 1) -> Record:
    return Record(rid, text, content_hash(text), words(text), False, position)


# -- Router --------------------------------------------------------------------------


def test_router_dead_letters_and_duplicate_ids():
    rt = router()
    assert isinstance(rt.route(RawRecord(1, "a", "first text")), Send)
    missing = rt.route(RawRecord(2, "b", None))
    empty = rt.route(RawRecord(3, "c", "   "))
    again = rt.route(RawRecord(4, "a", "another text under the same id"))
    assert isinstance(missing, DeadLetter) and missing.reason == r.MISSING_TEXT
    assert isinstance(empty, DeadLetter) and empty.reason == r.EMPTY_TEXT
    assert isinstance(again, DeadLetter) and again.reason == r.DUPLICATE_ID and again.id == "a"
    assert rt.dead_letters() == 3
    assert rt.counts["read"] == 4 and rt.counts["sent"] == 1
    counts = rt.shard_counts(embedded=1, failed=Counter(), tokens=2, truncated=0)
    assert counts.read == counts.embedded + counts.dead_lettered == 4
    assert counts.dead_letters_by_reason == {r.DUPLICATE_ID: 1, r.EMPTY_TEXT: 1, r.MISSING_TEXT: 1}


def test_router_counts_what_a_send_bills():
    rt = router()
    decision = rt.route(RawRecord(1, "a", "  one two  three "))  # nfc trims the ends
    assert isinstance(decision, Send) and decision.vector is None
    assert decision.record.text == "one two  three"
    assert rt.counts["sent"] == 1
    assert rt.counts["sent_tokens"] == 3
    assert rt.counts["sent_characters"] == 14
    assert rt.counts["billable_characters"] == 11  # whitespace is not billed
    # nor is any other whitespace: ideographic space, no-break space, the ASCII separators
    rt.route(RawRecord(2, "b", "a\u3000b\u00a0c\x1cd\u2028e"))
    assert rt.counts["billable_characters"] == 11 + 5


def test_router_reuses_from_the_lookup_before_memory():
    known = vec(1)
    lookup = DictLookup({content_hash("seen before"): known})
    memory = RunMemory(DIM)
    rt = router(memory, lookup)
    routed = rt.route(RawRecord(1, "a", "seen before"))
    assert isinstance(routed, Fetch) and lookup.asked == []  # read later, with others
    assert isinstance(rt.route(RawRecord(2, "b", "never seen")), Send)
    (decision,) = rt.fetch([routed.record])
    assert isinstance(decision, Reuse) and decision.vector is known
    assert (rt.counts["reused"], rt.counts["sent"], rt.counts["deduplicated"]) == (1, 1, 0)
    assert memory.pending() == 1  # only the sent text is in flight
    # planning asks the index by key only and reads no vector
    plan = router(RunMemory(DIM), lookup, planning=True)
    decision = plan.route(RawRecord(1, "a", "seen before"))
    assert isinstance(decision, Reuse) and decision.vector is None
    assert lookup.asked == [content_hash("seen before")]  # the run's fetch above, no other read


class PrefixLookup(DictLookup):
    """Says yes to every hash, as a key prefix shared by another text would."""

    def __contains__(self, content_hash: object) -> bool:
        return True


def test_a_text_the_lookup_only_seemed_to_hold_is_sent_once_and_billed():
    """A prefix match that the full hash then refuses: the record is sent
    (once, the second record of the text follows it) and counted as sent."""
    memory = RunMemory(DIM)
    rt = router(memory, PrefixLookup({}))
    first = rt.route(RawRecord(1, "a", "not there after all"))
    second = rt.route(RawRecord(2, "b", "not there after all"))
    assert isinstance(first, Fetch) and isinstance(second, Fetch)
    decisions = rt.fetch([first.record, second.record])
    assert [type(d) for d in decisions] == [Send, Follow]
    assert (rt.counts["reused"], rt.counts["sent"], rt.counts["deduplicated"]) == (0, 1, 1)
    assert rt.counts["sent_tokens"] == 4 and memory.pending() == 1


def test_a_text_in_flight_is_followed_across_shards_and_lands_on_both():
    memory = RunMemory(DIM)
    got_a: list = []
    got_b: list = []
    shard_a = router(memory, delivered=got_a)
    shard_b = router(memory, delivered=got_b)
    sent = shard_a.route(RawRecord(1, "a1", "shared text"))
    followed = shard_b.route(RawRecord(7, "b7", "shared text"))
    also = shard_b.route(RawRecord(8, "b8", "shared text"))
    assert isinstance(sent, Send) and isinstance(followed, Follow) and isinstance(also, Follow)
    assert shard_a.counts["sent"] == 1 and shard_b.counts["deduplicated"] == 2 and shard_b.counts["sent"] == 0
    vector = vec(2)
    waiting = memory.resolve(content_hash("shared text"), vector)
    assert [w.id for w, _ in waiting] == ["a1", "b7", "b8"]  # the sender first
    for who, deliver in waiting:
        deliver(who, vector)
    assert [i for i, _ in got_a] == ["a1"] and [i for i, _ in got_b] == ["b7", "b8"]
    assert memory.pending() == 0
    # landed: a later repeat reuses the vector this run made
    later = shard_b.route(RawRecord(9, "b9", "shared text"))
    assert isinstance(later, Reuse) and later.vector is vector
    assert shard_b.counts["deduplicated"] == 3


def test_a_failed_text_is_not_remembered():
    memory = RunMemory(DIM)
    rt = router(memory)
    assert isinstance(rt.route(RawRecord(1, "a", "bad text")), Send)
    assert isinstance(rt.route(RawRecord(2, "b", "bad text")), Follow)
    letter = DeadLetter("a", 1, r.BAD_REQUEST, "rejected")
    assert [w.id for w, _ in memory.resolve(content_hash("bad text"), letter)] == ["a", "b"]
    assert isinstance(rt.route(RawRecord(3, "c", "bad text")), Send)  # tried again, not a stale failure


def test_the_preflight_seed_is_sent_by_its_own_record_once_across_processes():
    text = "the preflight's text"
    seed = Seed(content_hash(text), tuple(float(x) for x in vec(3)), "in/b.jsonl", 5)
    # process 1 holds shard a, which repeats the text; process 2 holds shard b, its origin
    one, two = RunMemory(DIM), RunMemory(DIM)
    one.seed(seed)
    two.seed(seed)
    a = router(one, shard="in/a.jsonl")
    b = router(two, shard="in/b.jsonl")
    repeat = a.route(RawRecord(5, "a5", text))  # same position, another shard
    origin = b.route(RawRecord(5, "b5", text))
    assert isinstance(repeat, Reuse) and isinstance(origin, Send)
    np.testing.assert_array_equal(repeat.vector, np.float32(seed.vector))
    np.testing.assert_array_equal(origin.vector, np.float32(seed.vector))
    assert a.counts["sent"] + b.counts["sent"] == 1  # billed once, by the preflight
    assert (a.counts["deduplicated"], b.counts["deduplicated"]) == (1, 0)
    assert one.pending() == two.pending() == 0  # nothing goes to the API
    # in one process, a repeat after the origin reuses it too
    again = b.route(RawRecord(6, "b6", text))
    assert isinstance(again, Reuse) and b.counts["sent"] == 1
    # a process that starts after shard a committed the text: its origin record
    # still counts the preflight's call, not a reuse from the output
    late = RunMemory(DIM)
    late.seed(seed)
    c = router(late, DictLookup({seed.content_hash: np.float32(seed.vector)}), shard="in/b.jsonl")
    origin = c.route(RawRecord(5, "b5", text))
    assert isinstance(origin, Send) and origin.vector is not None
    assert (c.counts["sent"], c.counts["reused"]) == (1, 0)


def test_run_memory_keeps_a_row_not_the_batch_it_came_in():
    """A response's vectors are rows of one matrix; the memory's budget counts
    one row a text, so a remembered row must not keep the whole matrix alive."""
    memory = RunMemory(DIM)
    batch = np.stack([vec(i) for i in range(100)])
    for i in range(100):
        memory.claim(record(f"text {i}"), lambda *a: None)
        memory.resolve(content_hash(f"text {i}"), batch[i])
    hit = memory.claim(record("text 7"), lambda *a: None)
    assert isinstance(hit, Reuse) and hit.vector.base is None
    np.testing.assert_array_equal(hit.vector, vec(7))


def test_run_memory_forgets_the_oldest_past_its_budget():
    memory = RunMemory(DIM, budget_bytes=1)  # floored at 1,000 vectors
    assert memory.capacity == 1000
    for i in range(1000):
        assert isinstance(memory.claim(record(f"text {i}"), lambda *a: None), Send)
        memory.resolve(content_hash(f"text {i}"), vec(i))
    assert isinstance(memory.claim(record("text 0"), lambda *a: None), Reuse)  # now the newest
    assert isinstance(memory.claim(record("text 1000"), lambda *a: None), Send)
    memory.resolve(content_hash("text 1000"), vec(1000))  # evicts the oldest: text 1
    assert isinstance(memory.claim(record("text 1"), lambda *a: None), Send)
    hit = memory.claim(record("text 0"), lambda *a: None)
    assert isinstance(hit, Reuse)
    np.testing.assert_array_equal(hit.vector, vec(0))


# -- VectorIndex ---------------------------------------------------------------------


def write_vectors(path: Path, rows: Sequence[tuple[str, str, np.ndarray]], dim: int = DIM,
                  row_group: int | None = None) -> None:
    """(id, content hash, vector) rows in the output's vector format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = vector_table(
        [Embedded(Record(i, "t", h, 1, False, n + 1), v) for n, (i, h, v) in enumerate(rows)], "in", dim
    )
    pq.write_table(table, path, row_group_size=row_group)


def test_vector_index_hits_and_misses_across_files_and_row_groups(tmp_path):
    out = Output(str(tmp_path))
    hashes = [content_hash(f"text {i}") for i in range(100)]
    write_vectors(tmp_path / "a.parquet", [(f"a{i}", hashes[i], vec(i)) for i in range(60)], row_group=16)
    write_vectors(tmp_path / "b.parquet", [(f"b{i}", hashes[i], vec(i)) for i in range(60, 100)], row_group=16)
    write_vectors(tmp_path / "wide.parquet", [("w", content_hash("wide"), vec(0, 8))], dim=8)
    paths = [str(tmp_path / n) for n in ("a.parquet", "b.parquet", "wide.parquet")]
    index = VectorIndex.build([(out, paths)], DIM)
    assert len(index) == 100  # the 8-dim file is not ours
    assert pq.ParquetFile(tmp_path / "a.parquet").num_row_groups == 4
    for i in (0, 15, 16, 59, 60, 99, 47):
        np.testing.assert_array_equal(index.get(hashes[i]), vec(i))
        assert hashes[i] in index
    for missing in (content_hash("text 100"), content_hash("wide")):
        assert index.get(missing) is None and missing not in index
    assert len(VectorIndex.build([], DIM)) == 0 and VectorIndex(DIM).get(hashes[0]) is None


def test_a_64_bit_prefix_collision_is_resolved_by_the_full_hash(tmp_path):
    out = Output(str(tmp_path))
    prefix = content_hash("collide")[:16]
    first, second, absent = (prefix + c * 48 for c in "abc")
    write_vectors(tmp_path / "one.parquet", [("1", first, vec(1))])
    write_vectors(tmp_path / "two.parquet", [("2", second, vec(2))])
    index = VectorIndex.build([(out, [str(tmp_path / "one.parquet"), str(tmp_path / "two.parquet")])], DIM)
    np.testing.assert_array_equal(index.get(first), vec(1))
    np.testing.assert_array_equal(index.get(second), vec(2))
    assert index.get(absent) is None  # same 64 bits, another text: a miss, never a wrong vector
    # ``in`` (what plan asks) looks at the 64-bit key only: a collision there is
    # a 1 in 2**64 chance per pair of texts, and the run still verifies.
    assert absent in index


def test_a_window_in_random_order_reads_each_row_group_once_and_pins_none(tmp_path, monkeypatch):
    """A re-export that shuffled the records: looked up one by one with a
    cache of one row group, nearly every hit reads a row group; looked up as
    one window, each row group is read once. The vectors are copies, so rows
    waiting for their shard's flush do not keep whole row groups alive."""
    out = Output(str(tmp_path))
    hashes = [content_hash(f"text {i}") for i in range(256)]
    write_vectors(tmp_path / "a.parquet", [(f"a{i}", hashes[i], vec(i)) for i in range(128)], row_group=16)
    write_vectors(tmp_path / "b.parquet", [(f"b{i}", hashes[i], vec(i)) for i in range(128, 256)], row_group=16)
    paths = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    shuffled = list(np.random.default_rng(3).permutation(256))
    wanted = [hashes[i] for i in shuffled] + [content_hash("never embedded")]

    one_by_one = VectorIndex.build([(out, paths)], DIM)
    monkeypatch.setattr(one_by_one, "_cache_rows", 16)  # room for one row group
    for h in wanted:
        one_by_one.get(h)
    assert one_by_one.reads > 200  # 256 hits over 16 row groups, in random order

    window = VectorIndex.build([(out, paths)], DIM)
    monkeypatch.setattr(window, "_cache_rows", 16)
    found = window.get_many(wanted)
    assert window.reads == 16  # 2 files x 8 row groups of 16
    assert sorted(found) == sorted(hashes)
    for i in shuffled:
        np.testing.assert_array_equal(found[hashes[i]], vec(i))
        assert found[hashes[i]].base is None  # its own memory, not a view of a row group


def test_a_file_rewritten_after_the_index_was_built_is_a_miss(tmp_path):
    out = Output(str(tmp_path))
    path = tmp_path / "v.parquet"
    hashes = [content_hash(f"text {i}") for i in range(4)]
    write_vectors(path, [(str(i), hashes[i], vec(i)) for i in range(4)])
    index = VectorIndex.build([(out, [str(path)])], DIM)
    # the same texts in another order, and one replaced
    write_vectors(path, [("3", hashes[3], vec(3)), ("x", content_hash("new"), vec(9)),
                         ("2", hashes[2], vec(2)), ("1", hashes[1], vec(1))])
    for moved in (0, 1, 3):  # their rows now hold other texts
        assert index.get(hashes[moved]) is None
    np.testing.assert_array_equal(index.get(hashes[2]), vec(2))  # still at its row: right vector
    path.unlink()
    fresh = VectorIndex(DIM)
    assert fresh.get(hashes[2]) is None
    assert VectorIndex.build([(out, [str(path)])], DIM).get(hashes[2]) is None  # removed: skipped


# -- Collector -----------------------------------------------------------------------


class FakeSubmit:
    """Records every batch; completes it at once or when told."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.batches: list[list[Record]] = []
        self.futures: list[Future] = []
        self.lock = threading.Lock()

    def __call__(self, batch: list[Record]) -> Future:
        future: Future = Future()
        with self.lock:
            self.batches.append(batch)
            self.futures.append(future)
        if not self.hold:
            future.set_result(([Embedded(x, vec(0)) for x in batch], []))
        return future

    def release(self) -> int:
        with self.lock:
            todo = [f for f in self.futures if not f.done()]
        for future, batch in zip(self.futures, self.batches, strict=True):
            if future in todo:
                future.set_result(([Embedded(x, vec(0)) for x in batch], []))
        return len(todo)


def test_collector_fills_requests_across_shards_and_drains_the_partial_one():
    submit = FakeSubmit()
    landed: list[str] = []
    collector = Collector(submit, lambda batch, res: landed.extend(e.record.id for e in res[0]),
                          max_items=25, max_tokens=10_000, max_outstanding=1000, linger_s=3600)
    try:
        collector.bundle_started()
        for _ in range(3):
            collector.reader_started()
        for i in range(30):  # three shards reading at once, interleaved
            for s in range(3):
                collector.add(record(f"shard {s} text {i}", f"s{s}-{i}", i + 1))
        assert [len(b) for b in submit.batches] == [25, 25, 25]
        assert len({x.id.split("-")[0] for x in submit.batches[0]}) == 3  # one request, three shards
        collector.reader_done()
        collector.reader_done()
        assert len(submit.batches) == 3  # no partial batch while more shards may open
        collector.bundle_ending()
        assert len(submit.batches) == 3  # one shard still reading: it may fill the batch
        collector.reader_done()
        assert [len(b) for b in submit.batches] == [25, 25, 25, 15]
        assert sorted(landed) == sorted(f"s{s}-{i}" for s in range(3) for i in range(30))
    finally:
        collector.close()


def test_collector_shared_by_dofn_copies_drains_once_every_bundle_has_ended():
    """Copies of the DoFn in one process share the collector: the partial
    batch waits while any copy's bundle may still hand over shards, and a
    copy torn down in a failed bundle ends it."""
    submit = FakeSubmit()
    collector = Collector(submit, lambda batch, res: None, max_items=25, max_tokens=10_000,
                          max_outstanding=1000, linger_s=3600)
    try:
        collector.bundle_started()
        collector.bundle_started()  # two copies, a bundle each
        collector.reader_started()
        for i in range(10):
            collector.add(record(f"text {i}", f"t{i}", i + 1))
        collector.reader_done()
        collector.bundle_ending()
        assert submit.batches == []  # the other bundle may still fill it
        collector.bundle_ending()
        assert [len(b) for b in submit.batches] == [10]
        collector.bundle_started()
        collector.add(record("late text", "late", 11))
        assert len(submit.batches) == 1
        collector.bundle_ending()  # as EmbedShards.teardown does for a bundle that failed
        assert [len(b) for b in submit.batches] == [10, 1]
    finally:
        collector.close()


def test_dofn_copies_attach_to_one_worker_and_the_last_to_detach_closes_it(tmp_path):
    closed: list[str] = []

    class Built:
        def __init__(self, name: str) -> None:
            self.name = name
            self.embedder = self

        def close(self) -> None:
            closed.append(self.name)

    per_process = PerProcess(None, Lookups(Output(str(tmp_path)), [], "fp", DIM), RunMemory(DIM))
    names = iter(["first", "second"])
    build = lambda: Built(next(names))  # noqa: E731
    a, b = per_process.attach(build), per_process.attach(build)
    assert a is b and a.name == "first"
    per_process.detach()
    assert closed == []  # one copy still uses it
    per_process.detach()
    assert closed == ["first", "first"]  # the worker (its collector), then its embedder
    assert per_process.attach(build).name == "second"  # a copy set up later builds again
    assert per_process.unreported({"requests": 3.0}) == {"requests": 3}
    assert per_process.unreported({"requests": 5.0}) == {"requests": 2}  # whichever copy asks


def test_collector_lingers_then_sends_a_partial_batch():
    submit = FakeSubmit()
    collector = Collector(submit, lambda b, res: None, max_items=10, max_tokens=100, max_outstanding=100,
                          linger_s=0.05)
    try:
        collector.reader_started()
        for i in range(3):
            collector.add(record(f"t{i}"))
        deadline = time.monotonic() + 10
        while not submit.batches and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [len(b) for b in submit.batches] == [3]
    finally:
        collector.close()


def test_collector_back_pressure_bounds_unsent_and_in_flight_texts():
    submit = FakeSubmit(hold=True)
    bound = 50
    collector = Collector(submit, lambda b, res: None, max_items=10, max_tokens=1000,
                          max_outstanding=bound, linger_s=3600)
    added = 0
    peak = 0

    def reader() -> None:
        nonlocal added
        collector.reader_started()
        for i in range(200):
            collector.add(record(f"text {i}"))
            added += 1
        collector.reader_done()

    collector.bundle_ending()  # no more shards are coming
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
            finished = sum(len(b) for b, f in zip(submit.batches, submit.futures, strict=False) if f.done())
            peak = max(peak, added - finished)
            assert added - finished <= bound
            if added - finished >= bound:  # blocked at the bound: let one round land
                time.sleep(0.05)
                assert added - finished <= bound
                submit.release()
        thread.join(5)
        submit.release()
        assert not thread.is_alive() and added == 200
        assert peak == bound  # it did block there
        assert sum(len(b) for b in submit.batches) == 200
        assert max(len(b) for b in submit.batches) <= 10
    finally:
        collector.close()


# -- Worker with a fake backend --------------------------------------------------------


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


def test_worker_sends_a_text_shared_by_its_shards_once_and_reuses_its_output(tmp_path):
    shared = [f"shared text {k}" for k in range(20)]
    a = shard_file(tmp_path / "in" / "a.jsonl", [(f"a{k}", t) for k, t in enumerate(shared)])
    b = shard_file(tmp_path / "in" / "b.jsonl",
                   [(f"b{k}", t) for k, t in enumerate(shared)] + [("b-own", "only in b")])
    backend = FakeBackend()
    worker = make_worker(tmp_path / "out", backend)
    try:
        results: dict[str, object] = {}
        threads = [threading.Thread(target=lambda s=s: results.__setitem__(s.name, worker.process(s)))
                   for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        worker.close()
        worker.embedder.close()
    assert backend.texts == Counter({t: 1 for t in [*shared, "only in b"]})
    ra, rb = results["a"].counts, results["b"].counts  # type: ignore[attr-defined]
    assert ra.sent + rb.sent == 21 and ra.deduplicated + rb.deduplicated == 20
    assert ra.read == ra.embedded == 20 and rb.read == rb.embedded == 21
    for name in ("a", "b"):
        for rid, v in read_vectors(tmp_path / "out", name).items():
            text = "only in b" if rid == "b-own" else shared[int(rid[1:])]
            np.testing.assert_array_equal(v, fake_vector(text))

    # another process, a re-cut input: everything is in the output already
    c = shard_file(tmp_path / "in" / "c.jsonl", [(f"c{k}", t) for k, t in enumerate([*shared, "brand new"])])
    again = FakeBackend()
    rc = embed_shard(tmp_path / "out", again, c)
    assert again.texts == Counter({"brand new": 1})
    assert (rc.reused, rc.sent, rc.deduplicated) == (20, 1, 0)
    assert set(read_state(Output(str(tmp_path / "out"))).committed) == {"a", "b", "c"}


def test_a_fetch_window_of_long_texts_closes_at_its_character_bound(tmp_path, monkeypatch):
    """Records waiting for their reused vectors hold their texts: a window
    closes at FETCH_WINDOW_CHARS as well as at FETCH_WINDOW records, and
    every record is still reused with its own vector."""
    texts = [f"{k:03d} " + " ".join(["long text"] * 19) for k in range(30)]  # 193 characters: 65 tokens
    a = shard_file(tmp_path / "in" / "a.jsonl", [(f"a{k}", t) for k, t in enumerate(texts)])
    embed_shard(tmp_path / "out", FakeBackend(), a)

    windows: list[int] = []
    get_many = VectorIndex.get_many

    def spy(self: VectorIndex, content_hashes):
        wanted = list(content_hashes)
        windows.append(len(wanted))
        return get_many(self, wanted)

    monkeypatch.setattr(VectorIndex, "get_many", spy)
    monkeypatch.setattr(worker_module, "FETCH_WINDOW_CHARS", 193 * 8)
    b = shard_file(tmp_path / "in" / "b.jsonl", [(f"b{k}", t) for k, t in enumerate(reversed(texts))])
    again = FakeBackend()
    counts = embed_shard(tmp_path / "out", again, b)
    assert windows == [8, 8, 8, 6]  # 30 records, 8 to a window
    assert not again.texts and (counts.reused, counts.sent) == (30, 0)
    for rid, v in read_vectors(tmp_path / "out", "b").items():
        np.testing.assert_array_equal(v, fake_vector(texts[29 - int(rid[1:])]))



def test_worker_takes_the_preflight_seed_without_sending_it(tmp_path):
    a = shard_file(tmp_path / "in" / "a.jsonl", [("1", "first"), ("2", "second"), ("3", "first")])
    seed = Seed(content_hash("first"), tuple(float(x) for x in fake_vector("first")), a.shard.path, 1)
    backend = FakeBackend()
    counts = embed_shard(tmp_path / "out", backend, a, seed)
    assert backend.texts == Counter({"second": 1})
    assert (counts.sent, counts.deduplicated, counts.embedded) == (2, 1, 3)  # the seed counts as sent
    got = read_vectors(tmp_path / "out", "a")
    np.testing.assert_array_equal(got["3"], fake_vector("first"))


def test_dofn_copies_in_one_process_share_one_limiter_one_reuse_index_and_one_memory(tmp_path):
    """Beam unpickles a DoFn once per thread: the copies in one process draw
    on one limiter (one share of the quota, not one each), build the
    output's reuse index once between them, and send a text their shards
    share once; another pipeline's DoFn has its own."""
    done = shard_file(tmp_path / "in" / "done.jsonl", [(f"d{k}", f"text {k}") for k in range(12)])
    embed_shard(tmp_path / "out", FakeBackend(), done)  # the output now holds 12 vectors to reuse

    def dofn(run_id: str) -> EmbedShards:
        description = Description("fake", "fake-1", DIM, config_fingerprint="fp-fake")
        config = WorkerConfig(
            output=str(tmp_path / "out"), reader=ReaderConfig(), prepare=PrepareConfig(max_text_tokens=100),
            description=description, run_id=run_id,
        )
        return EmbedShards(FakeBackend(), config, EmbedSettings(max_in_flight=2), QuotaSettings(rpm=600, share=0.5))

    shipped = pickle.dumps(dofn("run-1"))
    copies = [pickle.loads(shipped) for _ in range(8)]
    again = [shard_file(tmp_path / "in" / f"again{k}.jsonl", [(f"a{k}", f"text {k}")]) for k in range(8)]
    try:
        threads = [threading.Thread(target=copy.setup) for copy in copies]  # at once, as Beam's threads do
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        limiter, lookups = copies[0].embedder.limiter, copies[0].worker.lookups
        assert isinstance(limiter, Limiter) and limiter.current_rpm == pytest.approx(300)
        assert all(c.embedder.limiter is limiter and c.worker.lookups is lookups for c in copies)
        counts = [copy.worker.process(split).counts for copy, split in zip(copies, again, strict=True)]
        assert [(c.reused, c.sent) for c in counts] == [(1, 0)] * 8
        assert lookups.builds == 2  # the index and the batch index, once each for eight copies

        # texts new to the output, in two shards that two copies embed
        fresh = [f"fresh {k}" for k in range(5)]
        x = shard_file(tmp_path / "in" / "x.jsonl", [(f"x{k}", t) for k, t in enumerate(fresh)])
        y = shard_file(tmp_path / "in" / "y.jsonl", [(f"y{k}", t) for k, t in enumerate(fresh)])
        cx, cy = copies[0].worker.process(x).counts, copies[1].worker.process(y).counts
        billed = Counter[str]()
        for copy in copies:
            billed.update(copy.backend.texts)
        assert billed == Counter(fresh)  # once each, for the two copies
        assert (cx.sent, cy.sent, cy.deduplicated, cy.embedded) == (5, 0, 5, 5)
        assert all(c.worker.memory is copies[0].worker.memory for c in copies)
        for rid, v in read_vectors(tmp_path / "out", "y").items():
            np.testing.assert_array_equal(v, fake_vector(fresh[int(rid[1:])]))

        other = pickle.loads(pickle.dumps(dofn("run-2")))
        other.setup()
        try:
            assert other.embedder.limiter is not limiter and other.worker.lookups is not lookups
            assert other.worker.memory is not copies[0].worker.memory
        finally:
            other.teardown()
    finally:
        for copy in copies:
            copy.teardown()
