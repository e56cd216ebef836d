"""inspect and verify on an output whose committed files are damaged or
missing: both exit 1 and name the file once with its
repair, whether the file is gone, cut short, or torn within the size its
commit record holds (the cheap check reads no file of the recorded size;
these commands read every file through)."""

from __future__ import annotations

import json
import shutil

import pytest

from helpers import beam_run, run_cli


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    (root / "in").mkdir()
    for shard in ("a", "b"):
        lines = [
            json.dumps({"id": f"{shard}1", "text": f"hello from {shard}"}),
            json.dumps({"id": f"{shard}2"}),  # no text: a dead letter
            json.dumps({"id": f"{shard}3", "text": f"more from {shard}"}),
        ]
        (root / "in" / f"{shard}.jsonl").write_text("\n".join(lines) + "\n")

    class _Cap:
        def readouterr(self):
            return type("O", (), {"out": "", "err": ""})()

    code, _, err = beam_run(_Cap(), "--input", str(root / "in" / "*.jsonl"), "--output", str(root / "out"))
    assert code == 0, err
    return root


def _torn_within_its_size(path) -> None:
    """Page headers overwritten just after the magic: same size, unreadable."""
    data = bytearray(path.read_bytes())
    data[8:64] = b"x" * 56
    path.write_bytes(bytes(data))


def _cut(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {"missing": lambda p: p.unlink(), "cut": _cut, "torn": _torn_within_its_size}


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["vectors", "dead_letters"])
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_inspect_and_verify_exit_1_naming_a_damaged_or_missing_file(base, tmp_path, capsys, folder, kind):
    out = tmp_path / "out"
    shutil.copytree(base / "out", out)
    (victim,) = [p for p in (out / folder).iterdir() if p.name.startswith("a.jsonl")]
    size = victim.stat().st_size
    DAMAGE[kind](victim)
    if kind == "torn":
        assert victim.stat().st_size == size

    for command in ("inspect", "verify"):
        code, stdout, err = run_cli(capsys, command, "--quiet", str(out))
        assert "Traceback" not in stdout + err and not err.strip(), err
        assert code == 1, (command, stdout)
        assert stdout.count(victim.name) == 1, stdout  # once, with its repair
        line = next(x for x in stdout.splitlines() if victim.name in x)
        assert "rerun `beamvec run`" in line
        assert ("missing" if kind == "missing" else "damaged") in line

    code, stdout, _ = run_cli(capsys, "inspect", "--json", "--quiet", str(out))
    report = json.loads(stdout)
    assert code == 1 and report["damaged"] == [str(victim)] and not report["complete"]
    # the other shard is still described: its vectors and its dead letter
    assert report["rows"] >= 2 and report["dead_letters"] >= 1


@pytest.mark.slow
def test_an_intact_output_exits_0(base, capsys):
    for command in ("inspect", "verify"):
        code, stdout, err = run_cli(capsys, command, "--quiet", str(base / "out"))
        assert code == 0, stdout + err
    report = json.loads(run_cli(capsys, "inspect", "--json", "--quiet", str(base / "out"))[1])
    assert (report["rows"], report["dead_letters"], report["damaged"]) == (4, 2, [])
