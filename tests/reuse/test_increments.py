"""Nightly increments and crash-safe resume, counted in texts at the emulator."""

from __future__ import annotations

import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from beamvec.emulator.server import Emulator
from beamvec.records import content_hash

from helpers import (
    assert_reconciled,
    beam_run,
    billed_texts,
    child_env,
    pause_when,
    read_output,
    vectors_by_id,
    write_jsonl,
)

KEY = "fakekey-FAKE-increments-key-000000000000"


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shards = {
        f"s{s}": {f"s{s}-r{i}": f"shard {s} record {i} says something" for i in range(200)} for s in range(3)
    }
    for name, records in shards.items():
        write_jsonl(corpus / f"{name}.jsonl", records)
    with Emulator(api_key=KEY) as emu:
        args = [
            "--input", str(corpus / "*.jsonl"), "--output", str(tmp_path / "out"),
            "--backend", "gemini", "--api-base-url", emu.url, "--output-dimensionality", "768",
        ]
        yield emu, corpus, shards, args, tmp_path / "out"


@pytest.mark.slow
def test_unchanged_changed_and_new_shards(setup, capsys):
    emu, corpus, shards, args, out_dir = setup
    assert beam_run(capsys, *args)[0] == 0
    assert len(billed_texts(emu)) == 600 and max(billed_texts(emu).values()) == 1

    # 1. unchanged corpus: nothing is sent, not even the preflight
    emu.reset()
    code, stdout, _ = beam_run(capsys, *args)
    assert code == 0 and "nothing to do" in stdout
    assert emu.stats()["requests"] == 0

    # 2. 1% of one shard's records change: exactly those are sent
    changed = dict(shards["s1"])
    for i in (3, 50):
        changed[f"s1-r{i}"] = f"shard 1 record {i} now says something new"
    time.sleep(0.01)
    write_jsonl(corpus / "s1.jsonl", changed)
    emu.reset()
    assert beam_run(capsys, *args)[0] == 0
    assert set(billed_texts(emu)) == {content_hash(changed["s1-r3"]), content_hash(changed["s1-r50"])}

    # 3. a new shard: only its texts are sent
    new = {f"s9-r{i}": f"brand new shard line {i}" for i in range(40)}
    write_jsonl(corpus / "s9.jsonl", new)
    emu.reset()
    assert beam_run(capsys, *args)[0] == 0
    assert set(billed_texts(emu)) == {content_hash(t) for t in new.values()}

    out = read_output(str(out_dir))
    assert_reconciled(out)
    got = vectors_by_id(out)
    assert len(got) == 640
    assert len(out["manifest"]["runs"]) == 3  # the no-op rerun adds no history
    s1 = next(v for k, v in out["manifest"]["shards"].items() if k.startswith("s1"))
    assert (s1["reused"], s1["sent"]) == (198, 2)


@pytest.mark.slow
def test_identical_texts_in_a_shard_are_sent_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "a.jsonl", {f"r{i}": f"text {i % 10}" for i in range(300)})
    with Emulator(api_key=KEY) as emu:
        code, _, err = beam_run(
            capsys, "--input", str(tmp_path / "in" / "*"), "--output", str(tmp_path / "o"),
            "--backend", "gemini", "--api-base-url", emu.url, "--output-dimensionality", "768",
            "--max-in-flight", "4",
        )
        sent = billed_texts(emu)
    assert code == 0, err
    assert len(sent) == 10 and max(sent.values()) == 1
    out = read_output(str(tmp_path / "o"))
    assert_reconciled(out)
    got = vectors_by_id(out)
    assert len(got) == 300
    assert (got["r3"] == got["r13"]).all() and not (got["r3"] == got["r4"]).all()


@pytest.mark.slow
def test_new_model_into_new_output_leaves_the_old_one_alone(setup, capsys):
    emu, corpus, shards, args, out_dir = setup
    assert beam_run(capsys, *args)[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in out_dir.rglob("*")}
    other = [a if a != str(out_dir) else str(out_dir.parent / "out-3072") for a in args]
    other[other.index("--output-dimensionality") + 1] = "3072"
    assert beam_run(capsys, *other)[0] == 0
    assert {p.name: p.stat().st_mtime_ns for p in out_dir.rglob("*")} == before
    # and the same new config into the old output is refused
    wrong = list(args)
    wrong[wrong.index("--output-dimensionality") + 1] = "3072"
    code, _, err = beam_run(capsys, *wrong)
    assert code == 2 and "another configuration" in err


@pytest.mark.slow
def test_backfill_selects_partitions(tmp_path, capsys):
    for day in ("2026-11-18", "2026-11-19", "2026-11-20"):
        part = tmp_path / "corpus" / f"dt={day}"
        part.mkdir(parents=True)
        write_jsonl(part / "a.jsonl", {f"{day}-{i}": f"news of {day} item {i}" for i in range(3)})
    code, _, err = beam_run(
        capsys, "--input", str(tmp_path / "corpus" / "*" / "*.jsonl"), "--output", str(tmp_path / "o"),
        "--since", "2026-11-19", "--until", "2026-11-19",
    )
    assert code == 0, err
    assert set(vectors_by_id(read_output(str(tmp_path / "o")))) == {f"2026-11-19-{i}" for i in range(3)}


