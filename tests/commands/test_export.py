"""`beamvec export`: LanceDB and Vertex AI Vector Search, first export and a
nightly increment (one shard changed, one shard pruned) on a real output."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beamvec.commands import export
from beamvec.errors import UsageError

from helpers import ROOT, NoCapture, beam_run

lancedb = pytest.importorskip("lancedb")

SHARDS = {"a": 100, "b": 100, "c": 100}
TOPICS = ["cooking pasta", "football results", "interest rates", "garden roses", "JSON parsing"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    (root / "in").mkdir()
    for shard, n in SHARDS.items():
        lines = [
            json.dumps({"id": f"{shard}{i}", "text": f"{TOPICS[i % 5]}: note {i} of shard {shard}",
                        "lang": "en" if i % 3 else "de", "tags": ["x", f"t{i % 2}"]})
            for i in range(n)
        ]
        (root / "in" / f"{shard}.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = beam_run(NoCapture(), "--input", str(root / "in" / "*.jsonl"), "--output", str(root / "out"))
    assert code == 0, err
    return root / "out"


@pytest.fixture
def out(base, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(base, copy)
    return copy


def _file(out, shard):
    (path,) = [p for p in (out / "vectors").iterdir() if p.name.startswith(f"{shard}.jsonl")]
    return path


def _vectors(path) -> dict[str, np.ndarray]:
    table = pq.read_table(path)
    dim = table.schema.field("vector").type.list_size
    matrix = np.asarray(table.column("vector").combine_chunks().flatten()).reshape(-1, dim)
    return dict(zip(table.column("id").to_pylist(), matrix, strict=True))


def _increment(out) -> tuple[dict[str, np.ndarray], set[str], set[str]]:
    """A night's change: shard b loses 10 records and 5 vectors change; shard c is pruned.
    Returns b's new vectors, the ids that left b and the ids of c."""
    path = _file(out, "b")
    meta = pq.ParquetFile(path).metadata.metadata
    table = pq.read_table(path)
    dropped = set(table.column("id").to_pylist()[-10:])
    table = table.slice(0, table.num_rows - 10)
    dim = table.schema.field("vector").type.list_size
    matrix = np.asarray(table.column("vector").combine_chunks().flatten()).reshape(-1, dim).copy()
    matrix[:5] = -matrix[:5]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim)
    table = table.set_column(table.schema.get_field_index("vector"), table.schema.field("vector"), vectors)
    footer = json.loads(meta[b"beamvec"])
    footer["shard"]["embedded"] -= 10
    footer["shard"]["read"] -= 10
    meta = {k: v for k, v in meta.items() if k != b"ARROW:schema"} | {b"beamvec": json.dumps(footer).encode()}
    pq.write_table(table.replace_schema_metadata(meta), path)
    c = _file(out, "c")
    c_ids = set(pq.read_table(c, columns=["id"]).column("id").to_pylist())
    c.unlink()
    return _vectors(path), dropped, c_ids


# --------------------------------------------------------------------------- lancedb


@pytest.mark.slow
def test_lancedb_export_search_and_increment(out, tmp_path, capsys):
    uri = str(tmp_path / "lance")
    assert export.main([str(out), "--to", "lancedb", uri, "--table", "docs"]) == 0
    line = capsys.readouterr().out
    assert "sent 300 vectors from 3 new or changed vector files" in line
    table = lancedb.connect(uri).open_table("docs")
    assert table.count_rows() == 300 and not table.list_indices()

    a = _vectors(_file(out, "a"))
    for rid in ("a7", "a42"):
        exact = table.search(a[rid]).distance_type("cosine").limit(3).to_list()
        assert exact[0]["id"] == rid and exact[0]["_distance"] == pytest.approx(0.0, abs=1e-5)

    again = export.export_lancedb(export.open_output(str(out), {})[0], uri, "docs", False)
    assert (again.files_sent, again.rows_sent, again.files_unchanged, again.ids_deleted) == (0, 0, 3, 0)

    b_new, dropped, c_ids = _increment(out)
    result = export.export_lancedb(export.open_output(str(out), {})[0], uri, "docs", False)
    assert (result.files_sent, result.rows_sent, result.files_unchanged) == (1, 90, 1)
    assert (result.files_removed, result.ids_deleted) == (1, 10 + 100)
    table = lancedb.connect(uri).open_table("docs")
    rows = table.to_arrow()
    ids = rows.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 100 + 90
    assert not (set(ids) & (dropped | c_ids))
    stored = dict(zip(ids, np.asarray(rows.column("vector").combine_chunks().flatten()).reshape(len(ids), -1),
                      strict=True))
    for rid, vector in b_new.items():
        np.testing.assert_array_equal(stored[rid], vector)
    hits = table.search(b_new["b0"]).distance_type("cosine").limit(1).to_list()
    assert hits[0]["id"] == "b0"  # the changed vector is the one searched


