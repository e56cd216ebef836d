"""Case by case, as an adversarial user would try it: two runs on
one output, damaged vector files, a run reading its own output, a glob with
a .md file, a vanished input, broken manifests, Ctrl-C, non-string ids, and
`--retry-dead-letters` billing exactly the dead-lettered texts.

Every run goes through the real CLI against the Gemini emulator (its /stats
say which texts were billed, and how often); runs that must be interrupted
or overlapped are subprocesses. No output may ever hold a "Traceback".
"""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest

from beamvec.emulator.server import Emulator
from beamvec.records import content_hash

from helpers import (
    API_KEY,
    assert_reconciled,
    beam_run,
    billed_texts,
    child_env,
    jsonl,
    one_line,
    pause_when,
    read_output,
    run_cli,
    vectors_by_id,
)

pytest_plugins = ["servers"]

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
DIM = "16"


pytestmark = pytest.mark.usefixtures("key_env")


def _gemini(emu: Emulator) -> list[str]:
    return ["--backend", "gemini", "--api-base-url", emu.url, "--output-dimensionality", DIM]


def _write(url: str, rows: dict[str, str], options: dict[str, Any] | None = None) -> None:
    fs, path = fsspec.core.url_to_fs(url, **(options or {}))
    if "file" in fs.protocol:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, jsonl(rows).encode())


def _rows(name: str, count: int) -> dict[str, str]:
    return {f"{name}-{i}": f"{name}: record {i} of the adversarial test, {i * 7919 % 1000}" for i in range(count)}


def _no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text[-3000:]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "beamvec.cli", *args]


