"""The pipeline on the gemini and vertex backends, through the real google-genai
client, against beamvec's emulator on 127.0.0.1. Every vector is checked by id
against the emulator's deterministic function."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from beamvec.emulator.server import Emulator
from beamvec.emulator.vectors import expected_vector

from helpers import assert_reconciled, beam_run, read_output, vectors_by_id

KEY = "fakekey-FAKE-emulator-key-0123456789abcdef"


@pytest.fixture
def emulator():
    with Emulator(api_key=KEY, latency_ms=2) as emu:
        yield emu


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    texts = {f"r{i}": f"record {i}: the sentence about topic {i % 7}" for i in range(230)}
    root = tmp_path / "corpus"
    root.mkdir()
    items = list(texts.items())
    for part in range(2):
        lines = [json.dumps({"id": k, "text": v}) for k, v in items[part::2]]
        (root / f"part-{part}.jsonl").write_text("\n".join(lines) + "\n")
    return root, texts


def _normalized(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _check_vectors(out, texts, model, task, dim):
    got = vectors_by_id(out)
    assert set(got) == set(texts)
    for rid, text in texts.items():
        want = _normalized(expected_vector(model, task, dim, text))
        np.testing.assert_allclose(got[rid], want, atol=1e-5, err_msg=rid)


@pytest.mark.slow
@pytest.mark.parametrize("dim", [768, 3072])
def test_gemini_backend_end_to_end(emulator, corpus, tmp_path, capsys, monkeypatch, dim):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    root, texts = corpus
    code, stdout, err = beam_run(
        capsys, "--input", str(root / "*.jsonl"), "--output", str(tmp_path / "out"),
        "--backend", "gemini", "--api-base-url", emulator.url, "--api-version", "v1beta",
        "--task-type", "RETRIEVAL_DOCUMENT", "--output-dimensionality", str(dim),
    )
    assert code == 0, err
    out = read_output(str(tmp_path / "out"))
    assert_reconciled(out)
    _check_vectors(out, texts, "gemini-embedding-001", "RETRIEVAL_DOCUMENT", dim)
    first = next(iter(sorted((tmp_path / "out" / "vectors").glob("*.parquet"))))
    footer = pq.ParquetFile(first).metadata.metadata[b"beamvec"]
    meta = json.loads(footer)
    assert meta["dimension"] == dim and meta["normalized"] is True and meta["backend"] == "gemini"
    stats = emulator.stats()
    # 230 texts in 2 shards of 115: never a batch of 101, never a 400
    assert set(stats["by_status"]) == {"200"} or set(stats["by_status"]) == {200}
    # the preflight embeds a text the run needs: each text is billed once
    assert stats["texts_embedded"] == len(texts)
    # 229 texts after the preflight's one, in requests of 100 filled across shards
    assert 1 + 3 <= stats["requests"] <= 1 + 2 * 2
    for blob in [stdout, err, json.dumps(out["manifest"]), footer.decode()]:
        assert KEY not in blob


@pytest.mark.slow
def test_vertex_backend_and_multimodal_model(emulator, corpus, tmp_path, capsys):
    root, texts = corpus
    code, _, err = beam_run(
        capsys, "--input", str(root / "*.jsonl"), "--output", str(tmp_path / "out"),
        "--backend", "vertex", "--project", "demo-project", "--location", "us-central1",
        "--vertex-auth", "anonymous", "--api-base-url", emulator.url,
        "--model", "gemini-embedding-2-preview", "--output-dimensionality", "768",
    )
    assert code == 0, err
    out = read_output(str(tmp_path / "out"))
    assert_reconciled(out)
    # each text its own Content: one vector per text, not one merged vector
    _check_vectors(out, texts, "gemini-embedding-2-preview", None, 768)


@pytest.mark.slow
def test_malformed_responses_are_retried_never_misaligned(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    root, texts = corpus
    with Emulator(api_key=KEY, malformed=0.3, fail_503=0.1, seed=3) as emu:
        code, _, err = beam_run(
            capsys, "--input", str(root / "*.jsonl"), "--output", str(tmp_path / "out"),
            "--backend", "gemini", "--api-base-url", emu.url, "--output-dimensionality", "768",
            "--max-attempts", "20", "--max-in-flight", "4",
        )
        stats = emu.stats()
    assert code == 0, err
    out = read_output(str(tmp_path / "out"))
    assert_reconciled(out)
    assert out["manifest"]["totals"]["dead_lettered"] == 0
    _check_vectors(out, texts, "gemini-embedding-001", None, 768)
    assert sum(stats["faults"].values()) > 0


@pytest.mark.slow
def test_too_long_texts_truncated_or_dead_lettered(emulator, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    root = tmp_path / "in"
    root.mkdir()
    long_text = "lorem ipsum " * 2000  # ~24k chars: over 2,048 tokens
    (root / "a.jsonl").write_text(
        json.dumps({"id": "long", "text": long_text}) + "\n" + json.dumps({"id": "short", "text": "hi there"}) + "\n"
    )
    common = ["--backend", "gemini", "--api-base-url", emulator.url, "--output-dimensionality", "768"]
    code, _, err = beam_run(capsys, "--input", str(root / "*"), "--output", str(tmp_path / "t"), *common)
    assert code == 0, err
    out = read_output(str(tmp_path / "t"))
    table = next(iter(out["vectors"].values())).to_pydict()
    flags = dict(zip(table["id"], table["truncated"], strict=True))
    assert flags == {"long": True, "short": False}
    code, _, err = beam_run(
        capsys, "--input", str(root / "*"), "--output", str(tmp_path / "d"), *common,
        "--on-long-text", "dead-letter",
    )
    assert code == 0, err
    out = read_output(str(tmp_path / "d"))
    assert_reconciled(out)
    assert set(vectors_by_id(out)) == {"short"}
    assert next(iter(out["dead"].values())).column("reason").to_pylist() == ["text_too_long"]
    assert emulator.stats()["by_status"].get("400", emulator.stats()["by_status"].get(400, 0)) == 0


@pytest.mark.slow
def test_wrong_key_fails_fast_without_leaking_it(emulator, corpus, tmp_path, capsys, monkeypatch, caplog):
    wrong = "fakekey-WRONG-key-that-must-never-be-printed-42"
    monkeypatch.setenv("GEMINI_API_KEY", wrong)
    root, _ = corpus
    caplog.set_level("DEBUG")
    code, stdout, err = beam_run(
        capsys, "--input", str(root / "*.jsonl"), "--output", str(tmp_path / "out"),
        "--backend", "gemini", "--api-base-url", emulator.url,
    )
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "key" in err.lower()
    for blob in (stdout, err, caplog.text):
        assert wrong not in blob
    assert not (tmp_path / "out").exists()
    assert emulator.stats()["requests"] == 1  # the preflight, nothing more


@pytest.mark.slow
def test_one_text_under_two_titles_gets_two_vectors(emulator, tmp_path, capsys, monkeypatch):
    """RETRIEVAL_DOCUMENT embeds the title with the text: a repeat of the text
    under another title is another input, never a reused vector."""
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    (tmp_path / "in").mkdir()
    rows = [("a", "Pumps", "how to prime it"), ("b", "Boats", "how to prime it"), ("c", "Pumps", "how to prime it")]
    (tmp_path / "in" / "t.jsonl").write_text(
        "".join(json.dumps({"id": i, "title": t, "text": x}) + "\n" for i, t, x in rows)
    )
    code, _, err = beam_run(
        capsys, "--input", str(tmp_path / "in" / "*.jsonl"), "--output", str(tmp_path / "out"),
        "--backend", "gemini", "--api-base-url", emulator.url, "--task-type", "RETRIEVAL_DOCUMENT",
        "--title-field", "title", "--output-dimensionality", "768",
    )
    assert code == 0, err
    got = vectors_by_id(read_output(str(tmp_path / "out")))
    for rid, title, text in rows:
        want = _normalized(expected_vector("gemini-embedding-001", "RETRIEVAL_DOCUMENT", 768, text, title))
        np.testing.assert_allclose(got[rid], want, atol=1e-5, err_msg=rid)
    assert emulator.stats()["texts_embedded"] == 2  # (Pumps, text) once, (Boats, text) once


@pytest.mark.slow
def test_tiny_shards_on_dofn_copies_in_one_process_share_requests(tmp_path, capsys, monkeypatch):
    """The multi-threading DirectRunner runs bundles on separate copies of the
    DoFn in one process, as Dataflow's SDK harness does. They share one
    collector, so 400 shards of 5 texts still fill requests of 100 (each
    copy cutting its own partial requests took 343 for 20,000 texts in 1,000
    shards, where 200 suffice)."""
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    root = tmp_path / "corpus"
    root.mkdir()
    texts = {f"s{s}-{k}": f"shard {s} holds sentence {k}" for s in range(400) for k in range(5)}
    for s in range(400):
        lines = [json.dumps({"id": f"s{s}-{k}", "text": texts[f"s{s}-{k}"]}) for k in range(5)]
        (root / f"s{s:03d}.jsonl").write_text("\n".join(lines) + "\n")
    with Emulator(api_key=KEY, latency_ms=100) as emulator:
        code, _, err = beam_run(
            capsys, "--input", str(root / "*.jsonl"), "--output", str(tmp_path / "out"),
            "--backend", "gemini", "--api-base-url", emulator.url, "--output-dimensionality", "768",
            "--direct_running_mode=multi_threading", "--direct_num_workers=4",
        )
        stats = emulator.stats()
    assert code == 0, err
    out = read_output(str(tmp_path / "out"))
    assert_reconciled(out)
    _check_vectors(out, texts, "gemini-embedding-001", None, 768)
    assert stats["texts_embedded"] == 2000
    # the preflight, then 1,999 texts in requests of 100: 20 at least. A
    # partial request goes early after a linger with a slot free, which the
    # slow trickle of tiny shards allows a few times (25 or 26 here); copies
    # with their own collectors took 78 to 83.
    assert 1 + 20 <= stats["requests"] <= 1 + 20 + 15, stats["requests"]
