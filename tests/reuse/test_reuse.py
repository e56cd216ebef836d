"""The bill follows what changed, never how the files are cut.

Counted at the emulator: the real google-genai client against ``beamvec
emulator``; a text is billed when the emulator embedded it (its stats count
texts by content hash, the preflight's real text included). ``plan --json``
is run before each run and must predict it exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from beamvec.emulator import Emulator, expected_vector
from beamvec.records import content_hash

from helpers import assert_reconciled, beam_run, read_output, run_cli, vectors_by_id

KEY = "fakekey-FAKE-reuse-key-0000000000000000"
MODEL = "gemini-embedding-001"  # the gemini backend's default model
DIM = 768


def write_jsonl(path: Path, records: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in records))


def billed(emu: Emulator) -> dict[str, int]:
    """Texts the emulator embedded (and a real API would bill), by content hash."""
    return dict(emu.stats()["text_counts"])


def want(text: str) -> np.ndarray:
    """What the gemini backend stores for ``text``: the emulator's vector, normalized."""
    v = expected_vector(MODEL, None, DIM, text)
    return v / np.linalg.norm(v)


def gemini(emu: Emulator, inputs: str, output: Path, *extra: str) -> list[str]:
    return [
        "--input", inputs, "--output", str(output), "--backend", "gemini",
        "--api-base-url", emu.url, "--output-dimensionality", str(DIM), *extra,
    ]


def plan(capsys, args: list[str]) -> dict:
    code, out, err = run_cli(capsys, "plan", "--quiet", "--json", *args)
    assert code == 0, err
    return json.loads(out)


def last_run(output: Path) -> dict:
    return json.loads((output / "_manifest.json").read_text())["runs"][-1]


def run_as_planned(capsys, emu: Emulator, args: list[str]) -> tuple[dict, dict, dict[str, int]]:
    """plan, then run with the same flags: (plan, the run's history line, texts billed)."""
    predicted = plan(capsys, args)
    emu.reset()
    code, _, err = beam_run(capsys, *args)
    assert code == 0, err
    sent = billed(emu)
    output = Path(args[args.index("--output") + 1])
    return predicted, last_run(output), sent


def assert_predicted(predicted: dict, run: dict, sent: dict[str, int]) -> None:
    assert predicted["sent"] == sum(sent.values()) == run["sent"]
    assert predicted["reused"] == run["reused"]
    assert predicted["deduplicated"] == run["deduplicated"]
    assert predicted["records"] == run["embedded"]
    assert predicted["dead_letters"] == run["dead_lettered"]


