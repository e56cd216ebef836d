"""Reuse as a join in the pipeline, on the DirectRunner.

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

from beamvec.commands import plan as plan_command
from beamvec.contract import read_state
from beamvec.driver import preflight, reuse_choice
from beamvec.driver.resolve import parse_options, resolve_inputs, split_work
from beamvec.pipeline import reuse_join
from beamvec.pipeline.reuse_join import (
    JoinBucket,
    JoinedLookup,
    JoinSpec,
    found_batches,
    positions_of,
)
from beamvec.pipeline.reuse_stage import (
    HASHES,
    Stage,
    bucket_count,
    by_bucket,
    matrix_of,
    vector_rows,
    vector_schema,
)
from beamvec.records import content_hash
from beamvec.route import lookup
from beamvec.write.sink import Output

from helpers import assert_reconciled, beam_run, read_output, vectors_by_id
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
    night2_reusing_night1,
    plan,
    want,
    write_jsonl,
)


@pytest.fixture
def joined(monkeypatch):
    """The sizes call for the join on small data, and no sample of the order
    is taken (in outputs this small every row is a row group's span from the
    next: any order looks like the output's to the sample)."""
    monkeypatch.setattr(reuse_choice, "JOIN_MIN_VECTORS", 1)
    monkeypatch.setattr(reuse_choice, "JOIN_MIN_RECORDS", 0)
    monkeypatch.setattr(reuse_choice, "SAMPLE_SHARDS", 0)


def forbid_index(monkeypatch) -> None:
    """From now on, `plan` or a run's process that asks for the in-process index fails."""

    def no_index(self):
        if self.reuse:
            raise AssertionError("the in-process index was asked although the run joins")
        return lookup.NoLookup()

    def no_plan_index(*args, **kwargs):
        raise AssertionError("plan built the in-process index although the run joins")

    def no_preflight_index(*args, **kwargs):
        raise AssertionError("the preflight built the in-process index although the run joins")

    monkeypatch.setattr(lookup.Lookups, "index", no_index)
    monkeypatch.setattr(plan_command, "reuse_lookup", no_plan_index)
    monkeypatch.setattr(preflight, "reuse_lookup", no_preflight_index)


def forbid_join(monkeypatch) -> None:
    """From now on, a split whose hashes the join stages fails `plan` or the run."""

    def no_join(self, split):
        raise AssertionError("the join ran although the records come in the output's order")

    monkeypatch.setattr(reuse_join.SplitHashes, "process", no_join)


def run_joined(capsys, emu, monkeypatch, args: list[str], by: str = "join") -> tuple[dict, dict, dict[str, int]]:  # noqa: F811
    """plan, then run, both only by the join (or only by the index, ``by``):
    (plan, the run's history line, texts billed)."""
    (forbid_index if by == "join" else forbid_join)(monkeypatch)
    predicted = plan(capsys, args)
    assert predicted["reuse_by"] == by, predicted["reuse_why"]
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_same_order_reexport_keeps_the_index_above_the_thresholds_and_bills_nothing(
    emu, joined, monkeypatch, tmp_path, capsys  # noqa: F811
):
    output = tmp_path / "out"
    code, _, err = beam_run(capsys, *gemini(emu, night1(tmp_path / "n1"), output))
    assert code == 0, err

    monkeypatch.setattr(reuse_choice, "SAMPLE_SHARDS", 3)  # the sample decides
    args = gemini(emu, night1_renamed(tmp_path / "same"), output, "--prune")
    predicted, run, sent = run_joined(capsys, emu, monkeypatch, args, by="index")
    assert sent == {}
    assert (run["sent"], run["reused"]) == (0, 2000)
    assert_predicted(predicted, run, sent)
    out = read_output(str(output))
    assert_reconciled(out)
    got = vectors_by_id(out)
    assert set(got) == set(IDS) and len(out["vectors"]) == 3
    for i in IDS:
        np.testing.assert_allclose(got[i], want(NIGHT1[i]), atol=1e-6)


@pytest.mark.slow
def test_shuffled_reexport_into_a_new_output_reusing_night1(emu, joined, monkeypatch, tmp_path, capsys):  # noqa: F811
    night2_reusing_night1(emu, tmp_path, capsys, lambda args: run_joined(capsys, emu, monkeypatch, args))


@pytest.mark.slow
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


def test_the_preflight_of_a_run_that_joins_picks_the_text_the_index_would_without_building_it(
    emu, monkeypatch, tmp_path, capsys  # noqa: F811
):
    """The first text to send, looked for in the sources' hash columns, is
    the index's: a changed text, never a reusable one; and with nothing to
    send, both say so and that the scan saw all the work."""
    output = tmp_path / "out"
    assert beam_run(capsys, *gemini(emu, night1(tmp_path / "n1"), output))[0] == 0

    def first(inputs_glob: str, joined: bool):
        inputs = resolve_inputs(parse_options(gemini(emu, inputs_glob, output)))
        out = Output(str(output))
        state = read_state(out)
        todo = split_work(inputs.shards, state, inputs.description.config_fingerprint, False).todo
        record, shard, all_seen = preflight.first_text_to_send(out, inputs, todo, True, state, joined=joined)
        return (record and record.text, shard and shard.name, all_seen)

    shuffled = night2(tmp_path / "n2")
    by_index = first(shuffled, joined=False)
    forbid_index(monkeypatch)
    assert first(shuffled, joined=True) == by_index
    assert by_index[0] in {NIGHT2[i] for i in CHANGED} and by_index[2] is False
    assert first(night1_renamed(tmp_path / "same"), joined=True) == (None, None, True)


# -- the join's pieces ----------------------------------------------------------------


def digest(n: int) -> str:
    return content_hash(f"text {n}")


def join_one_bucket(tmp_path: Path, keys: dict[str, list[str]], vectors: list[tuple[tuple[int, int, int], list[str], float]]):
    """Run JoinBucket over staged files as the pipeline would, in two buckets:
    {split: JoinedLookup} (the splits with hits)."""
    buckets = 2
    spec = JoinSpec(Stage(str(tmp_path / "stage")), buckets, 4, "fp")
    stage = spec.stage
    for split, hashes in keys.items():
        stage.write(stage.keys(split), HASHES, by_bucket(pa.table({"content_hash": hashes}), buckets))
    for rank, hashes, value in vectors:
        table = vector_rows(hashes, np.full((len(hashes), 4), value, np.float32))
        stage.write(stage.vectors(rank), vector_schema(4), by_bucket(table, buckets))
    positions = positions_of(keys)
    results = []
    for ranks in ([r for r, _, _ in vectors], [r for r, _, _ in vectors][::-1]):  # whatever order the runner gives
        for bucket in range(buckets):
            assert list(JoinBucket(spec).process(bucket, positions, ranks)) == [bucket]
        got = {}
        for split, at in positions.items():
            found = JoinedLookup((b.column(0).to_pylist(), matrix_of(b, 4)) for b in found_batches(stage, at, buckets))
            if len(found):
                got[split] = {h: float(found.get(h)[0]) for h in keys[split] if h in found}
        results.append(got)
    assert results[0] == results[1]
    return results[0]


def test_join_bucket_takes_the_first_source_whatever_the_order_it_arrives_in(tmp_path):
    a, b = digest(1), digest(2)
    got = join_one_bucket(tmp_path, {"s1": [a, b], "s2": [b]}, [((0, 3, 1), [a], 1.0), ((1, 0, 0), [a, b], 2.0)])
    assert got == {"s1": {a: 1.0, b: 2.0}, "s2": {b: 2.0}}


def test_a_vector_is_reused_only_for_its_full_hash(tmp_path):
    a = digest(1)
    twin = a[:32] + ("0" if a[32] != "0" else "1") + a[33:]  # the same 128-bit prefix, another text
    got = JoinedLookup([([a], np.ones((1, 4), np.float32))])
    assert a in got and twin not in got
    assert got.get_many([twin, a]).keys() == {a}
    assert join_one_bucket(tmp_path, {"s": [twin]}, [((0, 0, 0), [a], 1.0)]) == {}


def test_staged_files_hold_a_batch_per_bucket_so_readers_need_no_reference(tmp_path):
    """Every bucket has its batch in a split's key file, empty or not: the
    join finds a split's hashes of bucket b at batch b, told nothing else."""
    hashes = [digest(n) for n in range(50)]
    stage = Stage(str(tmp_path / "stage"))
    stage.write(stage.keys("k"), HASHES, by_bucket(pa.table({"content_hash": hashes}), 7))
    read = [stage.read(stage.keys("k"), b).column(0).to_pylist() for b in range(7)]
    assert sorted(h for part in read for h in part) == sorted(hashes)
    for b, part in enumerate(read):
        assert all(int(h[:8], 16) % 7 == b for h in part)  # bucket = first 32 bits mod buckets


def test_each_step_of_the_join_moves_the_progress_the_run_liveness_watches(tmp_path):
    """A join of millions of vectors writes no record for minutes: its steps
    must count, or the lease's stall detection stops the run."""
    from beamvec.progress import PROGRESS

    PROGRESS.reset()
    spec = JoinSpec(Stage(str(tmp_path / "stage")), 1, 4, "fp")
    joining = JoinBucket(spec)
    joining.setup()
    spec.stage.write(spec.stage.keys("k"), HASHES, [pa.table({"content_hash": [digest(1)]})])
    spec.stage.write(spec.stage.vectors((0, 0, 0)), vector_schema(4), [vector_rows([digest(1)], np.ones((1, 4), np.float32))])
    before = PROGRESS.read()[reuse_join.JOIN_STEPS]
    assert list(joining.process(0, {"k": 0}, [(0, 0, 0)])) == [0]
    assert PROGRESS.read()[reuse_join.JOIN_STEPS] >= before + 2  # a key batch and a vector batch read
    PROGRESS.reset()


def test_the_join_is_chosen_from_the_sizes():
    window = reuse_choice.JOIN_MIN_RECORDS
    many = reuse_choice.JOIN_MIN_VECTORS
    assert reuse_choice.choose_join(many, window)
    assert not reuse_choice.choose_join(many - 1, 10 * window)  # a small output: the index
    assert not reuse_choice.choose_join(100 * many, window - 1)  # a few records: the index
    # a bucket holds about BUCKET_BYTES of vectors: 1,000,000 x 384 float32 is 1,536,000,000 bytes
    assert bucket_count(1_000_000, 4 * 384) == -(-1_536_000_000 // (64 * 1024 * 1024)) == 23
    assert bucket_count(0, 4 * 384) == 1


def test_a_sample_in_the_sources_order_is_in_order_and_a_shuffled_one_is_not():
    span = reuse_choice.ROW_GROUP_ROWS
    n = 3 * 4 * span
    rows = {digest(k): (k // (4 * span), k % (4 * span)) for k in range(n)}  # 3 files of 4 row groups
    same = [[digest(k) for k in range(start, start + 64)] for start in (0, 4 * span - 10, 9 * span)]
    assert reuse_choice.in_order(same, rows)  # one run crosses a file's end
    swapped = [[digest(k ^ 1) for k in run] for run in [list(range(s, s + 64)) for s in (0, 5000, 20000)]]
    assert reuse_choice.in_order(swapped, rows)  # requests in flight reorder neighbours
    shuffled = [[digest((k * 7919 + s) % n) for k in range(64)] for s in range(3)]
    assert not reuse_choice.in_order(shuffled, rows)  # 7,919 rows apart: another row group each time
    assert not reuse_choice.in_order(same, {})  # nothing found: no sign of order
