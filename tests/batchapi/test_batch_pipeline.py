"""`beamvec run --batch-api` end to end: the real google-genai SDK against the
emulator's Batch API, then the normal pipeline, sink and commit. Every vector
is checked by id against the emulator's deterministic function; counts are
reconciled per shard; the emulator's /stats say what was billed where."""

from __future__ import annotations

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
from beamvec.emulator.server import Emulator
from beamvec.emulator.vectors import expected_vector
from beamvec.records import BAD_REQUEST, DUPLICATE_ID, EMBED_FAILED, RawRecord, content_hash
from beamvec.route.router import Refusals, Reuse, Router, RunMemory, Send

from helpers import assert_reconciled, beam_run, read_output, run_cli, vectors_by_id

os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1,localhost"]))

KEY = "fakekey-FAKE-batch-pipeline-0123456789"
MODEL = "gemini-embedding-001"
TASK = "RETRIEVAL_DOCUMENT"
DIM = 64  # below gemini-embedding-001's native 3,072: the client L2-normalizes
FAST = ["--batch-poll-interval", "0.1", "--batch-max-requests-per-file", "200"]


def write_corpus(root: Path, shards: int = 3, per_shard: int = 300, repeats: bool = True) -> dict[str, str]:
    """``shards`` JSONL files; with ``repeats``, one text recurs in every shard."""
    root.mkdir(parents=True, exist_ok=True)
    texts: dict[str, str] = {}
    for s in range(shards):
        lines = []
        for i in range(per_shard):
            rid = f"s{s}-r{i}"
            text = "a text every shard repeats" if repeats and i % 100 == 7 else f"record {s}-{i} about topic {i % 11}"
            texts[rid] = text
            lines.append(json.dumps({"id": rid, "text": text}))
        (root / f"part-{s}.jsonl").write_text("\n".join(lines) + "\n")
    return texts


def args(root: Path, out: Path, emu: Emulator, *extra: str) -> list[str]:
    return [
        "--input", str(root / "*.jsonl"), "--output", str(out), "--backend", "gemini",
        "--api-base-url", emu.url, "--task-type", TASK, "--output-dimensionality", str(DIM),
        "--batch-api", *FAST, *extra,
    ]  # fmt: skip


def want(text: str) -> np.ndarray:
    v = expected_vector(MODEL, TASK, DIM, text).astype(np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


def check_vectors(out: dict, texts: dict[str, str]) -> None:
    got = vectors_by_id(out)  # asserts that no id is written twice
    assert set(got) == set(texts)
    for rid, text in texts.items():
        np.testing.assert_allclose(got[rid], want(text), atol=1e-5, err_msg=rid)


def never_billed_twice(stats: dict) -> None:
    """No text billed twice, through batch jobs and online together."""
    batch, online = stats["batch"]["text_counts"], stats["text_counts"]
    assert max([*batch.values(), *online.values()], default=0) <= 1
    assert not set(batch) & set(online)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)


# -- the Router's hooks, pure -------------------------------------------------


def _router(refusals=None, batch=None, memory=None):
    from beamvec.route.prepare import PrepareConfig

    return Router(
        PrepareConfig(), lambda t: len(t) // 3 + 1, lambda t, n: t, _Dict({}), memory or RunMemory(4),
        lambda record, outcome: None, refusals=refusals, batch=batch,
    )  # fmt: skip


class _Dict:
    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    def get(self, digest: str) -> np.ndarray | None:
        return self.vectors.get(digest)

    def __contains__(self, digest: object) -> bool:
        return digest in self.vectors


def test_router_dead_letters_refused_texts_and_counts_batch_vectors_once():
    bad, good = "a line the service refused", "a text a batch job embedded"
    refusals = Refusals({
        content_hash(bad): (BAD_REQUEST, "batch: too long"),
        content_hash("retry me"): (EMBED_FAILED, "batch: Internal error encountered."),
    })  # fmt: skip
    vector = np.ones(4, np.float32)
    memory = RunMemory(4)
    router = _router(refusals, _Dict({content_hash(good): vector}), memory)
    first = router.route(RawRecord(1, "a", bad))
    assert first.reason == BAD_REQUEST and first.message == "batch: too long" and first.id == "a"
    assert router.route(RawRecord(2, "b", "retry me")).reason == EMBED_FAILED
    assert router.route(RawRecord(3, "b", "retry me")).reason == DUPLICATE_ID  # the id rule first
    one, two = router.route(RawRecord(4, "c", good)), router.route(RawRecord(5, "d", good))
    assert isinstance(one, Reuse) and isinstance(two, Reuse) and one.vector is vector
    assert isinstance(router.route(RawRecord(6, "e", "something new")), Send)
    counts = router.shard_counts(3, __import__("collections").Counter(), 0, 0)
    assert (counts.read, counts.dead_lettered, counts.batch_sent, counts.deduplicated) == (6, 3, 1, 1)
    assert counts.dead_letters_by_reason == {BAD_REQUEST: 1, DUPLICATE_ID: 1, EMBED_FAILED: 1}
    assert counts.reused == 0 and counts.sent == 1
    # another shard of the same process: the text is a repeat there, not billed again
    again = _router(refusals, _Dict({content_hash(good): vector}), memory)
    again.route(RawRecord(1, "x", good))
    assert again.counts["batch_sent"] == 0 and again.counts["deduplicated"] == 1


