"""Issue 31: reuse as a join in the pipeline, on the DirectRunner.

The thresholds are set to 0 so that the join runs on small data, and the
in-process index is made to fail if anything asks for it: every reuse below
went through the join. Billing is counted at the emulator (real google-genai
client), vectors are compared with the emulator's published ones, and every
output is read back with pyarrow (one row per record, counts reconciled).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from beamvec.contract import Description
from beamvec.pipeline import reuse_join
from beamvec.pipeline.reuse_join import (
    BatchRef,
    JoinBucket,
    JoinedLookup,
    KeyChunk,
    VectorChunk,
    _staging,
    _write,
    vector_rows,
)
from beamvec.pipeline.worker import WorkerConfig
from beamvec.records import content_hash
from beamvec.route import lookup
from beamvec.route.prepare import PrepareConfig
from beamvec.sources import ReaderConfig
from test_reuse import (
    CHANGED,
    IDS,
    NIGHT1,
    NIGHT2,
    assert_mirrors_night2,
    assert_predicted,
    billed,
    emu,  # noqa: F401 - the fixture
    gemini,
    night1,
    night2,
    plan,
    want,
    write_jsonl,
)

from helpers import assert_reconciled, beam_run, read_output, vectors_by_id


@pytest.fixture
def joined(monkeypatch):
    """Every run joins, and no process builds the in-process index."""
    monkeypatch.setattr(reuse_join, "JOIN_MIN_VECTORS", 1)
    monkeypatch.setattr(reuse_join, "JOIN_MIN_RECORDS", 0)


def forbid_index(monkeypatch) -> None:
    """From now on, a process that asks for the in-process index fails the run."""

    def no_index(self):
        if self.reuse:
            raise AssertionError("the in-process index was asked although the run joins")
        return lookup.NoLookup()

    monkeypatch.setattr(lookup.Lookups, "index", no_index)


def run_joined(capsys, emu, monkeypatch, args: list[str]) -> tuple[dict, dict, dict[str, int]]:  # noqa: F811
    """plan (in-process index), then run (join only): (plan, the run's history line, texts billed)."""
    predicted = plan(capsys, args)
    forbid_index(monkeypatch)
    emu.reset()
    code, _, err = beam_run(capsys, *args)
    assert code == 0, err
    output = Path(args[args.index("--output") + 1])
    return predicted, json.loads((output / "_manifest.json").read_text())["runs"][-1], billed(emu)


def night1_renamed(root: Path) -> str:
    """Night 1's records in night 1's order, re-cut into 3 files under new names."""
    for f in range(3):
        chunk = IDS[f * 667:(f + 1) * 667]
        write_jsonl(root / f"same-order-{f}.jsonl", [(i, NIGHT1[i]) for i in chunk])
    return str(root / "*.jsonl")


def test_shuffled_reexport_into_the_same_output_with_prune_bills_only_the_changes(
    emu, joined, monkeypatch, tmp_path, capsys  # noqa: F811
):
    output = tmp_path / "out"
    code, _, err = beam_run(capsys, *gemini(emu, night1(tmp_path / "n1"), output))
    assert code == 0, err
    old = sorted(json.loads((output / "_manifest.json").read_text())["shards"])

    args = gemini(emu, night2(tmp_path / "n2"), output, "--prune", "--split-bytes", "8192")
    predicted, run, sent = run_joined(capsys, emu, monkeypatch, args)
    assert sent == {content_hash(NIGHT2[i]): 1 for i in CHANGED}  # nothing reusable billed
    assert (run["sent"], run["reused"], run["deduplicated"]) == (20, 1980, 0)
    assert_predicted(predicted, run, sent)
    assert sorted(run["pruned"]) == old
    assert_mirrors_night2(output)  # one row per record, each vector the one of its text
    assert not (output / "_tmp").exists()  # the join's staged files went with the run


def test_same_order_reexport_into_the_same_output_bills_nothing(emu, joined, monkeypatch, tmp_path, capsys):  # noqa: F811
    output = tmp_path / "out"
    code, _, err = beam_run(capsys, *gemini(emu, night1(tmp_path / "n1"), output))
    assert code == 0, err

    args = gemini(emu, night1_renamed(tmp_path / "same"), output, "--prune")
    predicted, run, sent = run_joined(capsys, emu, monkeypatch, args)
    assert sent == {}
    assert (run["sent"], run["reused"]) == (0, 2000)
    assert_predicted(predicted, run, sent)
    out = read_output(str(output))
    assert_reconciled(out)
    got = vectors_by_id(out)
    assert set(got) == set(IDS) and len(out["vectors"]) == 3
    for i in IDS:
        np.testing.assert_allclose(got[i], want(NIGHT1[i]), atol=1e-6)


def test_shuffled_reexport_into_a_new_output_reusing_night1(emu, joined, monkeypatch, tmp_path, capsys):  # noqa: F811
    first_out, second_out = tmp_path / "night1", tmp_path / "night2"
    assert beam_run(capsys, *gemini(emu, night1(tmp_path / "n1"), first_out))[0] == 0
    before = {p: p.stat().st_mtime_ns for p in first_out.rglob("*")}

    args = gemini(emu, night2(tmp_path / "n2"), second_out, "--reuse-from", str(first_out))
    predicted, run, sent = run_joined(capsys, emu, monkeypatch, args)
    assert sent == {content_hash(NIGHT2[i]): 1 for i in CHANGED}
    assert (run["sent"], run["reused"], run["deduplicated"]) == (20, 1980, 0)
    assert_predicted(predicted, run, sent)
    assert_mirrors_night2(second_out)
    assert {p: p.stat().st_mtime_ns for p in first_out.rglob("*")} == before  # read only


def test_repeats_of_a_new_text_are_sent_once_and_of_a_known_one_reused(emu, joined, monkeypatch, tmp_path, capsys):  # noqa: F811
    output = tmp_path / "out"
    code, _, err = beam_run(capsys, *gemini(emu, night1(tmp_path / "n1"), output))
    assert code == 0, err
    new = "a text no night has seen"
    known = NIGHT1[IDS[5]]
    write_jsonl(tmp_path / "rep" / "a.jsonl", [(f"a{n}", new if n % 2 else known) for n in range(10)])
    args = gemini(emu, str(tmp_path / "rep" / "*.jsonl"), output)
    predicted, run, sent = run_joined(capsys, emu, monkeypatch, args)
    assert sent == {content_hash(new): 1}
    assert (run["sent"], run["reused"], run["deduplicated"]) == (1, 5, 4)
    assert_predicted(predicted, run, sent)
    got = vectors_by_id(read_output(str(output)))
    for n in range(10):
        np.testing.assert_allclose(got[f"a{n}"], want(new if n % 2 else known), atol=1e-6)


# -- the join's pieces ----------------------------------------------------------------


def digest(n: int) -> str:
    return content_hash(f"text {n}")


def join_one_bucket(tmp_path: Path, keys: dict[str, list[str]], vectors: list[tuple[tuple[int, int, int], list[str], float]]):
    """Run JoinBucket over staged files as the pipeline would: {split: JoinedLookup}."""
    config = WorkerConfig(output=str(tmp_path / "out"), reader=ReaderConfig(), prepare=PrepareConfig(),
                          description=Description("local", "m", 4), run_id="r1")
    output, where = _staging(config)
    output.makedirs(where)
    key_chunks = []
    for n, (split, hashes) in enumerate(keys.items()):
        _write(output, f"{where}/k{n}", pa.schema([("content_hash", pa.string())]),
               [pa.table({"content_hash": pa.array(hashes, pa.string())})])
        key_chunks.append(KeyChunk(split, BatchRef(f"k{n}", 0)))
    vector_chunks = []
    for n, (rank, hashes, value) in enumerate(vectors):
        table = vector_rows(hashes, np.full((len(hashes), 4), value, np.float32))
        _write(output, f"{where}/v{n}", table.schema, [table])
        vector_chunks.append(VectorChunk(rank, BatchRef(f"v{n}", 0)))
    results = {}
    for order in (vector_chunks, vector_chunks[::-1]):  # whatever order the runner hands them in
        out = list(JoinBucket(config, 4).process((0, {"keys": key_chunks, "vectors": order})))
        got = {split: JoinedLookup.load(output, where, [ref], 4) for split, ref in out}
        results.setdefault("first", got)
        assert {s: {h: float(v.get(h)[0]) for h in keys[s] if h in v} for s, v in got.items()} == {
            s: {h: float(v.get(h)[0]) for h in keys[s] if h in v} for s, v in results["first"].items()}
    return results["first"]


def test_join_bucket_takes_the_first_source_whatever_the_order_it_arrives_in(tmp_path):
    a, b = digest(1), digest(2)
    got = join_one_bucket(tmp_path, {"s1": [a, b], "s2": [b]}, [((0, 3, 1), [a], 1.0), ((1, 0, 0), [a, b], 2.0)])
    assert got["s1"].get(a)[0] == 1.0 and got["s1"].get(b)[0] == 2.0
    assert len(got["s2"]) == 1 and got["s2"].get(b)[0] == 2.0


def test_a_vector_is_reused_only_for_its_full_hash(tmp_path):
    a = digest(1)
    twin = a[:32] + ("0" if a[32] != "0" else "1") + a[33:]  # the same 128-bit prefix, another text
    got = JoinedLookup([([a], np.ones((1, 4), np.float32))])
    assert a in got and twin not in got
    assert got.get_many([twin, a]).keys() == {a}
    assert join_one_bucket(tmp_path, {"s": [twin]}, [((0, 0, 0), [a], 1.0)]) == {}


def test_the_join_is_chosen_from_the_sizes():
    window = reuse_join.JOIN_MIN_RECORDS
    many = reuse_join.JOIN_MIN_VECTORS
    assert reuse_join.choose_join(many, window)
    assert not reuse_join.choose_join(many - 1, 10 * window)  # a small output: the index
    assert not reuse_join.choose_join(100 * many, window - 1)  # a few records: the index
    # a bucket holds about BUCKET_BYTES of vectors
    assert reuse_join.bucket_count(1_000_000, 384) == -(-1_000_000 * 384 * 4 // reuse_join.BUCKET_BYTES)
    assert reuse_join.bucket_count(0, 384) == 1