@pytest.fixture
def emu(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    with Emulator(api_key=KEY) as e:
        yield e


# -- two nights of a re-exported snapshot ----------------------------------------------

IDS = [f"doc-{i:04d}" for i in range(2000)]
NIGHT1 = {i: f"document {n} of the nightly snapshot, version one" for n, i in enumerate(IDS)}
CHANGED = IDS[7::100]  # 20 ids whose text changes on night 2
NIGHT2 = {**NIGHT1, **{i: f"document {i} rewritten on night two" for i in CHANGED}}


def night1(root: Path) -> str:
    """2,000 records in 4 files of 500."""
    for f in range(4):
        write_jsonl(root / f"part-{f}.jsonl", [(i, NIGHT1[i]) for i in IDS[f * 500:(f + 1) * 500]])
    return str(root / "*.jsonl")


def night2(root: Path) -> str:
    """The same records re-exported: 5 files with new names and new boundaries
    (and another order), 20 texts changed."""
    order = IDS[1::2] + IDS[::2]
    for f in range(5):
        write_jsonl(root / f"export-{f:05d}-c000.jsonl", [(i, NIGHT2[i]) for i in order[f * 400:(f + 1) * 400]])
    return str(root / "*.jsonl")


def assert_mirrors_night2(output: Path) -> None:
    out = read_output(str(output))
    assert_reconciled(out)
    got = vectors_by_id(out)  # fails on an id written twice
    assert set(got) == set(IDS)
    for i in IDS:
        np.testing.assert_allclose(got[i], want(NIGHT2[i]), atol=1e-6)


@pytest.mark.slow
def test_night2_into_the_same_output_with_prune_bills_only_the_changes(emu, tmp_path, capsys):
    output = tmp_path / "out"
    first = gemini(emu, night1(tmp_path / "n1"), output)
    predicted, run, sent = run_as_planned(capsys, emu, first)
    assert sum(sent.values()) == len(sent) == 2000
    assert_predicted(predicted, run, sent)
    old = sorted(json.loads((output / "_manifest.json").read_text())["shards"])
    assert len(old) == 4

    second = gemini(emu, night2(tmp_path / "n2"), output, "--prune")
    predicted, run, sent = run_as_planned(capsys, emu, second)
    assert sent == {content_hash(NIGHT2[i]): 1 for i in CHANGED}
    assert (run["sent"], run["reused"], run["deduplicated"]) == (20, 1980, 0)
    assert_predicted(predicted, run, sent)

    manifest = json.loads((output / "_manifest.json").read_text())
    assert sorted(n.split(".jsonl")[0] for n in manifest["shards"]) == [f"export-{f:05d}-c000" for f in range(5)]
    assert sorted(run["pruned"]) == old
    assert not any((output / "vectors" / f"{name}.parquet").exists() for name in old)
    assert sorted(p.stem for p in (output / "vectors").glob("*.parquet")) == sorted(manifest["shards"])
    assert_mirrors_night2(output)


@pytest.mark.slow
def test_night2_into_a_new_output_reusing_night1(emu, tmp_path, capsys):
    night2_reusing_night1(emu, tmp_path, capsys, lambda args: run_as_planned(capsys, emu, args))


def night2_reusing_night1(
    emu: Emulator, tmp_path: Path, capsys, run_planned: Callable[[list[str]], tuple[dict, dict, dict[str, int]]],
) -> None:
    """Night 2 into a new output with ``--reuse-from`` night 1's, run by
    ``run_planned`` (plan, then run: as ``run_as_planned``): only the changed
    texts are sent, and night 1's output is only read."""
    first_out, second_out = tmp_path / "night1", tmp_path / "night2"
    assert beam_run(capsys, *gemini(emu, night1(tmp_path / "n1"), first_out))[0] == 0
    before = {p: p.stat().st_mtime_ns for p in first_out.rglob("*")}

    args = gemini(emu, night2(tmp_path / "n2"), second_out, "--reuse-from", str(first_out))
    predicted, run, sent = run_planned(args)
    assert sent == {content_hash(NIGHT2[i]): 1 for i in CHANGED}
    assert (run["sent"], run["reused"], run["deduplicated"]) == (20, 1980, 0)
    assert_predicted(predicted, run, sent)
    assert_mirrors_night2(second_out)
    assert {p: p.stat().st_mtime_ns for p in first_out.rglob("*")} == before  # read only


@pytest.mark.slow
def test_reuse_from_another_model_or_dimension_is_refused_in_one_line(emu, tmp_path, capsys):
    corpus = tmp_path / "in"
    write_jsonl(corpus / "a.jsonl", [("1", "one"), ("2", "two")])
    other = tmp_path / "other"
    assert beam_run(capsys, *gemini(emu, str(corpus / "*"), other))[0] == 0
    emu.reset()

    args = gemini(emu, str(corpus / "*"), tmp_path / "new", "--reuse-from", str(other))
    args[args.index("--output-dimensionality") + 1] = "256"
    for command in (("run", "--runner=DirectRunner", "--quiet"), ("plan", "--quiet")):
        code, out, err = run_cli(capsys, *command, *args)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert str(other) in lines[0] and "--reuse-from" in lines[0]
        assert "dimension 768 (here 256)" in lines[0]
    local = ["--input", str(corpus / "*"), "--output", str(tmp_path / "local"), "--reuse-from", str(other)]
    code, _, err = run_cli(capsys, "run", "--runner=DirectRunner", "--quiet", *local)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "backend gemini (here local)" in err and f"model {MODEL}" in err
    assert emu.stats()["requests"] == 0
    assert not (tmp_path / "new").exists() and not (tmp_path / "local").exists()


# -- repeats across shards ------------------------------------------------------------

SHARED = [f"a text every shard holds, number {k}" for k in range(50)]


def four_shards_sharing_50_texts(root: Path) -> str:
    for s in range(4):
        write_jsonl(root / f"s{s}.jsonl", [(f"s{s}-{k}", SHARED[k]) for k in range(50)])
    return str(root / "*.jsonl")


@pytest.mark.slow
def test_four_shards_sharing_50_texts_bill_50(emu, tmp_path, capsys):
    output = tmp_path / "out"
    args = gemini(emu, four_shards_sharing_50_texts(tmp_path / "in"), output)
    predicted, run, sent = run_as_planned(capsys, emu, args)
    assert sent == {content_hash(t): 1 for t in SHARED}
    assert (run["sent"], run["reused"], run["deduplicated"]) == (50, 0, 150)
    assert_predicted(predicted, run, sent)
    out = read_output(str(output))
    assert_reconciled(out)
    got = vectors_by_id(out)
    assert len(got) == 200
    for s in range(4):
        for k in range(50):
            np.testing.assert_allclose(got[f"s{s}-{k}"], want(SHARED[k]), atol=1e-6)


@pytest.mark.slow
def test_repeats_across_two_worker_processes_are_sent_at_most_once_per_process(emu, tmp_path):
    """Processes share nothing but the output: a text repeated in shards that
    land on different processes may be sent once by each, never more."""
    output = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "beamvec.cli", "run", "--runner=DirectRunner", "--quiet",
        "--direct_running_mode=multi_processing", "--direct_num_workers=2",
        *gemini(emu, four_shards_sharing_50_texts(tmp_path / "in"), output),
    ]
    env = {**os.environ, "GEMINI_API_KEY": KEY}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    sent = billed(emu)
    assert set(sent) == {content_hash(t) for t in SHARED}
    assert max(sent.values()) <= 2  # once per process at most
    run = last_run(output)
    assert run["sent"] == sum(sent.values()), (run, json.loads((output / "_manifest.json").read_text())["shards"])
    # a bundle that starts after others committed reuses their vectors from the output
    assert run["sent"] + run["deduplicated"] + run["reused"] == 200
    assert set(vectors_by_id(read_output(str(output)))) == {f"s{s}-{k}" for s in range(4) for k in range(50)}