@contextmanager
def _killed_on_exit(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """A child run that a failed assertion must not leave running."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _objects(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    fs.invalidate_cache()
    try:
        return sorted(p[len(root) + 1:] for p in fs.find(root))
    except FileNotFoundError:
        return []


# --------------------------------------------------------------------------- 1. two runs


@pytest.mark.slow
@pytest.mark.parametrize("order", ["a-then-b", "b-then-a"])
@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_runs_on_one_output(where, order, tmp_path, request, capsys, monkeypatch):
    """A cron overlap on disjoint inputs: the second run refuses in one line
    naming the first (host, pid, since) while the first holds the output;
    a-then-b tries as soon as the lease exists, b-then-a once the first
    shard is committed. The first run is then paused (SIGSTOP) until the
    second has been refused, so "the first still holds the output" is a state
    the test sets, not a race it hopes to win. The first completes; the
    refused one, rerun after, completes too; every text is billed once and
    nothing stray is left."""
    if where == "s3":
        options = request.getfixturevalue("s3_server")
        base = request.getfixturevalue("s3_bucket")
        for name, value in AWS_ENV.items():
            monkeypatch.setenv(name, value)
        flags = ["--storage-option", f"client_kwargs.endpoint_url={options['endpoint_url']}"]
    else:
        options, base, flags = {}, str(tmp_path), []
    texts: dict[str, str] = {}
    sizes = {"a": {"a0": 300, "a1": 250, "a2": 200}, "b": {"b0": 120, "b1": 90}}
    for group, shards in sizes.items():
        for shard, count in shards.items():
            rows = _rows(shard, count)
            texts.update(rows)
            _write(f"{base}/{group}/{shard}.jsonl", rows, options)
    first, second = ("a", "b") if order == "a-then-b" else ("b", "a")
    out = f"{base}/out"
    fs, root = fsspec.core.url_to_fs(out, **options)
    with Emulator(api_key=API_KEY, latency_ms=500) as emu:
        common = ["--output", out, *flags, *_gemini(emu), "--max-in-flight", "1",
                  "--concurrent-shards", "1"]
        proc = subprocess.Popen(
            _cli("run", "--runner=DirectRunner", "--quiet", "--input", f"{base}/{first}/*.jsonl", *common),
            env=child_env(**(AWS_ENV if where == "s3" else {})), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        with _killed_on_exit(proc):
            if order == "a-then-b":
                pause_when(proc, lambda: "_lease.json" in _objects(fs, root), "the lease")
            else:
                pause_when(proc, lambda: any(n.startswith("vectors/") for n in _objects(fs, root)),
                           "a committed shard")
            try:  # paused, it holds the lease (TTL 120 s) until SIGCONT
                code, _, err = beam_run(capsys, "--input", f"{base}/{second}/*.jsonl", *common)
            finally:
                proc.send_signal(signal.SIGCONT)
            line = one_line(err)
            assert code == 1, err
            assert f"host {socket.gethostname()}, pid {proc.pid}, since " in line, line
            assert "another beamvec run is writing to" in line and out in line, line
            assert "wait" in line and "--break-lease" in line, line
            stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        _no_traceback(stdout, stderr)
        fs.invalidate_cache()  # written by another process
        after_first = read_output(out, options)
        assert after_first["success"]
        assert {n.split(".")[0] for n in after_first["manifest"]["shards"]} == set(sizes[first])
        code, _, err = beam_run(capsys, "--input", f"{base}/{second}/*.jsonl", *common)
        assert code == 0, err
        sent = billed_texts(emu)
    # No text billed twice, and every text billed once.
    assert sent == {content_hash(t): 1 for t in texts.values()}
    fs.invalidate_cache()
    output = read_output(out, options)
    assert_reconciled(output)
    assert {n.split(".")[0] for n in output["manifest"]["shards"]} == set(sizes["a"]) | set(sizes["b"])
    assert set(vectors_by_id(output)) == set(texts)
    left = _objects(fs, root)
    assert not [n for n in left if n.startswith(("_tmp", "_partial")) or n == "_lease.json"], left


# --------------------------------------------------------------------------- 2. damage


DAMAGE = ["truncate", "copy-another", "fewer-rows-same-footer", "delete"]
SHARDS = {"s0": 30, "s1": 45, "s2": 60, "s3": 75}  # different sizes: different files


def _file_of(vectors: Path, shard: str) -> Path:
    """Output names carry the input's extension and a hash: s1.jsonl-<hash>.parquet."""
    (found,) = vectors.glob(f"{shard}.jsonl-*.parquet")
    return found


def _keep_rows(path: Path, rows: int) -> None:
    """Rewrite a Parquet file with its first ``rows`` rows and its footer unchanged."""
    pf = pq.ParquetFile(path)
    footer = pf.metadata.metadata[b"beamvec"]
    table = pf.read().slice(0, rows)
    writer = pq.ParquetWriter(str(path), table.schema.remove_metadata())
    writer.write_table(table.replace_schema_metadata(None))
    writer.add_key_value_metadata({b"beamvec": footer})
    writer.close()


def _rerun_redoes(victim: Path, capsys, caplog, args: list[str]) -> str:
    """Rerun: it succeeds and says in one warning line that the shard of
    ``victim`` is embedded again. Returns its stdout."""
    with caplog.at_level(logging.WARNING, logger="beamvec"):
        code, stdout, err = beam_run(capsys, *args)
    assert code == 0, err
    _no_traceback(stdout, err)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(victim) in warnings[0] and "embedded again" in warnings[0], warnings
    return stdout


def _damage(kind: str, vectors: Path) -> Path:
    victim = _file_of(vectors, "s1")
    if kind == "truncate":
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])
    elif kind == "copy-another":
        victim.write_bytes(_file_of(vectors, "s2").read_bytes())
    elif kind == "fewer-rows-same-footer":
        _keep_rows(victim, SHARDS["s1"] - 5)
        assert json.loads(pq.ParquetFile(victim).metadata.metadata[b"beamvec"])["shard"]["embedded"] == 45
    else:
        victim.unlink()
    return victim