@pytest.mark.slow
def test_lancedb_needs_a_table(out, tmp_path):
    with pytest.raises(UsageError, match="--table"):
        export.main([str(out), "--to", "lancedb", str(tmp_path / "l")])
    with pytest.raises(UsageError, match="unknown destination"):
        export.main([str(out), "--to", "pinecone", "x"])


# --------------------------------------------------------------------------- vertex


def _read_batch_root(root) -> tuple[dict[str, dict], list[str], list]:
    data = {}
    files = sorted(root.glob("*.json"))
    for path in files:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            assert row["id"] not in data
            data[row["id"]] = row
    deleted = []
    for path in sorted((root / "delete").glob("*")) if (root / "delete").exists() else []:
        deleted += path.read_text().split()
    others = [p for p in root.iterdir() if p.name != "delete" and p.suffix != ".json"]
    assert not others, others  # Vector Search allows no other files or directories
    return data, deleted, files


@pytest.mark.slow
def test_vertex_export_files_and_increment(out, tmp_path, capsys):
    first = tmp_path / "vs" / "night1"
    args = [str(out), "--to", "vertex-vector-search", str(first), "--restrict", "lang", "--restrict", "tags",
            "--max-file-mb", "0.25"]
    assert export.main(args) == 0
    assert "sent 300 vectors" in capsys.readouterr().out
    data, deleted, files = _read_batch_root(first)
    assert deleted == [] and len(files) > 1
    assert all(f.stat().st_size <= 0.25 * 1024 * 1024 for f in files)
    expected = {}
    for shard in SHARDS:
        expected |= _vectors(_file(out, shard))
    assert set(data) == set(expected)
    for rid, row in data.items():
        np.testing.assert_array_equal(np.asarray(row["embedding"], dtype=np.float32), expected[rid])
    i = 4  # a4: lang "en" (4 % 3 != 0), tags ["x", "t0"]
    assert data["a4"]["restricts"] == [{"namespace": "lang", "allow": ["en"]},
                                       {"namespace": "tags", "allow": ["x", f"t{i % 2}"]}]
    assert data["a3"]["restricts"][0] == {"namespace": "lang", "allow": ["de"]}

    with pytest.raises(UsageError, match="not empty"):
        export.main(args)

    b_new, dropped, c_ids = _increment(out)
    second = tmp_path / "vs" / "night2"
    assert export.main([*args[:3], str(second), *args[4:]]) == 0
    assert "sent 90 vectors from 1 new or changed" in capsys.readouterr().out
    data, deleted, _ = _read_batch_root(second)
    assert set(data) == set(b_new)
    assert set(deleted) == dropped | c_ids and len(deleted) == 110
    assert not set(deleted) & set(data)  # documented: an id may not be in both
    np.testing.assert_array_equal(np.asarray(data["b0"]["embedding"], dtype=np.float32), b_new["b0"])

    third = tmp_path / "vs" / "night3"
    assert export.main([*args[:3], str(third), *args[4:]]) == 0
    assert "sent 0 vectors" in capsys.readouterr().out
    assert _read_batch_root(third)[:2] == ({}, [])


@pytest.mark.slow
def test_lancedb_index_is_skipped_on_a_small_table(out, tmp_path, capfd):
    """On 505 rows the index once trained 1 of 22 partitions, lance
    printed its own warning, and a row lay 0.0885 from itself. Below two
    partitions of lancedb's 8,192-row target the table stays exact, said in
    one line of beamvec's own."""
    uri = str(tmp_path / "lance")
    assert export.main([str(out), "--to", "lancedb", uri, "--table", "small", "--index"]) == 0
    captured = capfd.readouterr()  # file descriptors: a library's own stderr would show here
    assert "no index (300 rows < 16,384: exact search)" in captured.out
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("warning: no ANN index built: 300 rows are searched exactly")
    table = lancedb.connect(uri).open_table("small")
    assert table.count_rows() == 300 and not table.list_indices()
    a = _vectors(_file(out, "a"))
    hit = table.search(a["a3"]).distance_type("cosine").limit(1).to_list()[0]
    assert hit["id"] == "a3" and hit["_distance"] == pytest.approx(0.0, abs=1e-5)


