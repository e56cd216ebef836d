"""End to end on the DirectRunner with the local model: formats, bad input,
naming, stores, and reading the output back with pyarrow, DuckDB and Polars."""

from __future__ import annotations

import bz2
import csv
import gc
import gzip
import io
import json

import duckdb
import fsspec
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from beamvec.backends.local import LocalBackend

from helpers import assert_reconciled, beam_run, read_output, vectors_by_id

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Parquet stores columns, not rows.",
    "Beam runs the same pipeline on many runners.",
    "Vectors of different models must never be mixed.",
]


@pytest.fixture(scope="module")
def local() -> LocalBackend:
    backend = LocalBackend(threads=1)
    backend.load()
    return backend


def _compress(data: bytes, compression: str) -> bytes:
    if compression == "gz":
        return gzip.compress(data)
    if compression == "zst":
        return zstandard.ZstdCompressor().compress(data)
    if compression == "bz2":
        return bz2.compress(data)
    return data


def _write_formats(root, compression: str = "") -> dict[str, list[tuple[str, str]]]:
    """One shard per format; returns the expected (id, text) of each."""
    ext = f".{compression}" if compression else ""
    expected: dict[str, list[tuple[str, str]]] = {}
    jsonl = "\n".join(json.dumps({"id": f"j{i}", "text": t, "lang": "en"}) for i, t in enumerate(TEXTS))
    (root / f"docs.jsonl{ext}").write_bytes(_compress(jsonl.encode(), compression))
    expected["jsonl"] = [(f"j{i}", t) for i, t in enumerate(TEXTS)]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "text", "source"])
    for i, t in enumerate(TEXTS):
        writer.writerow([f"c{i}", t, "csv"])
    (root / f"docs.csv{ext}").write_bytes(_compress(buf.getvalue().encode(), compression))
    expected["csv"] = [(f"c{i}", t) for i, t in enumerate(TEXTS)]
    tsv = "id\ttext\n" + "".join(f"t{i}\t{t}\n" for i, t in enumerate(TEXTS))
    (root / f"docs.tsv{ext}").write_bytes(_compress(tsv.encode(), compression))
    expected["tsv"] = [(f"t{i}", t) for i, t in enumerate(TEXTS)]
    txt = "\n\n".join(TEXTS) + "\n"  # blank lines between: not records
    (root / f"lines.txt{ext}").write_bytes(_compress(txt.encode(), compression))
    expected["txt"] = [(None, t) for t in TEXTS]
    return expected


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["", "gz", "zst", "bz2"])
def test_every_format_and_compression(tmp_path, capsys, local, compression):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    expected = _write_formats(corpus, compression)
    if not compression:
        table = pa.table({"id": [f"p{i}" for i in range(len(TEXTS))], "text": TEXTS})
        pq.write_table(table, corpus / "docs.parquet")
        expected["parquet"] = [(f"p{i}", t) for i, t in enumerate(TEXTS)]
    out_dir = tmp_path / "out"
    code, stdout, err = beam_run(capsys, "--input", str(corpus / "*"), "--output", str(out_dir))
    assert code == 0, err
    out = read_output(str(out_dir))
    assert_reconciled(out)
    assert len(out["vectors"]) == len(expected)
    got = vectors_by_id(out)
    assert len(got) == sum(len(v) for v in expected.values())
    reference = dict(zip(TEXTS, local.embed(TEXTS), strict=True))
    for fmt, pairs in expected.items():
        for rid, text in pairs:
            if rid is None:  # txt ids are <shard>:<line>
                matches = [k for k in got if k.split(":")[0].startswith("lines.txt")]
                assert len(matches) == len(TEXTS)
                continue
            np.testing.assert_allclose(got[rid], reference[text], atol=1e-4, err_msg=f"{fmt} {rid}")
    assert "records read" in stdout and "_SUCCESS" in stdout