@pytest.mark.slow
def test_repeats_across_dofn_copies_in_one_process_are_sent_once(emu, tmp_path, capsys):
    """The multi-threading DirectRunner runs bundles on separate copies of the
    DoFn in one process, as Dataflow's SDK harness does: the copies share one
    run memory, so a text their shards share is billed once."""
    output = tmp_path / "out"
    args = gemini(emu, four_shards_sharing_50_texts(tmp_path / "in"), output,
                  "--direct_running_mode=multi_threading", "--direct_num_workers=4")
    code, _, err = beam_run(capsys, *args)
    assert code == 0, err
    assert billed(emu) == {content_hash(t): 1 for t in SHARED}
    run = last_run(output)
    assert (run["sent"], run["sent"] + run["deduplicated"] + run["reused"]) == (50, 200)
    got = vectors_by_id(read_output(str(output)))
    for s in range(4):
        for k in range(50):
            np.testing.assert_allclose(got[f"s{s}-{k}"], want(SHARED[k]), atol=1e-6)


# -- first run, unchanged rerun, one change --------------------------------------------


@pytest.mark.slow
def test_first_run_bills_unique_texts_rerun_nothing_one_change_one(emu, tmp_path, capsys):
    corpus = tmp_path / "in"
    texts = {f"id{i}": f"sentence number {i % 240} of the corpus" for i in range(300)}  # 240 unique
    items = list(texts.items())
    write_jsonl(corpus / "a.jsonl", items[:150])
    write_jsonl(corpus / "b.jsonl", items[150:])
    output = tmp_path / "out"
    args = gemini(emu, str(corpus / "*.jsonl"), output)

    predicted, run, sent = run_as_planned(capsys, emu, args)
    assert emu.stats()["texts_embedded"] == 240 == len(sent)  # the preflight's text included
    assert max(sent.values()) == 1
    assert (run["sent"], run["deduplicated"], run["reused"]) == (240, 60, 0)
    assert_predicted(predicted, run, sent)

    predicted = plan(capsys, args)
    emu.reset()
    code, stdout, err = beam_run(capsys, *args)
    assert code == 0 and "nothing to do" in stdout, err
    assert emu.stats()["requests"] == 0
    assert (predicted["sent"], predicted["shards_to_embed"]) == (0, 0)

    items[3] = ("id3", "a sentence that changed overnight")
    write_jsonl(corpus / "a.jsonl", items[:150])
    predicted, run, sent = run_as_planned(capsys, emu, args)
    assert sent == {content_hash("a sentence that changed overnight"): 1}
    assert emu.stats()["requests"] == 1
    assert (run["sent"], run["reused"]) == (1, 149)
    assert_predicted(predicted, run, sent)
    got = vectors_by_id(read_output(str(output)))
    np.testing.assert_allclose(got["id3"], want("a sentence that changed overnight"), atol=1e-6)


# -- plan equals run ------------------------------------------------------------------


