"""Inputs no reader can take end in one line naming the file, never in
"unexpected error ... rerun with --debug": a Parquet or
CSV file without the text column, a file name that is not UTF-8, a symbolic
link that loops, dangles or leads to a directory."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import beam_run, read_output, run_cli


def _one_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "unexpected error" not in err and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def _plan(capsys, inp, out) -> tuple[int, str, str]:
    return run_cli(capsys, "plan", "--input", str(inp), "--output", str(out))


@pytest.mark.slow
def test_parquet_without_the_text_column_stops_plan_and_run_with_one_line(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": ["1", "2"], "body": ["x", "y"]}), tmp_path / "in" / "a.parquet")
    for code, _, err in (
        _plan(capsys, tmp_path / "in", tmp_path / "out"),
        beam_run(capsys, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")),
    ):
        assert code != 0
        _one_line(err, "a.parquet", "no text column 'text'", "'body'", "--text-field")


@pytest.mark.slow
def test_csv_without_the_text_column_stops_the_run_with_one_line(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("id,body\n1,x\n")
    code, _, err = beam_run(capsys, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    assert code != 0
    _one_line(err, "a.csv", "no text column 'text'", "--text-field")


@pytest.mark.slow
def test_a_file_name_that_is_not_utf8_is_refused_before_anything_is_read(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ok.jsonl").write_text(json.dumps({"id": "1", "text": "hi"}) + "\n")
    try:
        with open(os.path.join(os.fsencode(folder), b"caf\xe9.jsonl"), "wb") as fh:  # latin-1 "café"
            fh.write(json.dumps({"id": "2", "text": "there"}).encode() + b"\n")
    except OSError:
        pytest.skip("this filesystem refuses names that are not UTF-8")
    for code, _, err in (
        _plan(capsys, folder, tmp_path / "out"),
        beam_run(capsys, "--input", str(folder), "--output", str(tmp_path / "out")),
    ):
        assert code == 2
        _one_line(err, "caf\\xe9.jsonl", "not valid UTF-8", "rename")
    assert not (tmp_path / "out" / "vectors").exists()


@pytest.mark.parametrize(
    ("target", "needles"),
    [
        ("self.jsonl", ("self.jsonl", "loops")),  # a link to itself
        ("nowhere.jsonl", ("self.jsonl", "does not exist")),
        ("..", ("self.jsonl", "directory", "--input")),
    ],
)
@pytest.mark.parametrize("named", ["dir", "glob", "file"])
def test_bad_symbolic_links_are_refused_in_one_line(tmp_path, capsys, target, needles, named):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ok.jsonl").write_text(json.dumps({"id": "1", "text": "hi"}) + "\n")
    os.symlink(target, folder / "self.jsonl")
    inp = {"dir": folder, "glob": folder / "*.jsonl", "file": folder / "self.jsonl"}[named]
    code, _, err = _plan(capsys, inp, tmp_path / "out")
    if named == "file" and target == "nowhere.jsonl":
        assert code == 2 and "matched no files" in err  # named, it is simply not there
        return
    assert code == 2
    _one_line(err, *needles)


@pytest.mark.slow
def test_a_link_to_a_file_is_read_as_that_file(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "in").mkdir()
    lines = [json.dumps({"id": str(i), "text": f"text number {i}"}) for i in range(5)]
    (tmp_path / "data" / "real.jsonl").write_text("\n".join(lines) + "\n")
    os.symlink(tmp_path / "data" / "real.jsonl", tmp_path / "in" / "link.jsonl")
    code, _, err = beam_run(capsys, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    assert code == 0, err
    out = read_output(str(tmp_path / "out"))
    (record,) = out["manifest"]["shards"].values()
    assert record["read"] == record["embedded"] == 5
    assert record["input_size"] == (tmp_path / "data" / "real.jsonl").stat().st_size