# -- through `beamvec run` ----------------------------------------------------


@pytest.mark.slow
def test_900_records_in_3_shards_with_5_percent_failing_lines(tmp_path, capsys):
    texts = write_corpus(tmp_path / "in")
    out = tmp_path / "out"
    with Emulator(api_key=KEY, batch_job_s=1, batch_line_error_rate=0.05) as emu:
        code, stdout, err = beam_run(
            capsys, *args(tmp_path / "in", out, emu, "--batch-fallback", "online")
        )
        stats = emu.stats()
    assert code == 0, err
    result = read_output(str(out))
    assert_reconciled(result)  # read = embedded + dead letters, per shard
    check_vectors(result, texts)  # shuffled result lines landed on the right ids
    distinct = len(set(texts.values()))
    assert distinct == 3 * 297 + 1
    batch = stats["batch"]
    assert batch["lines_failed"] > 0  # some lines failed, and were retried
    assert batch["texts_billed"] >= 0.95 * distinct
    assert batch["texts_billed"] + stats["texts_embedded"] == distinct  # the rest online
    never_billed_twice(stats)
    # the run's history says how texts were billed, and prices batch at the batch rate
    manifest = result["manifest"]
    run = manifest["runs"][-1]
    assert run["batch_sent"] == batch["texts_billed"] and run["sent"] == stats["texts_embedded"]
    shards = manifest["shards"].values()
    assert sum(s["batch_sent"] for s in shards) == batch["texts_billed"]
    assert all(s["reused"] == 0 for s in shards)  # nothing was embedded before this run
    assert sum(s["deduplicated"] for s in shards) == 900 - distinct
    tokens = run["batch_sent_tokens"] * 0.075 / 1e6 + run["sent_tokens"] * 0.15 / 1e6  # published
    assert run["estimated_cost_usd"] == pytest.approx(tokens, abs=1e-6)
    assert f"{batch['texts_billed']:,} through batch jobs" in stdout  # run_summary's wording
    # uploaded inputs and results are deleted from the service once committed
    assert batch["files"]["stored"] == [] and batch["jobs"]["deleted"] == batch["jobs"]["created"]
    assert not list((out / "_partial").glob("**/*.parquet"))
    for blob in (stdout, err, json.dumps(manifest)):
        assert KEY not in blob


@pytest.mark.slow
def test_failed_lines_become_dead_letters_without_fallback(tmp_path, capsys):
    texts = write_corpus(tmp_path / "in", shards=1, per_shard=30, repeats=False)
    out = tmp_path / "out"
    with Emulator(api_key=KEY, batch_job_s=0, batch_line_error_rate=1.0) as emu:
        code, _, err = beam_run(capsys, *args(tmp_path / "in", out, emu))
        stats = emu.stats()
    assert code == 0, err
    result = read_output(str(out))
    assert_reconciled(result)
    assert stats["texts_embedded"] == 0 and stats["batch"]["texts_billed"] == 0  # nothing online
    assert stats["batch"]["jobs"]["created"] == 3  # the first try and two retries
    (dead,) = result["dead"].values()
    assert sorted(dead.column("id").to_pylist()) == sorted(texts)
    assert set(dead.column("reason").to_pylist()) == {EMBED_FAILED}
    assert all("Internal error encountered." in m for m in dead.column("message").to_pylist())


@pytest.mark.slow
def test_no_wait_then_a_later_run_collects_and_resubmits_a_failed_job(tmp_path, capsys):
    texts = write_corpus(tmp_path / "in", shards=1, per_shard=100)
    out = tmp_path / "out"
    with Emulator(api_key=KEY, batch_job_s=0.5) as emu:
        code, _, err = beam_run(capsys, *args(tmp_path / "in", out, emu))  # one shard, complete
        assert code == 0, err
        assert (out / "_SUCCESS").exists()
        texts.update(write_corpus(tmp_path / "in2", shards=3, per_shard=100))
        for s in (1, 2):  # two new shards arrive
            (tmp_path / "in" / f"part-{s}.jsonl").write_text(
                (tmp_path / "in2" / f"part-{s}.jsonl").read_text()
            )
        created = emu.stats(False)["batch"]["jobs"]["created"]
        emu.update(batch_fail_first=created + 1)  # the next job FAILS
        code, stdout, err = beam_run(capsys, *args(tmp_path / "in", out, emu, "--no-wait"))
        assert code == 75, err  # docs/cli.md: jobs pending, rerun later
        (line,) = [x for x in stdout.splitlines() if x.startswith("beamvec batch:")]
        assert "PENDING" in line and "rerun the same command" in line and "198 pending" in line
        assert not (out / "_SUCCESS").exists()  # the output is changing
        assert len(json.loads((out / "_manifest.json").read_text())["shards"]) == 1
        assert emu.stats(False)["batch"]["jobs"]["created"] == created + 1
        code, stdout, err = beam_run(capsys, *args(tmp_path / "in", out, emu))
        stats = emu.stats()
    assert code == 0, err
    result = read_output(str(out))
    assert_reconciled(result)
    check_vectors(result, texts)
    batch = stats["batch"]
    assert batch["jobs"]["by_state"] == {"FAILED": 1, "SUCCEEDED": created + 1}  # resubmitted once
    assert batch["texts"]["submitted_more_than_once"] == 198  # the failed job's texts, once again
    never_billed_twice(stats)
    assert batch["files"]["stored"] == [] and stats["texts_embedded"] == 0


