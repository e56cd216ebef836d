"""DuckDB reads an output as printed: the query `beamvec inspect` prints, and
every ```sql example of the README and docs/operators.md, run as written."""

from __future__ import annotations

import json
import re
import shutil

import duckdb
import pyarrow.parquet as pq
import pytest

from beamvec.commands import inspect_output

from helpers import ROOT, beam_run

DOCS = [ROOT / "README.md", ROOT / "docs" / "operators.md"]
TEXTS = {
    "doc-42": "How do I parse a JSON document in Python?",
    "o'neil": "Reading JSON files with the standard library json module.",
    "cat": "A small kitten chased a ball of yarn around the living room.",
    "bank": "The central bank raised interest rates to curb inflation.",
    "match": "The striker scored twice in the second half of the football match.",
}


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    """A real output (local model, 384 dims) over two shards, one of them moved
    into a nested part-file layout (vectors/<shard>/part-….parquet)."""
    root = tmp_path_factory.mktemp("duck")
    (root / "in").mkdir()
    items = list(TEXTS.items())
    for name, chunk in (("a", items[:3]), ("b", items[3:])):
        lines = [json.dumps({"id": k, "text": v, "lang": "en"}) for k, v in chunk]
        (root / "in" / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    (root / "in" / "b.jsonl").open("a").write(json.dumps({"id": "blank", "text": " "}) + "\n")
    out = root / "out"

    class Cap:
        def readouterr(self):
            class O:  # noqa: E742
                out = err = ""
            return O()

    code, _, err = beam_run(Cap(), "--input", str(root / "in" / "*.jsonl"), "--output", str(out))
    assert code == 0, err
    (moved,) = [p for p in (out / "vectors").iterdir() if p.name.startswith("b.jsonl")]
    nested = out / "vectors" / moved.stem
    nested.mkdir()
    shutil.move(moved, nested / "part-00000.parquet")
    return out


def _scores(rows):
    return [score for _, score in rows]


@pytest.mark.slow
def test_inspect_prints_a_query_that_runs_as_is(output, capsys):
    # exit 1: the manifest's file of shard b is not where it says (moved under vectors/<stem>/)
    assert inspect_output.main([str(output)]) == 1
    lines = capsys.readouterr().out.splitlines()
    (query,) = [line.strip() for line in lines if line.strip().startswith("select id, array_cosine_similarity")]
    assert "FLOAT[384]" in query and "/vectors/**/*.parquet" in query
    rows = duckdb.sql(query).fetchall()
    example = re.search(r"where id = '((?:[^']|'')*)'", query).group(1).replace("''", "'")
    assert rows[0][0] == example and rows[0][1] == pytest.approx(1.0, abs=1e-5)
    assert _scores(rows) == sorted(_scores(rows), reverse=True) and len(rows) == 5
    # the nested part file is read too, and an id with a quote survives the SQL quoting
    for rid in ("o'neil", "match"):
        other = query.replace(f"'{example.replace(chr(39), chr(39) * 2)}'", "'" + rid.replace("'", "''") + "'")
        top = duckdb.sql(other).fetchall()
        assert top[0][0] == rid and top[0][1] == pytest.approx(1.0, abs=1e-5)
        assert {r[0] for r in top} == set(TEXTS)


def _sql_blocks() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        if doc.exists():
            for block in re.findall(r"```sql\n(.*?)```", doc.read_text(), re.S):
                if "read_parquet" in block:
                    found.append((doc.name, block))
    return found


@pytest.mark.slow
def test_docs_duckdb_examples_run(output):
    blocks = _sql_blocks()
    assert blocks, "no ```sql example with read_parquet in README.md or docs/operators.md"
    results = {}
    for _doc, block in blocks:
        if "-- bigquery" in block.lower():
            continue
        sql = block.replace("'out/", f"'{output}/")
        for statement in (s.strip() for s in sql.split(";")):
            body = "\n".join(line for line in statement.splitlines() if not line.strip().startswith("--"))
            if body.strip():
                results[body] = duckdb.sql(body).fetchall()  # raises on any error: the example is wrong
    assert results, f"no runnable statement in {[d for d, _ in blocks]}"
    topk = [rows for sql, rows in results.items() if "array_cosine_similarity" in sql]
    for rows in topk:
        assert rows[0][0] == "doc-42" and rows[0][-1] == pytest.approx(1.0, abs=1e-5)
        assert rows[1][0] == "o'neil"  # the other text about JSON is the nearest neighbour


@pytest.mark.slow
def test_vector_column_is_a_standard_parquet_list(output):
    """What BigQuery's --parquet_enable_list_inference needs (BigQuery itself is
    not reachable here): the three-level LIST of FLOAT with an `element` leaf."""
    (path, *_) = sorted((output / "vectors").rglob("*.parquet"))
    column = pq.ParquetFile(path).schema.column(1)
    assert column.path == "vector.list.element" and column.physical_type == "FLOAT"
    assert column.max_repetition_level == 1
