"""No name of an output's layout is ever read as input.

An older output lies under the input glob, with every file and folder an
output can hold. Listing must return only the real inputs beside it, and a
run over that folder must read only their records.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beamvec.contract import layout
from beamvec.sources import list_shards

from helpers import beam_run, read_output

#: What an output holds, as the README names it (bookkeeping
#: files written by hand where one run does not leave them).
LAYOUT_FILES = [
    "_manifest.json", "_SUCCESS", "_lease.json", "_beamvec_probe",
    "_failures/0001-abc.json", "_exports/lancedb.json", "_commits/20260101T000000Z-1.parquet",
    "_batch/jobs/job-1.json", "_runs/run-1/work.jsonl", "_runs/run-1/timeline.jsonl",
    "_partial/fp/batch-1.parquet", "_tmp/run-1/x.parquet",
    "vectors/old-0123456789.parquet", "dead_letters/old-0123456789.parquet",
]


def _jsonl(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"{path.stem}-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))


def _older_output(tmp_path: Path, capsys) -> Path:
    """A real output of an earlier run, under ``in/old``, with the rest of the layout added."""
    _jsonl(tmp_path / "first" / "old.jsonl", ["an old text about the sea", "and one about the hills", ""])
    old = tmp_path / "in" / "old"
    code, _, err = beam_run(capsys, "--input", str(tmp_path / "first" / "old.jsonl"), "--output", str(old))
    assert code == 0, err
    table = pa.table({"id": ["x"], "text": ["a text in a bookkeeping file"]})
    for rel in LAYOUT_FILES:
        path = old / rel
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".parquet"):
            pq.write_table(table, path)
        else:
            path.write_text(json.dumps({"id": "x", "text": "a text in a bookkeeping file"}) + "\n")
    return old


def test_every_name_of_the_layout_is_covered_by_this_test() -> None:
    written = {rel.split("/")[0] for rel in LAYOUT_FILES}
    declared = layout.OWN_FILES | layout.OWN_DIRS | layout.DATA_DIRS
    assert declared <= written, f"add the new names to LAYOUT_FILES: {sorted(declared - written)}"


@pytest.mark.slow
def test_an_older_output_under_the_input_glob_is_never_read(tmp_path, capsys) -> None:
    old = _older_output(tmp_path, capsys)
    assert {p.relative_to(old).as_posix().split("/")[0] for p in old.rglob("*") if p.is_file()} >= {
        rel.split("/")[0] for rel in LAYOUT_FILES
    }
    data = tmp_path / "in" / "data.jsonl"
    _jsonl(data, ["the one input that is data", "and its second line"])
    for pattern in (str(tmp_path / "in"), str(tmp_path / "in" / "**")):
        found = [s.path for s in list_shards([pattern])]
        assert found == [str(data)], (pattern, found)
    # and the run reads only the data's two records, whatever the older output holds
    out = tmp_path / "out"
    code, _, err = beam_run(capsys, "--input", str(tmp_path / "in"), "--output", str(out))
    assert code == 0, err
    result = read_output(str(out))
    assert result["manifest"]["totals"]["read"] == 2
    assert result["dead"] == {}
    (shard,) = result["vectors"].values()
    assert sorted(shard.column("id").to_pylist()) == ["data-0", "data-1"]
