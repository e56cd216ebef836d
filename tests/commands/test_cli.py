"""Every command through the `beamvec` entry point: help, exit codes, one-line errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import ROOT, SRC, one_line, read_output, run_cli, vectors_by_id

COMMANDS = ["run", "plan", "inspect", "search", "embed", "verify", "export", "report", "emulator"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(capsys, command):
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0
    assert "usage: beamvec" in out and "example" in out.lower()


def test_unknown_command_is_named_with_a_suggestion(capsys):
    code, out, err = run_cli(capsys, "runn", "--input", "x")
    assert code == 2 and out == ""
    assert err.strip() == "beamvec: unknown command 'runn'; did you mean `beamvec run`?"
    code, _, err = run_cli(capsys, "frobnicate")
    assert code == 2 and "'frobnicate'" in err and "beamvec --help" in err and len(err.splitlines()) == 1


def test_help_lists_the_commands_and_the_exit_codes(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and all(f"  {c}" in out for c in COMMANDS)
    for code_, meaning in (("0", "done"), ("1", "failed"), ("2", "usage"), ("3", "--fail-on-dead-letters"),
                           ("75", "--no-wait"), ("130", "interrupted"), ("143", "terminated")):
        assert any(line.split()[:1] == [code_] and meaning in line for line in out.splitlines()), code_


def test_every_command_of_the_cli_is_in_this_files_list():
    """A command added to the CLI without a test here fails this (each of
    COMMANDS runs at least once below with its output checked)."""
    from beamvec import cli

    assert sorted(cli.COMMANDS) == sorted(COMMANDS)


def test_version_prints_the_package_version(capsys):
    declared = next(line.split('"')[1] for line in (ROOT / "pyproject.toml").read_text().splitlines()
                    if line.startswith("version = "))
    for flag in ("--version", "-V"):
        code, out, err = run_cli(capsys, flag)
        assert (code, out, err) == (0, f"beamvec {declared}\n", "")


def test_log_level_sets_the_level_and_a_bad_one_is_named(capsys):
    import logging

    root = logging.getLogger()
    before = root.level
    try:
        code, _, _ = run_cli(capsys, "--log-level", "debug", "--version")
        assert code == 0 and root.level == logging.DEBUG
        code, _, _ = run_cli(capsys, "--version", "--log-level=error")
        assert code == 0 and root.level == logging.ERROR
    finally:
        root.setLevel(before)
    code, _, err = run_cli(capsys, "--log-level", "loud", "run")
    assert code == 2 and "--log-level 'loud'" in one_line(err, None) and "debug, info, warning, error" in err


@pytest.mark.slow
def test_plan_run_inspect_search_embed_verify_through_the_cli(tmp_path, capsys):
    corpus = tmp_path / "c"
    corpus.mkdir()
    texts = {"cat": "a small cat sleeps on the sofa", "bank": "the central bank raised interest rates",
             "goal": "the striker scored a late goal"}
    (corpus / "a.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in texts.items()))
    out = str(tmp_path / "o")
    code, stdout, _ = run_cli(capsys, "plan", "--input", str(corpus / "*.jsonl"), "--json")
    assert code == 0 and json.loads(stdout)["records"] == 3
    code, _, err = run_cli(capsys, "run", "--input", str(corpus / "*.jsonl"), "--output", out, "--quiet")
    assert code == 0, err
    code, stdout, _ = run_cli(capsys, "inspect", out)
    assert code == 0 and "3 vectors" in stdout
    code, stdout, _ = run_cli(capsys, "search", out, "kitten", "-k", "1")
    assert code == 0 and " cat " in stdout
    code, stdout, err = run_cli(capsys, "embed", out, "kitten", texts["bank"])
    assert code == 0, err
    queries = json.loads(stdout)
    stored = vectors_by_id(read_output(out))
    assert queries["dimension"] == 384  # all-MiniLM-L6-v2's published dimension
    kitten, bank = (np.asarray(v, dtype=np.float32) for v in queries["vectors"])
    assert max(stored, key=lambda rid: float(stored[rid] @ kitten)) == "cat"
    np.testing.assert_allclose(bank, stored["bank"], atol=1e-3)  # made as the output's were
    code, stdout, _ = run_cli(capsys, "verify", "--input", str(corpus / "*.jsonl"), out)
    assert code == 0 and stdout.startswith("OK")
    code, _, err = run_cli(capsys, "inspect", str(tmp_path / "nothing-here"))
    assert code == 2 and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_console_script_and_pipeline_module_run_the_same_job(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("one line\nanother line\n")
    repo = ROOT
    script = Path(sys.executable).parent / "beamvec"
    for cmd, out in (([str(script), "run"], "o1"), ([sys.executable, "-m", "pipelines.embed_corpus"], "o2")):
        result = subprocess.run(
            [*cmd, "--input", str(tmp_path / "in" / "*.txt"), "--output", str(tmp_path / out), "--quiet"],
            capture_output=True, text=True, timeout=180, cwd=repo,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == "" and result.stderr == ""  # --quiet: the exit code says it


# -- scripting: --quiet, --json, exit codes ---------------------------------------------


def _mixed_corpus(root: Path, name: str, good: int, bad: int) -> None:
    """``good`` embeddable lines and ``bad`` lines that are not JSON."""
    root.mkdir(exist_ok=True)
    lines = [json.dumps({"id": f"{name}{i}", "text": f"sentence {i} of {name}"}) for i in range(good)]
    lines += ["{not json"] * bad
    (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_run_json_summary_reconciles_with_the_manifest(tmp_path, capsys):
    corpus, out = tmp_path / "c", str(tmp_path / "o")
    _mixed_corpus(corpus, "a", 6, 2)
    code, stdout, _ = run_cli(capsys, "run", "--input", str(corpus / "*.jsonl"), "--output", out, "--json",
                              "--progress-interval=0")
    assert code == 0
    first = json.loads(stdout)  # stdout holds the JSON alone
    assert first["schema"] == "beamvec.run/1" and first["status"] == "complete" and first["exit_code"] == 0
    assert (first["read"], first["embedded"], first["dead_lettered"]) == (8, 6, 2)
    assert (first["sent"], first["reused"]) == (6, 0)
    assert first["dead_letters_by_reason"] == {"invalid_json": 2}
    # A second file repeats three of the first file's texts: reused, not sent.
    (corpus / "b.jsonl").write_text("".join(
        json.dumps({"id": f"b{i}", "text": f"sentence {i} of a"}) + "\n" for i in range(3)
    ) + json.dumps({"id": "b9", "text": "a text of its own"}) + "\n")
    code, stdout, _ = run_cli(capsys, "run", "--input", str(corpus / "*.jsonl"), "--output", out, "--json",
                              "--progress-interval=0")
    second = json.loads(stdout)
    assert code == 0 and (second["shards_run"], second["shards_skipped"]) == (1, 1)
    assert (second["read"], second["embedded"], second["sent"], second["reused"]) == (4, 4, 1, 3)
    manifest = json.loads((tmp_path / "o" / "_manifest.json").read_text())
    run = manifest["runs"][-1]
    for key in ("read", "embedded", "sent", "reused", "dead_lettered"):
        assert second[key] == run[key], key
    text = subprocess.run(  # the text summary says the same
        [sys.executable, "-m", "beamvec.cli", "run", "--input", str(corpus / "*.jsonl"),
         "--output", out, "--force", "--progress-interval=0"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=_env(),
    )
    # --force: 10 vectors, 7 texts sent and 3 repeats of them, none reused
    assert "embedded       10  (7 sent, 0 reused, 3 repeats" in text.stdout, text.stdout + text.stderr


@pytest.mark.slow
def test_quiet_prints_nothing_and_dead_letters_exit_3_only_when_asked(tmp_path, capsys):
    corpus = tmp_path / "c"
    _mixed_corpus(corpus, "a", 3, 1)
    args = ["run", "--input", str(corpus / "*.jsonl"), "--quiet"]
    code, out, err = run_cli(capsys, *args, "--output", str(tmp_path / "o1"))
    assert (code, out, err) == (0, "", "")  # dead letters are data: done
    code, out, err = run_cli(capsys, *args, "--output", str(tmp_path / "o2"), "--fail-on-dead-letters")
    assert (code, out, err) == (3, "", "")
    assert (tmp_path / "o2" / "_SUCCESS").exists()  # the run did complete
    _mixed_corpus(corpus, "a", 3, 0)
    code, _, _ = run_cli(capsys, *args, "--output", str(tmp_path / "o3"), "--fail-on-dead-letters")
    assert code == 0


def _env() -> dict[str, str]:
    import os

    return dict(os.environ, PYTHONPATH=SRC)


# -- strict flags: a typo is a usage error, never a silent default ----------------------



def _corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "c"
    corpus.mkdir(exist_ok=True)
    (corpus / "a.jsonl").write_text('{"id": "1", "text": "one"}\n{"id": "2", "text": "two"}\n')
    return corpus


BAD_FLAGS = [
    (["--quota-rmp", "100"], "--quota-rmp", "did you mean --quota-rpm?"),
    (["--forcee"], "--forcee", "did you mean --force?"),
    (["--max-in-flite", "2"], "--max-in-flite", "did you mean --max-in-flight?"),
    (["--quota-rpm", "0"], "--quota-rpm", "omit the flag for no limit"),
    (["--quota-rpm", "-5"], "--quota-rpm", "omit the flag for no limit"),
    (["--quota-tpm", "-1"], "--quota-tpm", "omit the flag for no limit"),
    (["--quota-window", "0"], "--quota-window", "greater than 0"),
    (["--max-in-flight", "0"], "--max-in-flight", "at least 1"),
    (["--max-in-flight", "-3"], "--max-in-flight", "at least 1"),
    (["--max-attempts", "0"], "--max-attempts", "at least 1"),
    (["--concurrent-shards", "0"], "--concurrent-shards", "at least 1"),
    (["--batch-deadline", "0"], "--batch-deadline", "greater than 0"),
    (["--quota-rpm", "abc"], "--quota-rpm", "invalid float value"),
]


@pytest.mark.parametrize("command", ["run", "plan"])
@pytest.mark.parametrize(("flags", "named", "advice"), BAD_FLAGS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_flags_are_usage_errors(tmp_path, capsys, command, flags, named, advice):
    corpus = _corpus(tmp_path)
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, command, "--input", str(corpus / "*.jsonl"), "--output", str(out), *flags)
    assert code == 2
    line = one_line(err, None)
    assert named in line and advice in line, line
    assert not out.exists()  # nothing started


def test_unknown_and_broken_config_files_name_the_file(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    cases = {
        "typo.yaml": ("quota-rmp: 100\n", "did you mean quota-rpm?"),
        "broken.yaml": ("quota-rpm: [1\n", "invalid YAML at line 2"),
        "list.yaml": ("- quota-rpm\n", "expected a mapping"),
    }
    for name, (text, advice) in cases.items():
        (tmp_path / name).write_text(text)
        for command in ("run", "plan"):
            code, _, err = run_cli(capsys, command, "--config", str(tmp_path / name),
                                   "--input", str(corpus / "*.jsonl"), "--output", str(tmp_path / "o"))
            line = one_line(err, None)
            assert code == 2 and name in line and advice in line, line
    assert not (tmp_path / "o").exists()


def test_a_typo_sends_nothing_to_the_api(tmp_path, capsys, monkeypatch):
    from beamvec.emulator import Emulator

    key = "fakekey-STRICT-0123456789"
    monkeypatch.setenv("GEMINI_API_KEY", key)
    corpus = _corpus(tmp_path)
    with Emulator(api_key=key) as emu:
        for typo in (["--quota-rmp", "100"], ["--quota-rpm", "0"], ["--max-in-flight", "-3"]):
            code, _, err = run_cli(
                capsys, "run", "--backend", "gemini", "--api-base-url", emu.url,
                "--input", str(corpus / "*.jsonl"), "--output", str(tmp_path / "o"), *typo,
            )
            assert code == 2, err
            one_line(err, None)
        assert emu.stats()["requests"] == 0


def test_beam_flags_still_pass():
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    from beamvec.driver.options import BeamvecOptions, parse_pipeline_options

    options = parse_pipeline_options([
        "--input", "in/*.jsonl", "--output", "out", "--runner", "DirectRunner",
        "--direct_num_workers", "2", "--direct_running_mode=multi_processing",
        "--experiments", "a", "--experiments=b", "--temp_location", "/tmp/x",
        "--quota-rpm", "1500", "--max_in_flight", "3",
    ])
    assert options.view_as(StandardOptions).runner == "DirectRunner"
    assert options.view_as(DirectOptions).direct_num_workers == 2
    bv = options.view_as(BeamvecOptions)
    assert (bv.quota_rpm, bv.max_in_flight) == (1500, 3)


# -- one line, always ---------------------------------------------------------------


@pytest.mark.slow
def test_unexpected_errors_are_one_line_and_debug_shows_them(capsys, monkeypatch):
    from beamvec import cli
    from beamvec.errors import SystemicError

    def boom(argv):
        raise RuntimeError("the runner broke\nwith a long story")

    def wrapped(argv):
        try:
            raise SystemicError("gemini: the API key was rejected")
        except SystemicError as exc:
            raise RuntimeError("a runner's wrapping") from exc

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "run", (boom, "test"))
    code, _, err = run_cli(capsys, "run")
    assert code == 1 and one_line(err, None) == (
        "beamvec run: unexpected error: RuntimeError: the runner broke; "
        "rerun with --debug for the traceback"
    )
    with pytest.raises(RuntimeError):
        cli.main(["--debug", "run"])
    for message, shown in (("", "RuntimeError"), ("\n  the runner broke\n", "RuntimeError: the runner broke")):
        def fails(argv, m=message):
            raise RuntimeError(m)

        monkeypatch.setitem(cli.COMMANDS, "run", (fails, "test"))
        code, _, err = run_cli(capsys, "run")
        assert code == 1 and one_line(err, None) == (
            f"beamvec run: unexpected error: {shown}; rerun with --debug for the traceback")
    monkeypatch.setitem(cli.COMMANDS, "run", (wrapped, "test"))
    code, _, err = run_cli(capsys, "run")
    assert code == 1 and one_line(err, None) == "beamvec run: gemini: the API key was rejected"
    monkeypatch.setitem(cli.COMMANDS, "run", (interrupted, "test"))
    code, _, err = run_cli(capsys, "run")
    assert code == 130 and one_line(err, None) == (
        "beamvec run: interrupted; committed shards stay committed, "
        "rerun the same command to resume"
    )


def _cli_subprocess(*args: str, env: dict[str, str] | None = None, timeout: int = 300):
    import os

    full = dict(os.environ, PYTHONPATH=SRC, NO_PROXY="127.0.0.1,localhost", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "beamvec.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=full,
    )


def _gemini_dies_after_the_preflight(tmp_path: Path, *extra: str):
    """The emulator's quota allows one request (the preflight), then answers 429
    with a retry hint far beyond the batch deadline: every batch gives up."""
    from beamvec.emulator import Emulator

    key = "fakekey-EXHAUSTED-0123456789"
    corpus = _corpus(tmp_path)
    (corpus / "b.jsonl").write_text('{"id": "3", "text": "three"}\n')
    with Emulator(api_key=key, rpm=1, window_s=3600) as emu:
        result = _cli_subprocess(
            "run", "--input", str(corpus / "*.jsonl"), "--output", str(tmp_path / "o"),
            "--backend", "gemini", "--api-base-url", emu.url, "--output-dimensionality", "16",
            "--fail-on-exhausted", "--batch-deadline", "30", "--quiet", *extra,
            env={"GEMINI_API_KEY": key},
        )
        stats = emu.stats(with_texts=False)
    assert stats["by_status"].get("200") == 1 and stats["by_status"].get("429", 0) >= 1, stats
    return result, key


@pytest.mark.slow
def test_fail_on_exhausted_is_one_line_in_process(tmp_path):
    result, key = _gemini_dies_after_the_preflight(tmp_path)
    assert result.returncode == 1, result.stderr
    line = one_line(result.stderr, None)
    assert line.startswith("beamvec run: retries exhausted") and "429" in line, line
    assert "rerun" in line and key not in result.stderr


@pytest.mark.slow
def test_fail_on_exhausted_with_worker_processes_ends_in_the_workers_line(tmp_path):
    """Worker processes hand the driver only text; the message comes back
    through the output's _failures/ record instead. (Beam's SDK harness also
    prints the bundle's traceback to the worker's own stderr, which the
    driver does not control: sdk_worker.py, _execute.)"""
    result, key = _gemini_dies_after_the_preflight(
        tmp_path, "--config", str(ROOT / "runner_configs" / "local-multiprocess.yaml")
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    ours = [line for line in lines if line.startswith("beamvec run:")]
    assert ours == [lines[-1]] and "retries exhausted" in ours[0], result.stderr[-2000:]
    assert "unexpected error" not in ours[0] and key not in result.stderr


# -- inspect, verify and --help start without Beam -----------------------------------


@pytest.mark.parametrize(
    "args",
    [["--help"], ["run", "--help"], ["inspect", "nothing-here"], ["verify", "--input", "x/*.jsonl", "nothing-here"]],
    ids=" ".join,
)
@pytest.mark.slow
def test_light_commands_do_not_import_beam(args):
    code = (
        "import sys\n"
        "from beamvec.cli import main\n"
        f"rc = main({args!r})\n"
        "print('BEAM' if 'apache_beam' in sys.modules else 'NO-BEAM', rc)\n"
    )
    import os

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=SRC), cwd=ROOT,
    )
    assert result.stdout.strip().splitlines()[-1].startswith("NO-BEAM"), result.stdout + result.stderr


def test_the_run_json_schema_is_the_documented_one():
    """docs/cli.md lists every field of `beamvec run --json`; the code and the
    page cannot drift apart."""
    import dataclasses
    import re

    from beamvec.driver.run_summary import SCHEMA, RunSummary

    page = (ROOT / "docs" / "cli.md").read_text()
    section = page.split(f"(`{SCHEMA}`)", 1)[1].split("\n### ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", section, flags=re.M)
    summary = RunSummary("out", "complete", 0)
    assert documented == list(json.loads(summary.to_json()))
    assert documented[1:] == [f.name for f in dataclasses.fields(RunSummary)]


@pytest.mark.slow
def test_a_damaged_gzip_is_named_in_the_summary(tmp_path, capsys):
    """A damaged .gz once passed with exit 0 and `corrupt_file 2`, naming
    no file. The summary names each damaged input; --fail-on-dead-letters
    turns it into exit 3 for a scheduler."""
    import gzip

    corpus = tmp_path / "c"
    corpus.mkdir()
    lines = [json.dumps({"id": f"g{i}", "text": f"good line {i}"}) for i in range(20)]
    (corpus / "good.jsonl").write_text("\n".join(lines) + "\n")
    members = [gzip.compress(("\n".join(lines[i:i + 5]) + "\n").replace("g", "d").encode()) for i in (0, 5, 10)]
    members[1] = members[1][:12] + b"\xff" * 40 + members[1][52:]  # the middle member is damaged
    (corpus / "damaged.jsonl.gz").write_bytes(b"".join(members))
    code, stdout, _ = run_cli(capsys, "run", "--input", str(corpus / "*"), "--output", str(tmp_path / "o"),
                              "--json", "--fail-on-dead-letters", "--progress-interval=0")
    summary = json.loads(stdout)
    assert code == 3 and summary["status"] == "complete" and summary["exit_code"] == 3
    (damaged,) = summary["damaged_inputs"]
    assert damaged["input"].endswith("damaged.jsonl.gz") and damaged["reasons"] == {"corrupt_file": 1}
    # The first member's 5 records are kept, and the last member's but its first
    # line (a member may start mid-line: the line after damage is dropped).
    assert (summary["read"], summary["embedded"], summary["dead_lettered"]) == (20 + 5 + 4 + 1, 29, 1)
    dead = pq.read_table(next((tmp_path / "o" / "dead_letters").rglob("*.parquet"))).to_pylist()
    assert "reading went on at the next gzip member" in dead[0]["message"]


# -- export and report: the main path and the one-line error --------------------------


@pytest.mark.slow
def test_export_and_report_through_the_cli(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "run", "--input", str(corpus / "*.jsonl"), "--output", str(out), "--quiet")
    assert code == 0, err
    where = tmp_path / "vs"
    code, _, err = run_cli(capsys, "export", str(out), "--to", "vertex-vector-search", str(where))
    assert code == 0, err
    sent = [json.loads(line) for f in sorted(where.rglob("*.json")) for line in f.read_text().splitlines()]
    assert sorted(r["id"] for r in sent) == ["1", "2"]
    assert {len(r["embedding"]) for r in sent} == {384}  # all-MiniLM-L6-v2's published dimension
    page = tmp_path / "report.html"
    code, _, err = run_cli(capsys, "report", str(out), "--out", str(page))
    assert code == 0, err
    assert page.read_text().lstrip().lower().startswith("<!doctype html")
    for argv in (["export", str(tmp_path / "nothing-here"), "--to", "vertex-vector-search", str(where)],
                 ["report", str(tmp_path / "nothing-here")]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and "nothing-here" in one_line(err, None), argv


# -- emulator: serves the Gemini API until Ctrl-C ---------------------------------------


@pytest.mark.slow
def test_emulator_command_serves_until_interrupted():
    """`beamvec emulator` prints where it listens, embeds with the key it was
    given (3,072 values: gemini-embedding-001's published default), refuses
    another key as Google does (400 API_KEY_INVALID), and exits 0 on Ctrl-C."""
    import httpx

    key = "fakekey-CLI-emulator-0123456789"
    proc = subprocess.Popen(
        [sys.executable, "-m", "beamvec.cli", "emulator", "--port", "0", "--api-key", key],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**_env(), "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()
        url = next(word for word in line.split() if word.startswith("http://127.0.0.1:"))
        route = f"{url}/v1beta/models/gemini-embedding-001:batchEmbedContents"
        body = {"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": t}]}}
                             for t in ("a cat", "a dog")]}
        answer = httpx.post(route, json=body, headers={"x-goog-api-key": key}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert [len(e["values"]) for e in answer.json()["embeddings"]] == [3072, 3072]
        refused = httpx.post(route, json=body, headers={"x-goog-api-key": "another-key"}, timeout=30)
        assert refused.status_code == 400
        assert refused.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
        assert httpx.get(f"{url}/stats", timeout=30).json()["texts_embedded"] == 2
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)  # only stops a hung test
    assert code == 0, proc.stderr.read()[-3000:]


def test_emulator_command_names_a_bad_flag(capsys):
    code, _, err = run_cli(capsys, "emulator", "--fail-503", "2")
    assert code == 2 and "--fail-503" in err.strip().splitlines()[-1] and "between 0 and 1" in err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--rmp", "600"], "did you mean --rpm?"),
        (["--port", "99999"], "--port"),
        (["--rpm", "-1"], "--rpm"),
        (["--latency-ms", "-5"], "--latency-ms"),
    ],
)
def test_emulator_command_refuses_bad_flags_in_one_line(capsys, argv, named):
    """A misspelt flag gets a "did you mean", a value out of range names its
    flag: one line each, no usage block, no traceback, exit 2, nothing served."""
    code, out, err = run_cli(capsys, "emulator", *argv)
    lines = err.strip().splitlines()
    assert code == 2 and out == ""
    assert len(lines) == 1 and named in lines[0], err