@pytest.mark.slow
def test_txt_ids_are_shard_and_line(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("first\n\n  \nfourth\n")
    code, _, err = beam_run(capsys, "--input", str(tmp_path / "in" / "a.txt"), "--output", str(tmp_path / "o"))
    assert code == 0, err
    out = read_output(str(tmp_path / "o"))
    (name,) = out["vectors"]
    table = out["vectors"][name]
    assert table.column("id").to_pylist() == [f"{name}:1", f"{name}:4"]
    assert table.column("source_position").to_pylist() == [1, 4]


@pytest.mark.slow
def test_the_worker_hides_what_it_loaded_from_full_collections(tmp_path, capsys):
    """Full collections over everything Beam, the SDK and pyarrow loaded took
    100-150 ms, holding every thread and so the sends the limiter spaced: the
    worker freezes its loaded heap once set up (gc.freeze)."""
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("first\nsecond\n")
    code, _, err = beam_run(capsys, "--input", str(tmp_path / "in" / "a.txt"), "--output", str(tmp_path / "o"))
    assert code == 0, err
    assert gc.get_freeze_count() > 10_000


@pytest.mark.slow
def test_bad_input_ends_in_dead_letters_with_reasons(tmp_path, capsys):
    corpus = tmp_path / "bad"
    corpus.mkdir()
    lines = [
        b'{"id": "ok1", "text": "a fine sentence"}',
        b'{"id": "badjson", "text": ',  # invalid JSON
        b'{"id": "empty", "text": "   "}',
        b'{"id": "missing"}',
        b'{"id": "nonstr", "text": 12}',
        b'{"id": "ok1", "text": "the same id again"}',  # duplicate id
        b'{"id": "utf", "text": "caf\xc3\x28"}',  # invalid UTF-8
        b'{"id": "huge", "text": "' + b"word " * 5000 + b'"}',  # truncated, not lost
        b'[1, 2, 3]',  # not an object
        b'{"id": "ok2", "text": "another fine sentence"}',
    ]
    (corpus / "nasty.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    good = gzip.compress(b'{"id": "g1", "text": "before the break"}\n' * 1)
    (corpus / "corrupt.jsonl.gz").write_bytes(good[:-12] + b"garbage!" * 3)
    (corpus / "empty.jsonl").write_bytes(b"")
    code, stdout, err = beam_run(capsys, "--input", str(corpus / "*"), "--output", str(tmp_path / "o"))
    assert code == 0, err
    out = read_output(str(tmp_path / "o"))
    assert_reconciled(out)
    shards = out["manifest"]["shards"]
    nasty = next(v for k, v in shards.items() if k.startswith("nasty"))
    assert nasty["read"] == 10 and nasty["embedded"] == 3
    assert nasty["dead_letters_by_reason"] == {
        "duplicate_id": 1, "empty_text": 1, "invalid_json": 1, "invalid_row": 1,
        "invalid_utf8": 1, "missing_text": 1, "non_string_text": 1,
    }
    got = vectors_by_id(out)
    assert {"ok1", "ok2", "huge"} <= set(got)
    table = next(t for k, t in out["vectors"].items() if k.startswith("nasty"))
    truncated = dict(zip(table.column("id").to_pylist(), table.column("truncated").to_pylist(), strict=True))
    assert truncated == {"ok1": False, "ok2": False, "huge": True}
    corrupt = next(v for k, v in shards.items() if k.startswith("corrupt"))
    assert corrupt["dead_letters_by_reason"].get("corrupt_file") == 1
    empty = next(v for k, v in shards.items() if k.startswith("empty"))
    assert empty["read"] == 0 and empty["embedded"] == 0
    dead = next(t for k, t in out["dead"].items() if k.startswith("nasty")).to_pylist()
    assert {d["reason"] for d in dead} >= {"invalid_json", "duplicate_id"}
    assert all(d["message"] and d["source_position"] >= 1 for d in dead)
    assert "dead-lettered" in stdout and "invalid_json" in stdout


@pytest.mark.slow
def test_long_text_dead_lettered_when_asked(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text(
        json.dumps({"id": "long", "text": "word " * 400}) + "\n" + json.dumps({"id": "s", "text": "short"}) + "\n"
    )
    code, _, err = beam_run(
        capsys, "--input", str(tmp_path / "in" / "*.jsonl"), "--output", str(tmp_path / "o"),
        "--on-long-text", "dead-letter",
    )
    assert code == 0, err
    out = read_output(str(tmp_path / "o"))
    assert_reconciled(out)
    assert set(vectors_by_id(out)) == {"s"}
    (dead,) = out["dead"].values()
    assert dead.column("reason").to_pylist() == ["text_too_long"]


@pytest.mark.slow
def test_colliding_and_unsafe_names(tmp_path, capsys):
    for sub in ("a", "b", "we ird/..", "x"):
        (tmp_path / "in" / sub).mkdir(parents=True, exist_ok=True)
    (tmp_path / "in" / "a" / "x.jsonl").write_text('{"id": "1", "text": "from a"}\n')
    (tmp_path / "in" / "b" / "x.jsonl").write_text('{"id": "1", "text": "from b"}\n')
    (tmp_path / "in" / "x" / " ..évil name;$(rm -rf).jsonl").write_text('{"id": "2", "text": "odd"}\n')
    out_dir = tmp_path / "o"
    code, _, err = beam_run(capsys, "--input", str(tmp_path / "in" / "**" / "*.jsonl"), "--output", str(out_dir))
    assert code == 0, err
    out = read_output(str(out_dir))
    assert_reconciled(out)
    assert len(out["vectors"]) == 3
    for name in out["vectors"]:
        assert "/" not in name and not name.startswith(".")
    for path in out["files"]:
        assert path.startswith(str(out_dir))
    sources = {t.column("source_shard")[0].as_py() for t in out["vectors"].values()}
    assert len(sources) == 3


@pytest.mark.slow
def test_output_reads_back_in_duckdb_and_polars(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "text": t, "n": i}) + "\n" for i, t in enumerate(TEXTS))
    )
    out_dir = tmp_path / "o"
    code, _, err = beam_run(capsys, "--input", str(tmp_path / "in" / "*"), "--output", str(out_dir))
    assert code == 0, err
    glob = str(out_dir / "vectors" / "*.parquet")
    con = duckdb.connect()
    rows = con.execute(
        f"select id, len(vector) as d, json_extract(metadata, '$.n')::int as n from read_parquet('{glob}') order by n"
    ).fetchall()
    assert rows == [(f"r{i}", 384, i) for i in range(len(TEXTS))]
    kv = con.execute(
        f"select value from parquet_kv_metadata('{glob}') where decode(key) = 'beamvec'"
    ).fetchone()
    footer = json.loads(kv[0])
    assert footer["model"] == "all-MiniLM-L6-v2-onnx-int8" and footer["dimension"] == 384
    assert footer["normalized"] is True and footer["backend"] == "local" and footer["beamvec_version"]
    frame = pl.read_parquet(glob)
    assert frame.height == len(TEXTS)
    assert frame.schema["vector"] == pl.Array(pl.Float32, 384)
    norms = np.linalg.norm(np.stack(frame["vector"].to_list()), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    schema = pq.read_schema(glob.replace("*", next(iter(read_output(str(out_dir))["vectors"]))))
    assert schema.field("vector").type == pa.list_(pa.float32(), 384)


@pytest.mark.slow
def test_memory_filesystem_in_and_out(capsys):
    fs = fsspec.filesystem("memory")
    fs.pipe("/mcorpus/one.jsonl", b'{"id": "m1", "text": "in memory"}\n{"id": "m2", "text": "also here"}\n')
    code, _, err = beam_run(capsys, "--input", "memory://mcorpus/*.jsonl", "--output", "memory://mout")
    assert code == 0, err
    out = read_output("memory://mout")
    assert_reconciled(out)
    assert set(vectors_by_id(out)) == {"m1", "m2"}
    assert not any("_tmp" in f for f in out["files"])


@pytest.mark.slow
def test_rerun_skips_committed_shards(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"id": "1", "text": "one"}\n')
    args = ("--input", str(tmp_path / "in" / "*"), "--output", str(tmp_path / "o"))
    assert beam_run(capsys, *args)[0] == 0
    first = read_output(str(tmp_path / "o"))
    code, stdout, _ = beam_run(capsys, *args)
    assert code == 0 and "nothing to do" in stdout
    again = read_output(str(tmp_path / "o"))
    assert again["vectors"].keys() == first["vectors"].keys()
    assert len(again["manifest"]["runs"]) == 1


@pytest.mark.slow
def test_glob_matching_nothing_fails_before_the_pipeline(tmp_path, capsys):
    code, stdout, err = beam_run(capsys, "--input", str(tmp_path / "nope" / "*.jsonl"), "--output", str(tmp_path / "o"))
    assert code == 2
    assert "nope" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_other_model_into_same_output_is_refused(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"id": "1", "text": "one"}\n')
    out_dir = tmp_path / "o"
    assert beam_run(capsys, "--input", str(tmp_path / "in" / "*"), "--output", str(out_dir))[0] == 0
    manifest = json.loads((out_dir / "_manifest.json").read_text())
    manifest["config_fingerprint"] = "someothermodel00"
    (out_dir / "_manifest.json").write_text(json.dumps(manifest))
    code, _, err = beam_run(capsys, "--input", str(tmp_path / "in" / "*"), "--output", str(out_dir))
    assert code == 2 and "another configuration" in err


@pytest.mark.slow
def test_the_summary_counts_a_file_committed_as_parts(tmp_path, capsys):
    """A file over --split-bytes is embedded and committed as parts, each under
    its own name. The summary matched manifest entries by the input's name,
    so a run of large files said "0 run, records read 0, embedded 0"."""
    corpus = tmp_path / "in"
    corpus.mkdir()
    with open(corpus / "big.jsonl", "w") as fh:
        for i in range(240):
            fh.write(json.dumps({"id": f"b{i}", "text": f"line {i} of a file cut into parts"}) + "\n")
    (corpus / "small.jsonl").write_text(json.dumps({"id": "s0", "text": "one whole file"}) + "\n")
    out_dir = tmp_path / "out"
    code, stdout, err = beam_run(capsys, "--input", str(corpus / "*.jsonl"), "--output", str(out_dir),
                                 "--split-bytes", "4096")
    assert code == 0, err
    out = read_output(str(out_dir))
    assert_reconciled(out)
    assert len(out["vectors"]) > 2  # big.jsonl is in parts
    assert "shards         2 (2 run, 0 skipped as committed)" in stdout
    assert "records read   241" in stdout
    assert "embedded       241 " in stdout
