"""`beamvec export --full` still deletes what left the output:
a shard pruned by `beamvec run --prune` leaves LanceDB and gets a Vertex
delete/ file, on the full export and on every incremental one after it."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from beamvec.commands import export

from helpers import NoCapture, beam_run

lancedb = pytest.importorskip("lancedb")

SHARDS = {"a": 12, "b": 12, "c": 12}


@pytest.fixture
def root(tmp_path):
    """A fresh output per test: a shard's file name hashes its input's path,
    so an output copied elsewhere would rename every shard on its next run."""
    root = tmp_path / "r"
    (root / "in").mkdir(parents=True)
    for shard, n in SHARDS.items():
        lines = [json.dumps({"id": f"{shard}{i}", "text": f"note {i} of shard {shard}"}) for i in range(n)]
        (root / "in" / f"{shard}.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = beam_run(NoCapture(), "--input", str(root / "in" / "*.jsonl"), "--output", str(root / "out"))
    assert code == 0, err
    return root


def _prune_c(root) -> None:
    """Remove shard c's input and rerun with --prune: its vector file leaves the output."""
    (root / "in" / "c.jsonl").unlink()
    code, out, err = beam_run(NoCapture(), "--input", str(root / "in" / "*.jsonl"), "--output", str(root / "out"),
                              "--prune")
    assert code == 0, err
    assert len(list((root / "out" / "vectors").iterdir())) == 2
    assert not [p for p in (root / "out" / "vectors").iterdir() if p.name.startswith("c.jsonl")]


def _ids(path) -> set[str]:
    return set(pq.read_table(path, columns=["id"]).column("id").to_pylist())


def _table_ids(uri: str) -> list[str]:
    return lancedb.connect(uri).open_table("docs").to_arrow().column("id").to_pylist()


C_IDS = {f"c{i}" for i in range(SHARDS["c"])}
KEPT = {f"{s}{i}" for s in ("a", "b") for i in range(SHARDS[s])}


@pytest.mark.slow
def test_lancedb_full_export_deletes_a_pruned_shard(root, tmp_path):
    uri = str(tmp_path / "lance")
    out = str(root / "out")
    assert export.main([out, "--to", "lancedb", uri, "--table", "docs"]) == 0
    assert set(_table_ids(uri)) == KEPT | C_IDS
    _prune_c(root)

    full = export.export_lancedb(export.open_output(out, {})[0], uri, "docs", False, full=True)
    assert (full.files_sent, full.rows_sent, full.files_removed, full.ids_deleted) == (2, 24, 1, 12)
    ids = _table_ids(uri)
    assert len(ids) == len(set(ids)) and set(ids) == KEPT

    # the next incremental export sends nothing and finds nothing left to delete
    again = export.export_lancedb(export.open_output(out, {})[0], uri, "docs", False)
    assert (again.files_sent, again.files_unchanged, again.ids_deleted) == (0, 2, 0)
    assert set(_table_ids(uri)) == KEPT


@pytest.mark.slow
def test_lancedb_full_export_without_its_state_still_matches_the_output(root, tmp_path):
    """The export's state was lost (_exports/ removed): --full finds the
    pruned shard's rows at the destination itself."""
    uri = str(tmp_path / "lance")
    out = str(root / "out")
    assert export.main([out, "--to", "lancedb", uri, "--table", "docs"]) == 0
    _prune_c(root)
    shutil.rmtree(root / "out" / "_exports")

    assert export.main([out, "--to", "lancedb", uri, "--table", "docs", "--full"]) == 0
    assert set(_table_ids(uri)) == KEPT
    assert len(_table_ids(uri)) == len(KEPT)


def _deleted(batch_root) -> set[str]:
    folder = batch_root / "delete"
    return {line for f in folder.iterdir() for line in f.read_text().split()} if folder.exists() else set()


def _sent(batch_root) -> set[str]:
    return {json.loads(line)["id"] for f in batch_root.glob("*.json") for line in f.read_text().splitlines()}


@pytest.mark.slow
def test_vertex_full_export_writes_the_pruned_shards_delete_file(root, tmp_path):
    out = str(root / "out")
    night1, night2, night3 = (tmp_path / "vs" / n for n in ("n1", "n2", "n3"))
    assert export.main([out, "--to", "vertex-vector-search", str(night1)]) == 0
    assert _sent(night1) == KEPT | C_IDS and _deleted(night1) == set()
    _prune_c(root)

    assert export.main([out, "--to", "vertex-vector-search", str(night2), "--full"]) == 0
    assert _sent(night2) == KEPT
    assert _deleted(night2) == C_IDS  # documented: an id is never in both a data and a delete file

    assert export.main([out, "--to", "vertex-vector-search", str(night3)]) == 0
    assert _sent(night3) == set() and _deleted(night3) == set()
