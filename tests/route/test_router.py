"""The router without Beam: each record's decision (dead letter, reuse,
follow a text in flight, send), its counts, and RunMemory."""

from __future__ import annotations

from collections import Counter

import numpy as np

from beamvec import records as r
from beamvec.records import DeadLetter, RawRecord, content_hash
from beamvec.route.prepare import PrepareConfig
from beamvec.route.router import Fetch, Follow, NoLookup, Reuse, Router, RunMemory, Seed, Send

from fakes import (
    DIM,
    record,
    vec,
    words,
)


def keep(text: str, limit: int) -> str:
    return text



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
