"""EmbedShards' per-process state: DoFn copies in one process share one
worker, limiter, reuse index and memory; the last to detach closes it."""

from __future__ import annotations

import pickle
import threading
from collections import Counter

import numpy as np
import pytest

from beamvec.contract import Description
from beamvec.embed.embedder import EmbedSettings
from beamvec.pipeline.embed_shards import EmbedShards, PerProcess
from beamvec.pipeline.worker import WorkerConfig
from beamvec.quota import Limiter, QuotaSettings
from beamvec.route.lookup import Lookups
from beamvec.route.prepare import PrepareConfig
from beamvec.route.router import RunMemory
from beamvec.sources import ReaderConfig
from beamvec.write.sink import Output

from fakes import (
    DIM,
    FakeBackend,
    embed_shard,
    fake_vector,
    read_vectors,
    shard_file,
)


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