@pytest.mark.slow
@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_vector_file_is_found_and_redone(kind, tmp_path, capsys, emulator, caplog):
    texts: dict[str, str] = {}
    for name, count in SHARDS.items():
        rows = _rows(name, count)
        texts.update(rows)
        _write(str(tmp_path / "in" / f"{name}.jsonl"), rows)
    out = tmp_path / "out"
    args = ["--input", str(tmp_path / "in" / "*.jsonl"), "--output", str(out), *_gemini(emulator)]
    assert beam_run(capsys, *args)[0] == 0
    before = read_output(str(out))
    # Every commit record knows its vector file's size: the cheap check.
    for name, shard in before["manifest"]["shards"].items():
        assert shard["vector_bytes"] == (out / "vectors" / f"{name}.parquet").stat().st_size
    victim = _damage(kind, out / "vectors")

    # inspect and verify name the file and the repair, exit non-zero, no traceback.
    code, stdout, err = run_cli(capsys, "inspect", str(out))
    _no_traceback(stdout, err)
    assert code == 1, stdout + err  # missing or damaged: the output does not hold what it says
    assert str(victim) in stdout and "rerun `beamvec run`" in stdout, stdout
    assert "complete: _SUCCESS written" not in stdout and "INCOMPLETE" in stdout, stdout
    code, stdout, err = run_cli(capsys, "verify", "--quiet", str(out))
    _no_traceback(stdout, err)
    assert code == 1 and str(victim) in stdout and "rerun `beamvec run`" in stdout, stdout + err

    # plan (read-only, no lease) names it too and plans exactly that shard.
    code, stdout, err = run_cli(capsys, "plan", "--json", *args)
    _no_traceback(stdout, err)
    assert code == 0 and str(victim) in err, err
    planned = json.loads(stdout)
    assert planned["shards_to_embed"] == 1 and planned["sent"] == SHARDS["s1"], planned
    assert planned["output"]["damaged"] == [str(victim)] and not planned["output"]["complete"]

    # The rerun redoes exactly that shard, and says so in one warning line.
    emulator.reset()
    stdout = _rerun_redoes(victim, capsys, caplog, args)
    assert "1 run, 3 skipped" in stdout, stdout
    assert billed_texts(emulator) == {content_hash(v): 1 for k, v in texts.items() if k.startswith("s1-")}
    after = read_output(str(out))
    assert_reconciled(after)
    want, got = vectors_by_id(before), vectors_by_id(after)
    assert set(got) == set(texts)
    for record_id, vector in want.items():
        np.testing.assert_array_equal(got[record_id], vector)
    assert run_cli(capsys, "verify", "--quiet", str(out))[0] == 0
    assert run_cli(capsys, "inspect", str(out))[0] == 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["truncate", "fewer-rows-same-footer", "delete"])
