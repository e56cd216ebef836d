"""beamvec plan | inspect | search | verify, each through its main(), against
outputs written by the real pipeline (DirectRunner, local model)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
import shutil
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beamvec import pricing
from beamvec.commands import inspect_output, plan, search, verify
from beamvec.errors import UsageError

from helpers import beam_run, read_output

CAT = ("cat", "A small kitten chased a ball of yarn around the living room.")
FINANCE = ("fin", "The central bank raised interest rates to curb inflation.")
SPORT = ("sport", "The striker scored twice in the second half of the football match.")
FILLER = 70  # records in the big shard: two local requests (64 texts each at most)


class _Capture:
    """beam_run reads what the CLI printed through capsys's readouterr(); a
    module-scoped fixture has no capsys, so it redirects and reads its own."""

    def __init__(self) -> None:
        self.out = io.StringIO()
        self.err = io.StringIO()

    def readouterr(self) -> SimpleNamespace:
        return SimpleNamespace(out=self.out.getvalue(), err=self.err.getvalue())


def _write_corpus(root) -> None:
    lines = [
        json.dumps({"id": f"r{i}", "text": f"Report {i}: logistics update {i} for warehouse {i % 7}.", "n": i})
        for i in range(FILLER)
    ]
    lines += [
        json.dumps({"id": "blank", "text": "   "}),  # empty_text
        json.dumps({"id": "r3", "text": "the same id again"}),  # duplicate_id
        '{"id": "broken", "text": ',  # invalid_json
        json.dumps({"id": "long", "text": "word " * 400}),  # truncated, still embedded
    ]
    (root / "reports.jsonl").write_text("\n".join(lines) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "text", "topic"])
    for rid, text in (CAT, FINANCE, SPORT):
        writer.writerow([rid, text, rid])
    (root / "topics.csv").write_text(buf.getvalue())
    (root / "notes.txt").write_text("first note about gardening\n\nsecond note about cooking\n")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    _write_corpus(root)
    return root


@pytest.fixture(scope="module")
def embedded(corpus, tmp_path_factory):
    """One real run over the corpus: (output dir, its stdout, argv of the inputs)."""
    out_dir = tmp_path_factory.mktemp("runs") / "out"
    inputs = ["--input", str(corpus / "*")]
    cap = _Capture()
    with contextlib.redirect_stdout(cap.out), contextlib.redirect_stderr(cap.err):
        code, stdout, err = beam_run(cap, *inputs, "--output", str(out_dir))
    assert code == 0, err
    return out_dir, stdout, inputs


def _call(capsys, module, *argv: str) -> tuple[int, str]:
    code = module.main(list(argv))
    return code, capsys.readouterr().out


def _rewrite(path, transform) -> None:
    """Rewrite a Parquet file through ``transform(table)``, keeping its schema and footer."""
    meta = pq.ParquetFile(path).metadata.metadata
    table = transform(pq.read_table(path))
    pq.write_table(table.replace_schema_metadata({k: v for k, v in meta.items() if k != b"ARROW:schema"}), path)


# --------------------------------------------------------------------------- plan


@pytest.mark.slow
def test_plan_predicts_what_the_run_did(capsys, corpus, embedded, tmp_path):
    out_dir, run_stdout, inputs = embedded
    code, text = _call(capsys, plan, *inputs, "--output", str(tmp_path / "fresh"), "--json")
    assert code == 0
    p = json.loads(text)
    manifest = read_output(str(out_dir))["manifest"]
    totals = manifest["totals"]
    assert p["shards"] == p["shards_to_embed"] == 3
    assert p["read"] == totals["read"] == FILLER + 4 + 3 + 2
    assert p["records"] == totals["embedded"]
    assert p["tokens"] == totals["tokens"]  # exact for the local model
    assert p["tokens_exact"] and p["truncated"] == 1
    reasons: dict[str, int] = {}
    for shard in manifest["shards"].values():
        for reason, count in shard["dead_letters_by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    assert p["dead_letters_by_reason"] == reasons == {"duplicate_id": 1, "empty_text": 1, "invalid_json": 1}
    # requests: batches of at most 64 texts, filled across shards;
    # the run cuts a partial batch early only when no shard could add to it
    per_shard = {s["input"].rsplit("/", 1)[-1]: s for s in p["per_shard"]}
    assert per_shard["reports.jsonl"]["records"] == FILLER + 1
    assert p["requests"] == math.ceil(sum(s["sent"] for s in p["per_shard"]) / 64) == 2
    requests_run = re.search(r"requests\s+(\d+)", run_stdout)
    if requests_run:  # the DirectRunner reports beamvec's counters
        assert p["requests"] <= int(requests_run.group(1)) <= sum(math.ceil(s["sent"] / 64) for s in p["per_shard"])
    assert p["cost"]["standard"] == 0 and p["duration"]["seconds"] is None
    assert p["output"]["exists"] is False

    # human form; and against the existing output: every shard is skipped, not read
    code, text = _call(capsys, plan, *inputs, "--output", str(out_dir))
    assert code == 0
    assert "0 to embed, 3 already committed" in text
    assert f"already holds 3 shards, {totals['read']} records" in text
    assert "nothing to do" in text and "no quota configured" in text


def test_plan_for_an_api_backend_estimates_without_calling_it(capsys, corpus, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    code, text = _call(
        capsys, plan, "--input", str(corpus / "*"), "--backend", "gemini",
        "--quota-rpm", "60", "--quota-tpm", "1000", "--json",
    )
    assert code == 0
    p = json.loads(text)
    assert not p["tokens_exact"] and p["model"] == "gemini-embedding-001"
    assert p["requests"] == 1  # up to 100 texts per request, filled across the 3 shards
    d = p["duration"]
    assert d["seconds"] == pytest.approx(max(1 / 60, p["sent_tokens"] / 1000) * 60, abs=0.1)
    assert p["cost"]["standard"] == pytest.approx(p["sent_tokens"] * 0.15 / 1e6)
    assert p["cost"]["batch_mode"] == pytest.approx(p["sent_tokens"] * 0.075 / 1e6)
    assert pricing.CHECKED in p["cost"]["basis"]
    assert p["output"]["url"] is None


def test_pricing_table():
    vertex = pricing.estimate_cost("vertex", "publishers/google/models/text-embedding-005", 10, 4_000)
    assert vertex.unit == "character" and vertex.standard == pytest.approx(0.0001)
    assert pricing.estimate_cost("local", "anything", 10**9, 10**9).standard == 0
    unknown = pricing.estimate_cost("gemini", "some-future-model", 10, 10)
    assert not unknown.known and "pricing page" in unknown.basis


def test_plan_errors_say_what_to_do(capsys, tmp_path):
    with pytest.raises(UsageError, match="--input"):
        plan.main(["--output", str(tmp_path)])
    with pytest.raises(UsageError, match="--help"):
        plan.main(["--input", "x", "--backend", "nope"])
    assert plan.main(["--help"]) == 0
    assert "example" in capsys.readouterr().out


# --------------------------------------------------------------------------- inspect


@pytest.mark.slow
def test_inspect_a_real_output(capsys, embedded):
    out_dir, _, _ = embedded
    manifest = read_output(str(out_dir))["manifest"]
    code, text = _call(capsys, inspect_output, str(out_dir), "--json")
    assert code == 0
    rep = json.loads(text)
    assert rep["complete"] and rep["shards"] == 3 and rep["problems"] == []
    assert rep["rows"] == manifest["totals"]["embedded"]
    assert rep["model"] == "all-MiniLM-L6-v2-onnx-int8" and rep["dimension"] == 384
    assert rep["backend"] == "local" and rep["text_normalization"] == "nfc"
    assert rep["dead_letters_by_reason"] == {"duplicate_id": 1, "empty_text": 1, "invalid_json": 1}
    norms = rep["norms"]
    assert norms["count"] == rep["rows"]
    assert norms["min"] == pytest.approx(1, abs=1e-3) and norms["max"] == pytest.approx(1, abs=1e-3)
    assert len(rep["runs"]) == 1 and rep["runs"][0]["embedded"] == rep["rows"]

    assert rep["schema"] == "beamvec.inspect/1"

    code, text = _call(capsys, inspect_output, str(out_dir))
    assert code == 0
    assert "complete: _SUCCESS written" in text and "vector norms" in text and "invalid_json" in text
    # "embedded" alone once hid what was billed. Each run says sent,
    # reused and repeats, as the manifest's run record counts them.
    run = manifest["runs"][0]
    assert run["embedded"] == run["sent"] + run["reused"] + run["deduplicated"]
    assert (f"{run['embedded']:,} embedded ({run['sent']:,} sent, {run['reused']:,} reused, "
            f"{run['deduplicated']:,} repeats)") in text


def test_inspect_of_something_else_says_what_to_do(tmp_path):
    with pytest.raises(UsageError, match=r"is this a beamvec output\? run `beamvec run"):
        inspect_output.main([str(tmp_path)])


# --------------------------------------------------------------------------- search


@pytest.mark.slow
def test_search_finds_the_nearest_record(capsys, embedded):
    out_dir, _, _ = embedded
    code, text = _call(capsys, search, str(out_dir), "kitten", "-k", "3", "--json")
    assert code == 0
    res = json.loads(text)
    assert [r["id"] for r in res["results"]][0] == CAT[0]
    assert len(res["results"]) == 3 and res["scanned"] == read_output(str(out_dir))["manifest"]["totals"]["embedded"]
    assert res["results"][0]["metadata"] == {"topic": "cat"}
    scores = [r["score"] for r in res["results"]]
    assert scores == sorted(scores, reverse=True)

    code, text = _call(capsys, search, str(out_dir), "interest rates and inflation", "-k", "1")
    assert code == 0
    assert re.search(r"1\. [0-9.]+\s+fin\s", text), text


def _stray_from_another_model(out_dir, tmp_path):
    """A copy of the output with one more vector file (as a crashed run of
    another model would leave): the topics shard's rows, footer saying
    ``other-model``. Returns the copy and the stray file's row count."""
    copy, vectors = _copy_output(out_dir, tmp_path)
    meta = pq.ParquetFile(vectors).metadata.metadata
    footer = json.loads(meta[b"beamvec"])
    assert footer["model"] == "all-MiniLM-L6-v2-onnx-int8"  # what the stray must differ from
    footer["model"] = "other-model"
    table = pq.read_table(vectors)
    kept = {k: v for k, v in meta.items() if k not in (b"ARROW:schema", b"beamvec")}
    pq.write_table(table.replace_schema_metadata({**kept, b"beamvec": json.dumps(footer).encode()}),
                   copy / "vectors" / "stray.parquet")
    return copy, table.num_rows


