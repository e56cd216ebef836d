"""A Worker with a fake backend: a text its shards share sent once, the
output reused, fetch windows, the preflight's seed."""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np

from beamvec.contract import read_state
from beamvec.pipeline import worker as worker_module
from beamvec.records import content_hash
from beamvec.route.lookup import VectorIndex
from beamvec.route.router import Seed
from beamvec.write.sink import Output

from fakes import (
    FakeBackend,
    embed_shard,
    fake_vector,
    make_worker,
    read_vectors,
    shard_file,
)

# -- Worker with a fake backend --------------------------------------------------------


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