@pytest.mark.slow
def test_kill_9_then_rerun(tmp_path):
    """A run killed mid-way leaves no partial file visible; the rerun ends with
    exactly one row per record, and re-sends only batches that were in flight."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = {}
    for s in range(6):
        records = {f"s{s}-r{i}": f"shard {s} line {i} of the crash test" for i in range(300)}
        texts.update(records)
        write_jsonl(corpus / f"s{s}.jsonl", records)
    out_dir = tmp_path / "out"
    env = child_env(GEMINI_API_KEY=KEY)
    max_in_flight, concurrent_shards = 2, 2
    with Emulator(api_key=KEY, latency_ms=150) as emu:
        cmd = [
            sys.executable, "-m", "beamvec.cli", "run", "--runner=DirectRunner",
            "--input", str(corpus / "*.jsonl"), "--output", str(out_dir),
            "--backend", "gemini", "--api-base-url", emu.url, "--output-dimensionality", "768",
            "--max-in-flight", str(max_in_flight), "--concurrent-shards", str(concurrent_shards),
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pause_when(proc, lambda: len(list(out_dir.glob("vectors/*.parquet"))) >= 2
                   and len(list(out_dir.glob("_partial/*/*.parquet"))) >= 1,
                   "two shards committed and a third one's part written")
        proc.kill()
        proc.wait()
        first = billed_texts(emu)
        assert 0 < sum(first.values()) < len(texts)  # paused with shards left: killed mid-run
        assert not (out_dir / "_SUCCESS").exists()
        for path in out_dir.glob("vectors/*.parquet"):
            pq.read_table(path)  # every visible vector file is complete
        emu.reset()
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        second = billed_texts(emu)
    out = read_output(str(out_dir))
    assert_reconciled(out)
    assert set(vectors_by_id(out)) == set(texts)
    assert not any("_tmp" in f or "_partial" in f for f in out["files"])
    resent = set(first) & set(second)
    in_flight_cap = max_in_flight * concurrent_shards * 100
    assert len(resent) <= in_flight_cap
    assert set(first) | set(second) == {content_hash(t) for t in texts.values()}


@pytest.mark.slow
def test_success_marker_is_withdrawn_while_a_run_changes_the_output(tmp_path, capsys, monkeypatch):
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "a.jsonl", {"1": "one"})
    args = ("--input", str(tmp_path / "in" / "*"), "--output", str(tmp_path / "o"))
    assert beam_run(capsys, *args)[0] == 0
    write_jsonl(tmp_path / "in" / "b.jsonl", {"2": "two"})
    from beamvec.driver import job

    seen = []
    real = job.EmbedCorpus.expand

    def spy(self, pbegin):
        seen.append((tmp_path / "o" / "_SUCCESS").exists())
        return real(self, pbegin)

    monkeypatch.setattr(job.EmbedCorpus, "expand", spy)
    assert beam_run(capsys, *args)[0] == 0
    assert seen == [False] and (tmp_path / "o" / "_SUCCESS").exists()


@pytest.mark.slow
def test_kill_9_mid_split_redoes_only_unfinished_splits(tmp_path):
    """One large file cut into splits: after kill -9 and a rerun,
    exactly one row per record, and the parts committed before the kill are
    kept as they are: neither rewritten nor their texts sent again."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = {f"r{i:05d}": f"record {i} of the one large file, about topic {i % 17}" for i in range(3000)}
    write_jsonl(corpus / "big.jsonl", texts)
    out_dir = tmp_path / "out"
    env = child_env(GEMINI_API_KEY=KEY)
    with Emulator(api_key=KEY, latency_ms=150) as emu:
        cmd = [
            sys.executable, "-m", "beamvec.cli", "run", "--runner=DirectRunner",
            "--input", str(corpus / "*.jsonl"), "--output", str(out_dir), "--split-bytes", "16384",
            "--backend", "gemini", "--api-base-url", emu.url, "--output-dimensionality", "768",
            "--max-in-flight", "2", "--concurrent-shards", "2",
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pause_when(proc, lambda: len(list(out_dir.glob("vectors/*.part-*.parquet"))) >= 3,
                   "three splits committed")
        proc.kill()
        proc.wait()
        kept = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in out_dir.glob("vectors/*.parquet")}
        parts = int(next(iter(kept)).rsplit("-of-", 1)[1].removesuffix(".parquet"))
        assert 3 <= len(kept) < parts  # paused with splits left: killed between splits
        done_ids = {i for name in kept for i in pq.read_table(out_dir / "vectors" / name).column("id").to_pylist()}
        emu.reset()
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr
        second = billed_texts(emu)
    out = read_output(str(out_dir))
    assert_reconciled(out)
    assert set(vectors_by_id(out)) == set(texts)  # one row per record (vectors_by_id refuses doubles)
    assert len(out["vectors"]) == parts
    for name, stat in kept.items():  # committed parts were kept, not redone
        path = out_dir / "vectors" / name
        assert (path.stat().st_mtime_ns, path.stat().st_size) == stat, name
    assert not {content_hash(texts[i]) for i in done_ids} & set(second)  # nor their texts re-sent
    assert not any("_tmp" in f or "_partial" in f for f in out["files"])