@pytest.mark.slow
def test_inspect_and_search_name_a_vector_file_of_another_model(capsys, embedded, tmp_path):
    out_dir, _, _ = embedded
    copy, stray_rows = _stray_from_another_model(out_dir, tmp_path)
    code, text = _call(capsys, inspect_output, str(copy), "--json")
    rep = json.loads(text)
    assert code == 0 and rep["shards"] == 4
    assert any(p.startswith("vector files disagree on backend/model/dimension/task") and "other-model" in p
               for p in rep["problems"]), rep["problems"]
    assert any("vectors/stray.parquet is not in the manifest" in p for p in rep["problems"])

    embedded_rows = read_output(str(out_dir))["manifest"]["totals"]["embedded"]
    code = search.main([str(copy), "kitten", "-k", "1", "--json"])
    captured = capsys.readouterr()
    assert code == 0 and stray_rows > 0
    assert json.loads(captured.out)["scanned"] == embedded_rows  # the stray's rows are not scored
    assert "skipping vectors/stray.parquet: made with other-model (384 dims)" in captured.err


# --------------------------------------------------------------------------- verify


@pytest.mark.slow
def test_verify_passes_on_a_real_output(capsys, embedded):
    out_dir, _, inputs = embedded
    code, text = _call(capsys, verify, *inputs, str(out_dir))
    assert code == 0, text
    assert text.startswith("OK: ") and len(text.strip().splitlines()) == 1
    # the inputs and reader flags the manifest recorded are the default
    code, text = _call(capsys, verify, str(out_dir))
    assert code == 0 and text.startswith("OK: ")