def test_lancedb_index_partitions_follow_the_row_count(tmp_path, capfd):
    """lancedb's target is 8,192 rows a partition (IvfPq.target_partition_size):
    20,000 rows make 2 partitions, every row is indexed, and a row found through
    the index (re-ranked exactly) is at distance 0 from itself."""
    from beamvec.commands.export_lancedb import _index, index_partitions

    assert [index_partitions(n) for n in (505, 16_383, 16_384, 20_000, 100_000)] == [0, 0, 2, 2, 12]
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(40, 64))
    matrix = centers[rng.integers(0, 40, 20_000)] + 0.3 * rng.normal(size=(20_000, 64))
    matrix = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)
    data = pa.table({"id": [f"r{i}" for i in range(20_000)],
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), 64)})
    table = lancedb.connect(str(tmp_path / "lance")).create_table("big", data)
    note = _index(table)
    assert note == "IVF_PQ index (cosine) over 20,000 rows in 2 partitions"
    (index,) = table.list_indices()
    stats = table.index_stats(index.name)
    assert stats.num_indexed_rows == 20_000 and stats.num_unindexed_rows == 0
    for i in (7, 4242, 19_999):
        hit = table.search(matrix[i]).distance_type("cosine").refine_factor(10).limit(1).to_list()[0]
        assert hit["id"] == f"r{i}" and hit["_distance"] == pytest.approx(0.0, abs=1e-5)
    assert "warn" not in capfd.readouterr().err.lower()


@pytest.mark.slow
def test_the_lancedb_snippet_of_the_docs_runs_as_written(out, tmp_path):
    """docs/operators.md's LanceDB example, with its two paths replaced: the
    query embedded by `beamvec embed` finds the records of its topic."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = ROOT
    page = (root / "docs" / "operators.md").read_text()
    section = page.split("## LanceDB", 1)[1]
    (snippet,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    uri = str(tmp_path / "lance")
    assert export.main([str(out), "--to", "lancedb", uri, "--table", "docs"]) == 0
    code = snippet.replace('"out/"', repr(str(out))).replace('"./lance"', repr(uri))
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    hits = eval(result.stdout)  # noqa: S307 - the snippet prints a list of (id, distance)
    assert len(hits) == 5
    pasta = {f"{s}{i}" for s in SHARDS for i in range(SHARDS[s]) if i % 5 == 0}  # "cooking pasta" records
    assert {rid for rid, _ in hits} <= pasta
    assert all(0 <= d < 1 for _, d in hits)


@pytest.mark.slow
def test_embed_prints_the_vectors_search_uses(out, tmp_path, capsys):
    """`beamvec embed` as JSON and as .npy: the same unit vectors, the nearest
    stored vector to one of them is a record of its topic, and the exact text
    of a record embeds to that record's stored vector."""
    from helpers import run_cli

    text = "cooking pasta: note 0 of shard a"  # record a0's text
    code, stdout, _ = run_cli(capsys, "embed", str(out), text, "interest rates")
    assert code == 0
    result = json.loads(stdout)
    assert result["schema"] == "beamvec.embed/1" and result["dimension"] == 384
    vectors = np.asarray(result["vectors"], dtype=np.float32)
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    stored = _vectors(_file(out, "a"))
    np.testing.assert_allclose(vectors[0], stored["a0"], atol=1e-5)  # embedded as run embedded it
    code, _, _ = run_cli(capsys, "embed", str(out), text, "interest rates", "--format", "npy",
                         "--to", str(tmp_path / "q.npy"))
    assert code == 0
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"), vectors, atol=1e-6)
    code, _, err = run_cli(capsys, "embed", str(tmp_path / "nothing"), "x")
    assert code == 2 and len(err.strip().splitlines()) == 1