@pytest.mark.slow
def test_kill_9_while_jobs_run_then_rerun_submits_nothing_twice(tmp_path, capsys):
    texts = write_corpus(tmp_path / "in")
    out = tmp_path / "out"
    src = str(Path(beamvec.__file__).resolve().parents[1])
    env = dict(
        os.environ, GEMINI_API_KEY=KEY,
        PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
    )  # fmt: skip
    with Emulator(api_key=KEY, batch_job_s=60) as emu:
        child = subprocess.Popen(
            [sys.executable, "-m", "beamvec.cli", "run", "--quiet", *args(tmp_path / "in", out, emu)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        journal = out / "_batch" / "jobs"
        try:
            deadline = time.monotonic() + 120
            while not any(json.loads(p.read_text()).get("name") for p in journal.glob("*.json")):
                assert child.poll() is None, child.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the run never recorded a job"
                time.sleep(0.05)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert child.returncode == -signal.SIGKILL
        recorded = len(list(journal.glob("*.json")))
        emu.update(batch_job_s=0.5)  # the running jobs now finish soon
        code, _, err = beam_run(capsys, *args(tmp_path / "in", out, emu))
        stats = emu.stats()
    assert code == 0, err
    result = read_output(str(out))
    assert_reconciled(result)
    check_vectors(result, texts)  # one row per record
    batch = stats["batch"]
    assert recorded >= 1 and batch["jobs"]["created"] == len(list(journal.glob("*.json")))
    assert batch["texts"]["submitted_more_than_once"] == 0  # no job submitted twice
    assert batch["texts_billed"] == len(set(texts.values())) and stats["texts_embedded"] == 0
    never_billed_twice(stats)


def test_batch_api_needs_the_gemini_backend(tmp_path, capsys):
    write_corpus(tmp_path / "in", shards=1, per_shard=3)
    code, out, err = run_cli(
        capsys, "run", "--input", str(tmp_path / "in" / "*.jsonl"), "--output", str(tmp_path / "o"),
        "--batch-api",
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--batch-api" in err and "--backend gemini" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_plan_prices_at_the_batch_rate_and_states_the_turnaround(tmp_path, capsys):
    write_corpus(tmp_path / "in", shards=1, per_shard=30, repeats=False)
    base = ["plan", "--input", str(tmp_path / "in" / "*.jsonl"), "--backend", "gemini", "--json"]
    code, online, _ = run_cli(capsys, *base)
    code2, batch, _ = run_cli(capsys, *base, "--batch-api")
    assert code == code2 == 0
    online, batch = json.loads(online), json.loads(batch)
    assert batch["sent"] == online["sent"] == 30 and online["batch_api"] is None
    tokens = batch["cost"]["units"]
    assert batch["cost"]["batch_mode"] == pytest.approx(tokens * 0.075 / 1e6)  # published price
    assert "24 h" in batch["batch_api"]["turnaround"] and batch["batch_api"]["jobs"] == 1
    code, text, _ = run_cli(capsys, *base[:-1], "--batch-api")
    assert "at the Batch API price" in text and "turnaround up to 24 h" in text


def test_checkpoint_sink_streams_a_job_in_row_groups_and_leaves_nothing_for_an_empty_job(tmp_path):
    import pyarrow.parquet as pq

    from beamvec.batchapi.journal import BatchJob
    from beamvec.driver.batch_phase import CheckpointSink
    from beamvec.write.sink import Output

    output = Output(str(tmp_path / "out"), run_id="r1")
    sink = CheckpointSink(output, "fp", 4)
    job, empty = BatchJob("j1", "j1.keys", 5, ("s",), "t"), BatchJob("j2", "j2.keys", 1, ("s",), "t")
    writer = sink(job)
    vectors = np.arange(20, dtype=np.float32).reshape(5, 4)
    writer.write(["a", "b", "c"], vectors[:3])
    assert not list((tmp_path / "out" / "_partial").glob("**/*.parquet"))  # not visible yet
    writer.write(["d", "e"], vectors[3:])
    writer.commit()
    sink(empty).commit()
    (path,) = (tmp_path / "out" / "_partial").glob("**/*.parquet")
    assert path.name == "batch-j1.parquet"
    table = pq.read_table(path)
    assert table.column("content_hash").to_pylist() == list("abcde")
    np.testing.assert_array_equal(np.stack(table.column("vector").to_pylist()), vectors)
