"""Batch embedding through the real google-genai SDK against the emulator:
request files, result parsing, the journal, run_batch (line errors retried,
failed jobs resubmitted, 429 backoff, no-wait then collect, kill -9 and rerun)
and cleanup."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import beamvec
from beamvec.batchapi.client import BatchClient
from beamvec.batchapi.journal import BatchJournal
from beamvec.batchapi.jsonl import (
    BatchRequest,
    BatchSpec,
    LineError,
    parse_results,
    request_files,
    request_key,
    spooled_request_files,
)
from beamvec.batchapi.run import BatchSettings, cleanup_jobs, run_batch
from beamvec.emulator import Emulator, expected_vector
from beamvec.retry import RetryPolicy

os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1,localhost"]))

KEY = "batch-test-key"
MODEL = "gemini-embedding-001"
NATIVE = 3072  # gemini-embedding-001's published native size
DIM = 64
SPEC = BatchSpec(MODEL, "RETRIEVAL_DOCUMENT", DIM)
FAST = BatchSettings(poll_interval_s=0.1, max_poll_interval_s=0.3, max_requests_per_file=200)


def corpus(shards=3, per_shard=300) -> dict[str, list[BatchRequest]]:
    return {
        f"shard-{s}": [
            BatchRequest(request_key(f"record {s}-{i}", None, SPEC), f"record {s}-{i}")
            for i in range(per_shard)
        ]
        for s in range(shards)
    }


def want(text: str, dim: int = DIM) -> np.ndarray:
    """The emulator's vector, L2-normalized: below the native size the API does
    not normalize, so the client must."""
    v = expected_vector(MODEL, "RETRIEVAL_DOCUMENT", dim, text).astype(np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


def client_for(emu: Emulator) -> BatchClient:
    fast = RetryPolicy(base_delay=0.05, max_delay=0.3)
    return BatchClient.connect(KEY, MODEL, base_url=emu.url, retry=fast)


def assert_all_vectors(outcome, todo):
    texts = {r.key: r.text for reqs in todo.values() for r in reqs}
    assert set(outcome.vectors) == set(texts) and not outcome.failures and outcome.complete
    for key, text in texts.items():
        np.testing.assert_allclose(outcome.vectors[key], want(text), rtol=0, atol=1e-6)


# -- pure functions -----------------------------------------------------------


def test_request_files_split_by_count_and_bytes_and_send_repeats_once():
    reqs = [BatchRequest(f"k{i}", "x" * 100, "T") for i in range(10)] + [BatchRequest("k0", "x")]
    files = request_files(reqs, SPEC, max_requests=4)
    assert [len(f.keys) for f in files] == [4, 4, 2]
    line = json.loads(files[0].data.splitlines()[0])
    assert line == {
        "key": "k0",
        "request": {
            "content": {"parts": [{"text": "x" * 100}]},
            "taskType": "RETRIEVAL_DOCUMENT",
            "title": "T",
            "outputDimensionality": DIM,
        },
    }
    by_bytes = request_files(reqs, SPEC, max_bytes=2 * len(files[0].data.splitlines()[0]) + 2)
    assert all(len(f.keys) == 2 for f in by_bytes) and sum(len(f.keys) for f in by_bytes) == 10
    assert all(len(f.data) <= 2 * len(files[0].data.splitlines()[0]) + 2 for f in by_bytes)
    no_title = json.loads(request_files(reqs[:1], BatchSpec(MODEL, "CLUSTERING"))[0].data)
    assert "title" not in no_title["request"] and "outputDimensionality" not in no_title["request"]


def test_request_files_are_spooled_to_disk_one_at_a_time():
    reqs = [BatchRequest(f"k{i}", f"text {i}") for i in range(10)] + [BatchRequest("k3", "again")]
    seen = []
    for keys, spool in spooled_request_files(reqs, SPEC, max_requests=4):
        assert not seen or seen[-1][1].closed  # the previous file is gone once the next is made
        assert not spool.closed and spool.fileno() >= 0  # a file on disk, not bytes in memory
        seen.append((keys, spool, spool.read()))
    assert all(spool.closed for _, spool, _ in seen)
    assert [keys for keys, _, _ in seen] == [
        ("k0", "k1", "k2", "k3"), ("k4", "k5", "k6", "k7"), ("k8", "k9"),
    ]  # fmt: skip
    assert [data for _, _, data in seen] == [f.data for f in request_files(reqs, SPEC, 4)]
    assert json.loads(seen[0][2].splitlines()[3])["request"]["content"]["parts"][0]["text"] == "text 3"


def test_parse_results_checks_like_the_online_path():
    good = list(np.linspace(1, 2, DIM))
    lines = [
        json.dumps({"key": "a", "response": {"embedding": {"values": good}}}),
        json.dumps({"key": "b", "response": {"embedding": {"values": good[:-1]}}}),
        '{"key": "c", "response": {"embedding": {"values": [' + ",".join(["NaN"] * DIM) + "]}}}",
        json.dumps({"key": "d", "response": {"embedding": {"values": [0.0] * DIM}}}),
        json.dumps({"key": "e", "error": {"code": 13, "message": "Internal error encountered."}}),
        json.dumps({"key": "f", "error": {"code": 3, "message": "too long"}}),
        json.dumps({"key": "zz", "response": {"embedding": {"values": good}}}),  # not ours
        "not json",
    ]
    out = parse_results(lines, SPEC, expected=list("abcdefg"))
    assert set(out) == set("abcdefg")
    a = out["a"]
    assert isinstance(a, np.ndarray) and a.dtype == np.float32
    assert abs(float(np.linalg.norm(a)) - 1.0) < 1e-6  # renormalized below the native size
    assert all(isinstance(out[k], LineError) and out[k].retryable for k in "bcdeg")
    assert "64" in out["b"].message and "non-finite" in out["c"].message
    assert out["e"].code == 13 and out["e"].message == "Internal error encountered."
    assert out["f"].retryable is False and out["f"].message == "too long"
    native = parse_results(
        [json.dumps({"key": "n", "response": {"embedding": {"values": [2.0] * NATIVE}}})],
        BatchSpec(MODEL),
    )
    assert float(native["n"][0]) == 2.0  # native size: as the API sent it


def test_titles_change_the_key_only_when_sent():
    assert request_key("t", "A", SPEC) != request_key("t", "B", SPEC)
    assert request_key("t", "A", BatchSpec(MODEL, "CLUSTERING")) == request_key("t", None, SPEC)


# -- run_batch against the emulator -------------------------------------------


def test_900_records_with_5_percent_line_errors(tmp_path):
    todo = corpus()
    with Emulator(api_key=KEY, batch_job_s=1, batch_line_error_rate=0.05) as emu:
        seen = []
        # 45 of 900 lines fail once, ~2 twice: 5 later tries make a final failure unlikely (1e-5)
        settings = dataclasses.replace(FAST, max_line_retries=5)
        outcome = run_batch(
            todo, client_for(emu), BatchJournal(str(tmp_path)), SPEC, settings, progress=seen.append
        )
        stats = emu.stats()["batch"]
    assert_all_vectors(outcome, todo)  # shuffled lines landed on the right keys
    assert outcome.lines_failed == stats["lines_failed"] > 0  # some lines failed, then succeeded
    assert stats["texts_billed"] / 900 >= 0.95 and stats["texts_billed"] == 900  # all, once
    assert stats["texts"]["billed_more_than_once"] == 0
    assert stats["jobs"]["created"] == outcome.jobs_submitted > 5  # 5 files + retry jobs
    assert seen and seen[-1].keys_done == 900 and "SUCCEEDED" in seen[-1].jobs_by_state


def test_a_failed_job_is_resubmitted_and_permanent_line_errors_are_not(tmp_path):
    todo = corpus(shards=1, per_shard=50)
    long_text = "y" * 13_000  # over 2048 tokens (one per 6 letters of a word): INVALID_ARGUMENT, never retried
    todo["shard-0"].append(BatchRequest(request_key(long_text, None, SPEC), long_text))
    with Emulator(api_key=KEY, batch_job_s=0.3, batch_fail_first=1) as emu:
        outcome = run_batch(todo, client_for(emu), BatchJournal(str(tmp_path)), SPEC, FAST)
        stats = emu.stats()["batch"]
    assert len(outcome.vectors) == 50 and list(outcome.failures) == [todo["shard-0"][-1].key]
    failure = outcome.failures[todo["shard-0"][-1].key]
    assert failure.code == 3 and not failure.retryable and "token" in failure.message
    assert stats["jobs"]["created"] == 2 and stats["jobs"]["by_state"] == {
        "FAILED": 1,
        "SUCCEEDED": 1,
    }
    assert sorted(j.attempt for j in outcome.jobs) == [1, 2]


def test_line_retries_are_bounded_then_failures_carry_the_message(tmp_path):
    todo = corpus(shards=1, per_shard=20)
    settings = BatchSettings(poll_interval_s=0.05, max_line_retries=1)
    with Emulator(api_key=KEY, batch_job_s=0, batch_line_error_rate=1.0) as emu:
        outcome = run_batch(todo, client_for(emu), BatchJournal(str(tmp_path)), SPEC, settings)
        assert emu.stats()["batch"]["jobs"]["created"] == 2  # first try + one retry
    assert not outcome.vectors and len(outcome.failures) == 20
    assert all("Internal error encountered." in f.message for f in outcome.failures.values())


def test_429_on_create_backs_off_and_succeeds(tmp_path):
    todo = corpus(shards=1, per_shard=60)
    settings = BatchSettings(poll_interval_s=0.1, max_requests_per_file=20)
    with Emulator(api_key=KEY, batch_job_s=0.3, batch_max_concurrent=1) as emu:
        client = client_for(emu)
        outcome = run_batch(todo, client, BatchJournal(str(tmp_path)), SPEC, settings)
        stats = emu.stats()["batch"]
    assert_all_vectors(outcome, todo)
    assert stats["jobs"]["rejected_concurrency"] >= 1 and client.create_429s >= 1
    assert stats["jobs"]["created"] == 3 and stats["texts"]["submitted_more_than_once"] == 0


def test_no_wait_submits_and_a_later_call_collects_then_cleanup(tmp_path):
    todo = corpus(shards=2, per_shard=100)
    no_wait = BatchSettings(wait=False, max_requests_per_file=100)
    journal = BatchJournal(str(tmp_path / "out"))
    with Emulator(api_key=KEY, batch_job_s=0.5) as emu:
        client = client_for(emu)
        first = run_batch(todo, client, journal, SPEC, no_wait)
        assert first.jobs_submitted == 2 and len(first.pending) == 200 and not first.vectors
        records = sorted((tmp_path / "out" / "_batch" / "jobs").glob("*.json"))
        assert len(records) == 2 and all(json.loads(p.read_text())["name"] for p in records)
        time.sleep(0.6)
        second = run_batch(todo, client, BatchJournal(str(tmp_path / "out")), SPEC, no_wait)
        assert second.jobs_submitted == 0 and second.complete
        assert_all_vectors(second, todo)
        assert emu.stats()["batch"]["jobs"]["created"] == 2
        assert cleanup_jobs(second.jobs, client, journal, ["shard-0"]) == 1  # one shard committed
        assert cleanup_jobs(second.jobs, client, journal, todo) == 1
        stats = emu.stats()["batch"]
        assert stats["files"]["stored"] == [] and stats["jobs"]["deleted"] == 2
        assert journal.pending() == [] and len(journal.jobs()) == 2
        third = run_batch({}, client, journal, SPEC, no_wait)
        assert third.jobs_submitted == 0 and not third.jobs


_CHILD = """
import sys
from beamvec.batchapi.jsonl import BatchRequest, BatchSpec, request_key
from beamvec.batchapi.client import BatchClient
from beamvec.batchapi.journal import BatchJournal
from beamvec.batchapi.run import BatchSettings, run_batch
url, out = sys.argv[1], sys.argv[2]
spec = BatchSpec("gemini-embedding-001", "RETRIEVAL_DOCUMENT", 64)
todo = {f"shard-{s}": [BatchRequest(request_key(f"record {s}-{i}", None, spec), f"record {s}-{i}")
        for i in range(300)] for s in range(3)}
