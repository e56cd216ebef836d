"""Every command through the `beamvec` entry point: help, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_cli

COMMANDS = ["run", "plan", "inspect", "search", "verify", "emulator"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(capsys, command):
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0
    assert "usage: beamvec" in out and "example" in out.lower()


def test_unknown_command_lists_the_commands(capsys):
    code, _, err = run_cli(capsys, "frobnicate")
    assert code == 2 and all(c in err for c in COMMANDS)


def test_plan_run_inspect_search_verify_through_the_cli(tmp_path, capsys):
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
    code, stdout, _ = run_cli(capsys, "verify", "--input", str(corpus / "*.jsonl"), out)
    assert code == 0 and stdout.startswith("OK")
    code, _, err = run_cli(capsys, "inspect", str(tmp_path / "nothing-here"))
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_console_script_and_pipeline_module_run_the_same_job(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("one line\nanother line\n")
    repo = Path(__file__).resolve().parents[1]
    script = Path(sys.executable).parent / "beamvec"
    for cmd, out in (([str(script), "run"], "o1"), ([sys.executable, "-m", "pipelines.embed_corpus"], "o2")):
        result = subprocess.run(
            [*cmd, "--input", str(tmp_path / "in" / "*.txt"), "--output", str(tmp_path / out), "--quiet"],
            capture_output=True, text=True, timeout=180, cwd=repo,
        )
        assert result.returncode == 0, result.stderr
        assert "records read   2" in result.stdout