def _copy_output(out_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(out_dir, copy)
    (vectors,) = [p for p in (copy / "vectors").iterdir() if p.name.startswith("topics.csv")]
    return copy, vectors


@pytest.mark.slow
def test_verify_names_a_missing_row(capsys, embedded, tmp_path):
    out_dir, _, inputs = embedded
    copy, vectors = _copy_output(out_dir, tmp_path)
    _rewrite(vectors, lambda t: t.filter(pa.compute.not_equal(t.column("id"), "fin")))
    assert "beamvec" in str(pq.ParquetFile(vectors).metadata.metadata.keys())
    code, text = _call(capsys, verify, *inputs, str(copy))
    assert code == 1
    assert "1 records missing and 0 doubled" in text
    assert re.search(r"missing \(1\):\n\s+fin\s", text), text


@pytest.mark.slow
def test_verify_names_a_doubled_row(capsys, embedded, tmp_path):
    out_dir, _, inputs = embedded
    copy, vectors = _copy_output(out_dir, tmp_path)
    _rewrite(vectors, lambda t: pa.concat_tables([t, t.slice(0, 1)]))
    first = pq.read_table(vectors).column("id")[0].as_py()
    code, text = _call(capsys, verify, *inputs, "--json", str(copy))
    assert code == 1
    res = json.loads(text)
    assert res["doubled"] == 1 and res["missing"] == 0
    assert res["doubled_ids"] == [{"shard": vectors.stem, "id": first, "expected": 1, "found": 2}]


def test_verify_of_something_else_says_what_to_do(tmp_path):
    with pytest.raises(UsageError, match="beamvec run"):
        verify.main(["--input", str(tmp_path / "*.jsonl"), str(tmp_path)])


@pytest.mark.slow
def test_search_a_gemini_output_embeds_the_query_as_retrieval_query(capsys, corpus, tmp_path, monkeypatch):
    """Documents embedded as RETRIEVAL_DOCUMENT are searched with a RETRIEVAL_QUERY
    vector. The emulator's hash vectors are seeded by task and text, so the exact
    text of a record finds itself (score 1) only when embedded with the documents' task."""
    from beamvec.emulator.server import Emulator

    key = "fakekey-FAKE-commands-key-0000000000000000"
    monkeypatch.setenv("GEMINI_API_KEY", key)
    with Emulator(api_key=key) as emu:
        out_dir = tmp_path / "gemini"
        code, _, err = beam_run(
            capsys, "--input", str(corpus / "topics.csv"), "--output", str(out_dir),
            "--backend", "gemini", "--api-base-url", emu.url, "--task-type", "RETRIEVAL_DOCUMENT",
            "--output-dimensionality", "768",
        )
        assert code == 0, err
        base = [str(out_dir), CAT[1], "-k", "1", "--json", "--api-base-url", emu.url]
        code, text = _call(capsys, search, *base)
        assert code == 0
        res = json.loads(text)
        assert res["task_type"] == "RETRIEVAL_QUERY" and res["dimension"] == 768
        assert res["results"][0]["score"] < 0.9
        code, text = _call(capsys, search, *base, "--task-type", "RETRIEVAL_DOCUMENT")
        top = json.loads(text)["results"][0]
        assert top["id"] == CAT[0] and top["score"] == pytest.approx(1.0, abs=1e-4)