client = BatchClient.connect("batch-test-key", spec.model, base_url=url)
run_batch(todo, client, BatchJournal(out), spec,
          BatchSettings(poll_interval_s=0.2, max_requests_per_file=200))
"""


@pytest.mark.slow
def test_kill_9_while_jobs_run_then_rerun_submits_nothing_twice(tmp_path):
    todo = corpus()
    src = str(Path(beamvec.__file__).resolve().parents[1])
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    )
    with Emulator(api_key=KEY, batch_job_s=30) as emu:
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, emu.url, str(tmp_path)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while emu.stats(False)["batch"]["jobs"]["created"] < 5:
                assert child.poll() is None, child.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the child never submitted its jobs"
                time.sleep(0.05)
            time.sleep(0.3)  # it is polling now
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert child.returncode == -signal.SIGKILL
        emu.update(batch_job_s=0.5)  # running jobs now finish soon
        outcome = run_batch(todo, client_for(emu), BatchJournal(str(tmp_path)), SPEC, FAST)
        stats = emu.stats()["batch"]
    assert_all_vectors(outcome, todo)
    assert outcome.jobs_submitted == 0  # everything collected from the journal
    assert stats["jobs"]["created"] == 5 and stats["files"]["uploaded"] == 5
    assert stats["texts"]["submitted_more_than_once"] == 0
    assert stats["texts_billed"] == 900 and stats["texts"]["billed_more_than_once"] == 0


def test_a_job_created_but_not_recorded_is_adopted_not_resubmitted(tmp_path):
    """A run killed between creating a job and recording its name leaves a
    CREATING record; the rerun finds the job by display name."""
    todo = corpus(shards=1, per_shard=30)
    journal = BatchJournal(str(tmp_path))
    with Emulator(api_key=KEY, batch_job_s=0.2) as emu:
        client = client_for(emu)
        keys = [r.key for r in todo["shard-0"]]
        job = journal.new_job(keys, ["shard-0"])
        (file,) = request_files(todo["shard-0"], SPEC)
        name = client.upload(file.data, job.display_name)
        client.create(name, job.display_name)  # ... and the run dies here
        outcome = run_batch(todo, client, journal, SPEC, FAST)
        assert emu.stats()["batch"]["jobs"]["created"] == 1
    assert_all_vectors(outcome, todo)
    assert outcome.jobs_submitted == 0


def test_bad_key_is_one_systemic_line(tmp_path):
    from beamvec.errors import SystemicError

    with Emulator(api_key=KEY) as emu:
        client = BatchClient.connect("wrong", MODEL, base_url=emu.url)
        with pytest.raises(SystemicError) as info:
            run_batch(corpus(1, 3), client, BatchJournal(str(tmp_path)), SPEC, FAST)
    message = str(info.value)
    assert "\n" not in message and "API key" in message and "wrong" not in message


def test_a_download_that_fails_for_now_is_retried_not_resubmitted(tmp_path):
    from beamvec.errors import BackendError, ErrorKind

    todo = corpus(shards=1, per_shard=20)
    with Emulator(api_key=KEY, batch_job_s=0.2) as emu:
        client = client_for(emu)
        real, calls = client.download, []

        def flaky(name: str) -> bytes:
            calls.append(name)
            if len(calls) == 1:
                raise BackendError("batch download: 503 UNAVAILABLE", kind=ErrorKind.TRANSIENT)
            return real(name)

        client.download = flaky  # type: ignore[method-assign]
        outcome = run_batch(todo, client, BatchJournal(str(tmp_path)), SPEC, FAST)
        assert emu.stats()["batch"]["jobs"]["created"] == 1
    assert_all_vectors(outcome, todo)
    assert len(calls) == 2


# -- streaming result files ---------------------------------------------------


class _ChunkWriter:
    def __init__(self) -> None:
        self.chunks: list[list[str]] = []
        self.vectors: dict[str, np.ndarray] = {}
        self.committed = self.aborted = False

    def write(self, keys, vectors) -> None:
        assert len(keys) == len(vectors)
        self.chunks.append(list(keys))
        self.vectors.update(zip(keys, vectors, strict=True))

    def commit(self) -> None:
        self.committed = True

    def abort(self) -> None:
        self.aborted = True


def test_read_results_streams_lines_into_bounded_chunks(monkeypatch):
    from beamvec.batchapi import results as batch_results

    monkeypatch.setattr(batch_results, "CHUNK_BYTES", 4 * DIM * 3)  # three vectors a chunk
    good = [float(x) for x in np.linspace(1, 2, DIM)]

    def ok(key: str) -> bytes:
        return (json.dumps({"key": key, "response": {"embedding": {"values": good}}}) + "\n").encode()

    def err(key: str, code: int = 13) -> bytes:
        return (json.dumps({"key": key, "error": {"code": code, "message": "boom"}}) + "\n").encode()

    lines = iter([  # a generator: read once, front to back, as from a file
        ok("a"), err("b"), ok("b"), ok("c"), ok("a"), ok("d"), ok("e"), ok("f"), ok("g"),
        err("h"), err("h", 3), ok("not-ours"), b"not json\n", ok("done-before"),
    ])  # fmt: skip
    keys = {"a", "b", "c", "d", "e", "f", "g", "h", "missing", "done-before"}
    writer = _ChunkWriter()
    out = batch_results.read_results(lines, keys, SPEC, writer, skip={"done-before"})
    assert writer.committed and not writer.aborted
    assert [len(c) for c in writer.chunks] == [3, 3, 1]  # 7 vectors, never more than 3 held
    assert set(writer.vectors) == set("abcdefg")  # b's later good answer beats its error
    assert out.good == frozenset("abcdefg") | {"done-before"}  # answered, not written twice
    assert set(out.errors) == {"h", "missing"}
    assert out.errors["h"].code == 3 and not out.errors["h"].retryable  # the last error counts
    assert out.errors["missing"].retryable and "no line" in out.errors["missing"].message
    norm = float(np.linalg.norm(writer.vectors["a"]))
    assert abs(norm - 1.0) < 1e-6  # the online path's checks and normalization


def test_a_result_file_is_downloaded_to_disk_not_held(tmp_path):
    todo = corpus(shards=1, per_shard=40)
    with Emulator(api_key=KEY, batch_job_s=0) as emu:
        client = client_for(emu)
        real, seen = client._client.files.download, []
        # google-genai 3.x takes destination=; 2.x only hands over bytes
        streams = "destination" in inspect.signature(real).parameters

        def download(*, file, destination=None, config=None):
            seen.append(destination)
            return real(file=file, destination=destination, config=config)

        def download_bytes(*, file, config=None):
            seen.append(None)
            return real(file=file, config=config)

        client._client.files.download = download if streams else download_bytes
        outcome = run_batch(todo, client, BatchJournal(str(tmp_path)), SPEC, FAST)
    assert_all_vectors(outcome, todo)
    assert len(seen) == 1
    if streams:  # streamed in chunks to a file, removed once read
        assert seen[0] is not None and not isinstance(seen[0], (bytes, bytearray)) and seen[0].closed


def test_gemini_embedding_2_lines_carry_the_task_in_the_text_and_no_task_type():
    """As online: Google's documented prompt (ai.google.dev, gemini-embedding-2
    task types), no taskType and no title field."""
    from beamvec.batchapi.jsonl import BatchRequest, BatchSpec, request_line

    query = json.loads(request_line(BatchRequest("k", "where is the station"),
                                    BatchSpec("gemini-embedding-2", "RETRIEVAL_QUERY", 256)))
    assert query["request"] == {"content": {"parts": [{"text": "task: search result | query: where is the station"}]},
                                "outputDimensionality": 256}
    doc = json.loads(request_line(BatchRequest("k", "trains leave hourly", "Timetable"),
                                  BatchSpec("gemini-embedding-2", "RETRIEVAL_DOCUMENT")))
    assert doc["request"] == {"content": {"parts": [{"text": "title: Timetable | text: trains leave hourly"}]}}


# -- the driver keeps jobs, not texts -----------------------------------------


def test_key_set_holds_8_bytes_a_key_and_forgets_nothing_across_merges():
    from beamvec.batchapi.keys import KeySet
    from beamvec.records import content_hash

    keys = KeySet()
    hashes = [content_hash(f"text {i}") for i in range(70_000)]  # several merges
    assert all(keys.add(h) for h in hashes)
    assert len(keys) == 70_000 and not keys.add(hashes[0]) and not keys.add(hashes[-1])
    assert all(h in keys for h in hashes[::997])
    assert content_hash("never added") not in keys and 42 not in keys
    assert keys._sorted.nbytes == 8 * len(keys._sorted)  # what is merged costs 8 bytes a key


def test_the_stream_is_submitted_as_it_is_read_and_repeats_go_once(tmp_path):
    from beamvec.batchapi.run import run_batch_stream

    todo = corpus(shards=3, per_shard=200)
    created_when_read: list[int] = []
    with Emulator(api_key=KEY, batch_job_s=0.2) as emu:

        def stream():
            for shard, requests in todo.items():
                created_when_read.append(emu.stats(False)["batch"]["jobs"]["created"])
                for request in requests:
                    yield shard, request
                    yield shard, request  # a repeated text: in one file, billed once

        outcome = run_batch_stream(stream(), client_for(emu), BatchJournal(str(tmp_path)), SPEC, FAST)
        stats = emu.stats()["batch"]
    assert_all_vectors(outcome, todo)
    assert created_when_read == [0, 1, 2]  # each shard's file went out before the next was read
    assert outcome.texts == 600 and stats["texts_billed"] == 600
    assert stats["texts"]["submitted_more_than_once"] == 0


def test_a_job_read_again_after_a_kill_does_not_send_its_failed_lines_twice(tmp_path):
    """A run killed after it made a job's retry job but before it marked the
    job read reads the job again on the rerun: the retry job is found in the
    journal (by its parent), not made again."""
    todo = corpus(shards=1, per_shard=20)
    settings = BatchSettings(poll_interval_s=0.05, max_line_retries=1)
    journal = BatchJournal(str(tmp_path))
    with Emulator(api_key=KEY, batch_job_s=0, batch_line_error_rate=1.0) as emu:
        client = client_for(emu)
        first = run_batch(todo, client, journal, SPEC, settings)
        (parent,) = [j for j in journal.jobs() if j.parent is None]
        (child,) = [j for j in journal.jobs() if j.parent == parent.id]
        assert child.line_retries == 1 and child.attempt == 2 and child.count == 20
        journal.save(dataclasses.replace(parent, collected=False, final=0))  # killed before this
        again = run_batch(todo, client, journal, SPEC, settings)
        stats = emu.stats()["batch"]
    assert stats["jobs"]["created"] == 2 and again.jobs_submitted == 0
    assert set(again.failures) == set(first.failures) and len(again.failures) == 20
    assert "(after 2 batch attempts)" in again.failures[todo["shard-0"][0].key].message


def test_files_wait_in_the_journal_while_the_service_is_at_its_job_cap(tmp_path):
    todo = corpus(shards=1, per_shard=60)
    settings = BatchSettings(poll_interval_s=0.1, max_requests_per_file=20)
    journal = BatchJournal(str(tmp_path))
    with Emulator(api_key=KEY, batch_job_s=0.3, batch_max_concurrent=1) as emu:
        client = client_for(emu)
        outcome = run_batch(todo, client, journal, SPEC, settings)
        stats = emu.stats()["batch"]
        requests = sorted(tmp_path.glob("_batch/jobs/*.requests.jsonl"))
        assert len(requests) == 3  # each job's request file is kept beside its record
        lines = [json.loads(x) for p in requests for x in p.read_text().splitlines()]
        assert sorted(x["key"] for x in lines) == sorted(r.key for r in todo["shard-0"])
        assert cleanup_jobs(outcome.jobs, client, journal, ["shard-0"]) == 3
    assert_all_vectors(outcome, todo)
    assert stats["jobs"]["rejected_concurrency"] >= 1
    assert stats["files"]["uploaded"] == 3  # a file refused a job is not uploaded again
    assert not list(tmp_path.glob("_batch/jobs/*.requests.jsonl"))  # removed once cleaned