def corpus_with_everything(root: Path) -> str:
    """Three shards: repeats inside a shard and across shards, a dead-letter mix."""
    write_jsonl(root / "a.jsonl", [(f"a{i}", f"alpha line {i % 12}") for i in range(30)])  # 12 texts
    write_jsonl(root / "b.jsonl", [(f"b{i}", f"bravo line {i}") for i in range(20)] + [("b20", "alpha line 3")])
    (root / "c.jsonl").write_text("\n".join([
        json.dumps({"id": "c0", "text": "charlie keeps its own text"}),
        json.dumps({"id": "c1", "text": "   "}),  # empty_text
        json.dumps({"id": "c0", "text": "the same id again"}),  # duplicate_id
        '{"id": "c3", "text": ',  # invalid_json
        json.dumps({"id": "c4"}),  # missing_text
        json.dumps({"id": "c5", "text": 42}),  # non_string_text
        json.dumps({"id": "c6", "text": "bravo line 4"}),
        json.dumps({"id": "c7", "text": "word " * 300}),
    ]) + "\n")
    return str(root / "*.jsonl")


def shard_counts(output: Path) -> dict[str, dict]:
    return json.loads((output / "_manifest.json").read_text())["shards"]


def assert_plan_equals_run(predicted: dict, output: Path, run: dict) -> None:
    """The plan's records, texts to send and tokens are the run's, shard by shard."""
    assert predicted["records"] == run["embedded"]
    assert predicted["read"] == run["read"]
    assert predicted["sent"] == run["sent"]
    assert predicted["sent_tokens"] == run["sent_tokens"]
    assert predicted["tokens"] == run["tokens"]
    assert predicted["reused"] == run["reused"]
    assert predicted["deduplicated"] == run["deduplicated"]
    assert predicted["dead_letters"] == run["dead_lettered"]
    shards = shard_counts(output)
    for planned in predicted["per_shard"]:
        done = shards[planned["name"]]
        assert (planned["read"], planned["records"], planned["tokens"], planned["dead_letters_by_reason"]) == (
            done["read"], done["embedded"], done["tokens"], done["dead_letters_by_reason"]
        ), planned["name"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "gemini"])
def test_plan_equals_run(backend, tmp_path, capsys, monkeypatch):
    """Fresh, unchanged rerun, one text changed: the plan is the run's
    prediction (exact tokens with the local model; texts billed at the emulator)."""
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    corpus = tmp_path / "in"
    inputs = corpus_with_everything(corpus)
    output = tmp_path / "out"
    with Emulator(api_key=KEY) as emu:
        args = (gemini(emu, inputs, output) if backend == "gemini"
                else ["--input", inputs, "--output", str(output)])

        # fresh: 54 records, 12 + 20 + 2 unique texts (repeats in a, and across shards)
        predicted, run, sent = run_as_planned(capsys, emu, args)
        assert (predicted["records"], predicted["sent"], predicted["deduplicated"]) == (54, 34, 20)
        assert predicted["tokens_exact"] is (backend == "local")
        assert predicted["dead_letters_by_reason"] == {
            "duplicate_id": 1, "empty_text": 1, "invalid_json": 1, "missing_text": 1, "non_string_text": 1,
        }
        assert_plan_equals_run(predicted, output, run)
        if backend == "gemini":
            assert sum(sent.values()) == len(sent) == 34

        # unchanged rerun: nothing to read, nothing to send
        history = len(json.loads((output / "_manifest.json").read_text())["runs"])
        predicted = plan(capsys, args)
        assert (predicted["shards_to_embed"], predicted["read"], predicted["sent"]) == (0, 0, 0)
        emu.reset()
        code, stdout, err = beam_run(capsys, *args)
        assert code == 0 and "nothing to do" in stdout, err
        assert emu.stats()["requests"] == 0
        assert len(json.loads((output / "_manifest.json").read_text())["runs"]) == history

        # one text changed in shard b: b is read again, one text sent
        lines = (corpus / "b.jsonl").read_text().splitlines()
        lines[5] = json.dumps({"id": "b5", "text": "bravo line 5, edited"})
        (corpus / "b.jsonl").write_text("\n".join(lines) + "\n")
        predicted, run, sent = run_as_planned(capsys, emu, args)
        assert (predicted["shards_to_embed"], predicted["sent"], predicted["reused"]) == (1, 1, 20)
        assert_plan_equals_run(predicted, output, run)
        if backend == "gemini":
            assert sent == {content_hash("bravo line 5, edited"): 1}
    out = read_output(str(output))
    assert_reconciled(out)
    assert len(vectors_by_id(out)) == 54
