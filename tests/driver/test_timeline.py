"""The run timeline: samples taken on a thread, written through fsspec, read back."""

from __future__ import annotations

import json
import threading

import fsspec
import pytest

from beamvec.driver.timeline import (
    Sample,
    Timeline,
    latest_timeline,
    new_run_id,
    read_timeline,
    sample_from,
    timeline_path,
)

from helpers import beam_run


def test_sample_splits_requests_by_status():
    state = {
        "records": 120, "texts": 100, "reused": 20, "requests": 14, "status_429": 3,
        "status_503": 1, "status_500": 1, "status_400": 1, "status_error": 1, "retries": 6,
        "throttled_ms": 2500.7, "in_flight": 4,
    }
    s = sample_from(state, 5.004)
    assert s == Sample(
        t=5.0, records=120, texts_sent=100, texts_reused=20, requests_ok=7, requests_429=3,
        requests_5xx=2, requests_other=2, retries=6, throttled_ms=2500, in_flight=4,
    )
    assert s.requests == 14


def test_run_id_sorts_by_time():
    a, b = new_run_id(1_700_000_000), new_run_id(1_800_000_000)
    assert a.startswith("20231114T221320Z-") and a < b and len(a.split("-")[1]) == 6


def test_timeline_samples_relative_counts_and_writes_them(tmp_path):
    lock = threading.Lock()
    counts = {"records": 1000.0, "texts": 500.0, "requests": 10.0, "in_flight": 0.0}  # an earlier run's

    def read():
        with lock:
            return dict(counts)

    root = f"memory://{tmp_path.name}/out"
    with Timeline(root, read, interval=0.01, flush_every=0.05) as timeline:
        for _ in range(50):
            with lock:
                counts["records"] += 2
                counts["texts"] += 1
                counts["in_flight"] = 3
            threading.Event().wait(0.002)
        with lock:
            counts["requests"] += 5
            counts["in_flight"] = 0
    fs = fsspec.filesystem("memory")
    path = timeline_path(f"/{tmp_path.name}/out", timeline.run_id)
    samples = read_timeline(fs, path)
    assert samples == timeline.samples and len(samples) >= 2
    last = samples[-1]
    assert (last.records, last.texts_sent, last.requests_ok, last.in_flight) == (100, 50, 5, 0)
    for earlier, later in zip(samples, samples[1:], strict=False):
        assert later.t >= earlier.t and later.records >= earlier.records
    assert all(0 <= s.records <= 100 for s in samples)
    found = latest_timeline(fs, f"/{tmp_path.name}/out")
    assert found is not None and found[0] == timeline.run_id and found[1] == samples


def test_latest_timeline_is_none_without_runs(tmp_path):
    assert latest_timeline(fsspec.filesystem("file"), str(tmp_path)) is None


@pytest.mark.slow
def test_a_run_leaves_its_timeline(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text(
        "".join(json.dumps({"id": str(i), "text": f"sentence {i}"}) + "\n" for i in range(40))
    )
    code, _, err = beam_run(capsys, "--input", str(tmp_path / "in" / "*"), "--output", str(tmp_path / "o"))
    assert code == 0, err
    runs = list((tmp_path / "o" / "_runs").iterdir())
    assert len(runs) == 1
    samples = read_timeline(fsspec.filesystem("file"), str(runs[0] / "timeline.jsonl"))
    last = samples[-1]
    assert last.records == 40 and last.texts_sent == 40 and last.requests_ok >= 1
    assert last.requests_429 == last.requests_5xx == last.retries == 0
