"""The Collector with a fake submit: requests filled across shards, the
partial batch drained once, linger, back pressure."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

from beamvec.embed.collector import Collector
from beamvec.records import Embedded, Record

from fakes import (
    record,
    vec,
)

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