def test_a_damaged_dead_letter_file_is_found_and_its_shard_redone(kind, tmp_path, capsys, caplog):
    """The dead letters are the only copy of the refused records: a torn,
    shortened or missing dead-letter file voids its shard's commit. inspect
    and verify name it with the repair (rerun), plan plans that shard, and
    the rerun redoes it alone, dead letters and all."""
    (tmp_path / "in").mkdir()
    _write(str(tmp_path / "in" / "s.jsonl"), {"a": "hello there", "b": "general kenobi"})
    with open(tmp_path / "in" / "s.jsonl", "a") as fh:
        fh.write('{"id": "c", "text": ""}\n{"id": "d"}\n{"id": "e", "text": 5}\n')  # three dead letters
    _write(str(tmp_path / "in" / "t.jsonl"), {"f": "another shard", "g": "with no dead letters"})
    out = tmp_path / "out"
    args = ["--input", str(tmp_path / "in" / "*.jsonl"), "--output", str(out)]
    assert beam_run(capsys, *args)[0] == 0
    before = read_output(str(out))
    (dead,) = (out / "dead_letters").glob("*.parquet")
    (shard,) = (s for name, s in before["manifest"]["shards"].items() if name == dead.stem)
    assert shard["dead_letter_bytes"] == dead.stat().st_size  # the cheap check needs no read
    if kind == "truncate":
        data = dead.read_bytes()
        dead.write_bytes(data[: len(data) // 2])
    elif kind == "fewer-rows-same-footer":
        _keep_rows(dead, 2)
    else:
        dead.unlink()

    for command in ("inspect", "verify"):  # as for a damaged vector file: a problem named, exit 1
        code, stdout, err = run_cli(capsys, command, str(out))
        _no_traceback(stdout, err)
        assert code == 1, stdout + err
        assert str(dead) in stdout and "rerun `beamvec run`" in stdout, stdout + err
        assert stdout.count(dead.name) == 1, stdout  # once, with its repair
    code, stdout, err = run_cli(capsys, "plan", "--json", *args)
    _no_traceback(stdout, err)
    assert code == 0 and str(dead) in err, err
    planned = json.loads(stdout)
    assert planned["shards_to_embed"] == 1 and planned["output"]["damaged"] == [str(dead)], planned

    stdout = _rerun_redoes(dead, capsys, caplog, args)
    assert "1 run, 1 skipped" in stdout, stdout
    after = read_output(str(out))
    assert_reconciled(after)
    assert sorted(after["dead"][dead.stem].column("id").to_pylist()) == ["c", "d", "e"]
    want, got = vectors_by_id(before), vectors_by_id(after)
    assert set(got) == {"a", "b", "f", "g"}
    for record_id, vector in want.items():
        np.testing.assert_allclose(got[record_id], vector, atol=1e-6)
    assert run_cli(capsys, "verify", "--quiet", str(out))[0] == 0
    assert "1 run" not in beam_run(capsys, *args)[1]  # and the next run trusts it again


# --------------------------------------------------------------------------- 4. retry


@pytest.mark.slow
def test_retry_dead_letters_bills_exactly_the_dead_lettered_texts(tmp_path, capsys):
    """4,001 texts; one attempt per batch against 25 % 503s dead-letters some
    batches as embed_failed; with the failures gone, --retry-dead-letters
    sends exactly those texts, once each, and nothing else."""
    texts: dict[str, str] = {}
    for name, count in {"t0": 1000, "t1": 1000, "t2": 1000, "t3": 1000, "t4": 1}.items():
        rows = _rows(name, count)
        texts.update(rows)
        _write(str(tmp_path / "in" / f"{name}.jsonl"), rows)
    out = tmp_path / "out"
    with Emulator(api_key=API_KEY, fail_503=0.25, seed=7) as emu:
        args = ["--input", str(tmp_path / "in" / "*.jsonl"), "--output", str(out), *_gemini(emu)]
        code, _, err = beam_run(capsys, *args, "--max-attempts", "1")
        assert code == 0, err
        first = read_output(str(out))
        dead = {i for t in first["dead"].values() for i in t.column("id").to_pylist()}
        reasons = {r for t in first["dead"].values() for r in t.column("reason").to_pylist()}
        assert reasons == {"embed_failed"} and 0 < len(dead) < len(texts), (reasons, len(dead))
        assert first["manifest"]["totals"]["dead_lettered"] == len(dead)
        emu.update(fail_503=0.0)
        code, stdout, err = run_cli(capsys, "plan", "--json", *args, "--retry-dead-letters")
        assert code == 0, err
        assert json.loads(stdout)["sent"] == len(dead)  # plan says what the retry bills
        emu.reset()
        code, stdout, err = beam_run(capsys, *args, "--retry-dead-letters")
        assert code == 0, err
        _no_traceback(stdout, err)
        sent = billed_texts(emu)
    assert sent == {content_hash(texts[i]): 1 for i in dead}
    after = read_output(str(out))
    assert_reconciled(after)
    assert after["manifest"]["totals"]["embedded"] == len(texts) == 4001
    assert after["dead"] == {}
    want, got = vectors_by_id(first), vectors_by_id(after)
    assert set(got) == set(texts)
    for record_id, vector in want.items():  # the good ones were reused, not redone
        np.testing.assert_array_equal(got[record_id], vector)


def test_retry_dead_letters_refuses_an_unknown_reason(tmp_path, capsys):
    _write(str(tmp_path / "in" / "a.jsonl"), _rows("a", 2))
    code, _, err = beam_run(capsys, "--input", str(tmp_path / "in" / "*.jsonl"),
                            "--output", str(tmp_path / "out"), "--retry-dead-letters", "embed_faild")
    line = one_line(err)
    assert code == 2 and "embed_faild" in line and "embed_failed" in line, line
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 5. the rest


@pytest.mark.slow
def test_nested_output_is_never_read_as_input(tmp_path, capsys, emulator, monkeypatch):
    """`--input 'c9/**' --output c9/out`, twice: the rerun does not read its own output."""
    monkeypatch.chdir(tmp_path)
    texts = {**_rows("a", 20), **_rows("b", 15)}
    _write(str(tmp_path / "c9" / "a.jsonl"), _rows("a", 20))
    _write(str(tmp_path / "c9" / "sub" / "b.jsonl"), _rows("b", 15))
    args = ["--input", "c9/**", "--output", "c9/out", *_gemini(emulator)]
    emulator.reset()
    code, _, err = beam_run(capsys, *args)
    assert code == 0, err
    assert sum(billed_texts(emulator).values()) == len(texts)
    emulator.reset()
    code, stdout, err = beam_run(capsys, *args)
    _no_traceback(stdout, err)
    assert code == 0, err
    assert "all 2 shards are already committed" in stdout, stdout
    assert billed_texts(emulator) == {}
    output = read_output("c9/out")
    assert_reconciled(output)
    assert len(output["manifest"]["shards"]) == 2 and set(vectors_by_id(output)) == set(texts)


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_glob_matching_a_markdown_file_is_refused_before_anything(command, tmp_path, capsys, emulator):
    _write(str(tmp_path / "c9" / "a.jsonl"), _rows("a", 3))
    (tmp_path / "c9" / "README.md").write_text("# notes\n")
    emulator.reset()
    code, _, err = run_cli(capsys, command, "--input", str(tmp_path / "c9" / "*"),
                           "--output", str(tmp_path / "out"), *_gemini(emulator))
    line = one_line(err, command)
    assert code == 2 and "README.md" in line and "--format" in line, line
    assert not (tmp_path / "out").exists()
    assert emulator.stats()["requests"] == 0


@pytest.mark.slow
def test_a_vanished_input_fails_its_shard_only(tmp_path, capsys, emulator, monkeypatch, caplog):
    """Deleted after planning (here: right after the preflight): the other
    shards commit, the run exits non-zero with a line naming the file, and
    a rerun with the file back completes, sending only its texts."""
    import beamvec.driver.job as job

    texts: dict[str, dict[str, str]] = {}
    for name, count in {"a": 20, "b": 25, "c": 30}.items():
        texts[name] = _rows(name, count)
        _write(str(tmp_path / "in" / f"{name}.jsonl"), texts[name])
    gone = tmp_path / "in" / "c.jsonl"
    body = gone.read_bytes()
    real = job.preflight

    def preflight_then_delete(*a: Any, **kw: Any) -> Any:
        seed = real(*a, **kw)
        gone.unlink()
        return seed

    monkeypatch.setattr(job, "preflight", preflight_then_delete)
    args = ["--input", str(tmp_path / "in" / "*.jsonl"), "--output", str(tmp_path / "out"), *_gemini(emulator)]
    with caplog.at_level(logging.WARNING, logger="beamvec"):
        code, stdout, err = beam_run(capsys, *args)
    _no_traceback(stdout, err, caplog.text)
    assert code == 1, err
    lines = [r.getMessage() for r in caplog.records if str(gone) in r.getMessage()]
    assert len(lines) == 1 and "no longer exists" in lines[0], caplog.text
    assert "INCOMPLETE" in stdout
    partial = read_output(str(tmp_path / "out"))
    assert not partial["success"]
    assert {n.split(".")[0] for n in partial["manifest"]["shards"]} == {"a", "b"}
    assert set(vectors_by_id(partial)) == set(texts["a"]) | set(texts["b"])

    monkeypatch.setattr(job, "preflight", real)
    gone.write_bytes(body)
    emulator.reset()
    code, stdout, err = beam_run(capsys, *args)
    assert code == 0, err
    assert billed_texts(emulator) == {content_hash(t): 1 for t in texts["c"].values()}
    output = read_output(str(tmp_path / "out"))
    assert_reconciled(output)
    assert {n.split(".")[0] for n in output["manifest"]["shards"]} == {"a", "b", "c"}


BAD_MANIFESTS = {
    "not-json": b"{not json",
    "not-an-object": b"[1, 2, 3]",
    "shards-not-a-mapping": b'{"shards": [1, 2]}',
    "shard-not-an-object": b'{"model": "m", "shards": {"a": 5}}',
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_a_broken_manifest_is_one_line_naming_it(case, tmp_path, capsys, emulator):
    """Exit 2 (README: a problem the user fixes, here by moving the file aside)."""
    _write(str(tmp_path / "in" / "a.jsonl"), _rows("a", 3))
    out = tmp_path / "out"
    out.mkdir()
    (out / "_manifest.json").write_bytes(BAD_MANIFESTS[case])
    emulator.reset()
    for argv in (
        ["run", "--runner=DirectRunner", "--quiet", "--input", str(tmp_path / "in" / "*.jsonl"),
         "--output", str(out), *_gemini(emulator)],
        ["plan", "--input", str(tmp_path / "in" / "*.jsonl"), "--output", str(out), *_gemini(emulator)],
        ["inspect", str(out)],
        ["verify", "--input", str(tmp_path / "in" / "*.jsonl"), str(out)],
    ):
        code, stdout, err = run_cli(capsys, *argv)
        _no_traceback(stdout)
        line = one_line(err, argv[0])
        assert code == 2, (argv[0], err)
        assert f"{out}/_manifest.json" in line and "move it aside" in line, line
    assert emulator.stats()["requests"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["_manifest.json"]  # nothing written, no lease left


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_rerun_resumes(tmp_path):
    texts: dict[str, str] = {}
    for name in ("a", "b", "c", "d"):
        rows = _rows(name, 250)
        texts.update(rows)
        _write(str(tmp_path / "in" / f"{name}.jsonl"), rows)
    out = tmp_path / "out"
    with Emulator(api_key=API_KEY, latency_ms=400) as emu:
        cmd = _cli("run", "--runner=DirectRunner", "--quiet", "--input", str(tmp_path / "in" / "*.jsonl"),
                   "--output", str(out), *_gemini(emu), "--max-in-flight", "1", "--concurrent-shards", "1")
        proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with _killed_on_exit(proc):
            pause_when(proc, lambda: any((out / "vectors").glob("*.parquet")), "a committed shard")
            proc.send_signal(signal.SIGINT)
            proc.send_signal(signal.SIGCONT)
            stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130, stderr[-3000:]
        _no_traceback(stdout, stderr)
        line = one_line(stderr)
        assert "interrupted" in line and "committed" in line and "rerun" in line, line
        assert not (out / "_lease.json").exists()  # released on Ctrl-C
        assert not (out / "_SUCCESS").exists()
        committed = {p.stem.split(".")[0] for p in (out / "vectors").glob("*.parquet")}
        assert committed and committed != {"a", "b", "c", "d"}
        assert f"{len(committed)} of 4 shards are committed in {out}" in line, line
        first = billed_texts(emu)
        emu.reset()
        result = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        second = billed_texts(emu)
    output = read_output(str(out))
    assert_reconciled(output)
    assert set(vectors_by_id(output)) == set(texts)
    done_before = {content_hash(v) for k, v in texts.items() if k.split("-")[0] in committed}
    assert not done_before & set(second)  # committed shards were not sent again
    assert set(first) | set(second) == {content_hash(t) for t in texts.values()}


@pytest.mark.slow
def test_non_string_ids_are_dead_lettered_not_stringified(tmp_path, capsys, emulator):
    lines = [
        {"id": {"a": 1}, "text": "an object id"},
        {"id": True, "text": "a boolean id"},
        {"id": [1, 2], "text": "a list id"},
        {"id": 1.5, "text": "a float id"},
        {"id": 1, "text": "an integer id"},
        {"id": "2", "text": "a string id"},
    ]
    path = tmp_path / "in" / "ids.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, stdout, err = beam_run(capsys, "--input", str(path), "--output", str(tmp_path / "out"),
                                 *_gemini(emulator))
    _no_traceback(stdout, err)
    assert code == 0, err
    output = read_output(str(tmp_path / "out"))
    assert_reconciled(output)
    assert set(vectors_by_id(output)) == {"1", "2"}
    (table,) = output["dead"].values()
    dead = table.to_pylist()
    assert sorted(d["source_position"] for d in dead) == [1, 2, 3, 4]
    assert {d["reason"] for d in dead} == {"invalid_id"}
    assert all(re.search(r"ids must be strings or integers", d["message"]) for d in dead)
