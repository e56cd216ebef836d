"""The output contract without Beam: commit records, manifests old and new,
which shards are complete, what finalize writes."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beamvec.contract import (
    INLINE_PARTS,
    MANIFEST,
    MISSING,
    SUCCESS,
    CommitRecord,
    Description,
    Footer,
    Manifest,
    RunConfig,
    ShardCounts,
    complete_shards,
    dead_letter_path,
    finalize,
    merge_manifest,
    read_manifest,
    read_state,
    stale_parts,
    vector_path,
)
from beamvec.errors import UsageError
from beamvec.write.sink import FOOTER_KEY, Output

DESC = Description("local", "all-MiniLM-L6-v2", 384, None, True, config_fingerprint="f" * 16)


def _record(name: str, read: int = 3, **kw) -> CommitRecord:
    counts = ShardCounts(read=read, embedded=read - 1, dead_lettered=1,
                         dead_letters_by_reason={"empty_text": 1})
    return CommitRecord(name=name, input=f"in/{name}.jsonl", input_fingerprint=f"fp-{name}",
                        counts=counts, config_fingerprint="f" * 16, **kw)


@pytest.fixture
def output() -> Output:
    return Output(f"memory://contract-{uuid.uuid4().hex[:8]}/out")


def test_counts_add_up_reasons_included() -> None:
    a = ShardCounts(read=2, embedded=1, dead_lettered=1, dead_letters_by_reason={"empty_text": 1})
    b = ShardCounts(read=3, embedded=1, dead_lettered=2,
                    dead_letters_by_reason={"empty_text": 1, "duplicate_id": 1})
    total = a + b
    assert (total.read, total.embedded, total.dead_lettered) == (5, 2, 3)
    assert total.dead_letters_by_reason == {"duplicate_id": 1, "empty_text": 2}


def test_a_small_manifest_keeps_its_records_in_the_json(output: Output) -> None:
    manifest = merge_manifest(None, [_record("a"), _record("b")], RunConfig(inputs=("in/*",)), DESC, None)
    assert finalize(output, manifest, ["a", "b"]) == []
    raw = json.loads(output.fs.cat(output.path(MANIFEST)))
    assert set(raw["shards"]) == {"a", "b"} and raw["totals"]["read"] == 6
    back = read_manifest(output)
    assert back is not None and dict(back.shards) == dict(manifest.shards) and back.runs == manifest.runs
    assert output.fs.exists(output.path(SUCCESS))


def test_a_large_manifest_moves_its_records_to_a_table(output: Output) -> None:
    records = [_record(f"s{i:05d}") for i in range(INLINE_PARTS + 1)]
    manifest = merge_manifest(None, records, RunConfig(), DESC, None)
    finalize(output, manifest, [r.name for r in records])
    raw = json.loads(output.fs.cat(output.path(MANIFEST)))
    assert "shards" not in raw and raw["beamvec_manifest"] == 2
    assert len(json.dumps(raw)) < 4_000  # a summary, whatever the shard count
    back = read_manifest(output)
    assert back is not None and dict(back.shards) == {r.name: r for r in records}
    # a second write replaces the table and removes the first
    finalize(output, merge_manifest(back, [_record("extra")], RunConfig(), DESC, None), [])
    assert len(output.fs.find(output.path("_commits"))) == 1
    assert len(read_manifest(output).shards) == INLINE_PARTS + 2


def test_a_0_1_manifest_still_reads(output: Output) -> None:
    old = {
        "beamvec_manifest": 1, "backend": "local", "model": "all-MiniLM-L6-v2", "dimension": 384,
        "config_fingerprint": "abc", "config": {"inputs": ["x/*.jsonl"]},
        "shards": {"x-1": {"name": "x-1", "input": "x/1.jsonl", "input_fingerprint": "q", "read": 2,
                           "embedded": 2, "dead_lettered": 0, "status": "committed"}},
        "runs": [{"finished_at": "2026-11-01T00:00:00Z", "shards": 1, "read": 2}],
    }
    output.write_bytes(output.path(MANIFEST), json.dumps(old).encode())
    manifest = read_manifest(output)
    rec = manifest.shards["x-1"]
    assert rec.counts.read == 2 and rec.config_fingerprint == "abc" and rec.parts == 1
    assert complete_shards(manifest.shards.values()) == {"x-1": "q"}


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"{not json", b'{"shards": [1]}'])
def test_a_damaged_manifest_is_one_line_naming_it(output: Output, body: bytes) -> None:
    output.write_bytes(output.path(MANIFEST), body)
    with pytest.raises(UsageError) as info:
        read_manifest(output)
    assert MANIFEST in str(info.value) and "\n" not in str(info.value)


def test_a_shard_is_complete_only_with_every_part_of_one_input_version() -> None:
    parts = [_record(f"big.part-{i:05d}-of-00003", shard="big", part=i, parts=3, shard_fingerprint="v2")
             for i in range(3)]
    assert complete_shards(parts) == {"big": "v2"}
    assert complete_shards(parts[:2]) == {}
    old = CommitRecord(name="big", input="in/big.jsonl", input_fingerprint="v1", counts=ShardCounts())
    manifest = Manifest(DESC, RunConfig(), {r.name: r for r in [*parts, old]})
    # the whole-file record of the previous version is stale once the file is re-cut
    assert stale_parts(manifest, {"big": "v2"}) == ["big"]
    failed = _record("f", status="failed")
    assert "f" not in complete_shards([failed])


def _parquet(output: Output, path: str, rows: int, rec: CommitRecord) -> int:
    """A Parquet file of ``rows`` rows with ``rec``'s footer; returns its size."""
    table = pa.table({"id": [str(i) for i in range(rows)]})
    footer = json.dumps(Footer(DESC, rec).to_json()).encode()
    with output.fs.open(path, "wb") as fh:
        pq.write_table(table.replace_schema_metadata({FOOTER_KEY: footer}), fh)
    return int(output.fs.size(path))


@pytest.mark.parametrize("letters", ["good", "no size recorded", "short", "missing"])
def test_a_part_stands_committed_only_with_its_dead_letters(output: Output, letters: str) -> None:
    """The manifest's record, its vector file and its dead-letter file (one
    dead letter, see _record) must agree; a manifest from before
    dead_letter_bytes was recorded is checked by the file's row count."""
    rec = _record("a")
    vectors = _parquet(output, vector_path(output, "a"), rec.counts.embedded, rec)
    dead = dead_letter_path(output, "a")
    size = _parquet(output, dead, 1, rec)
    if letters == "short":
        assert _parquet(output, dead, 0, rec) != size
    elif letters == "missing":
        output.fs.rm(dead)
    recorded = 0 if letters == "no size recorded" else size
    rec = replace(rec, vector_bytes=vectors, dead_letter_bytes=recorded)
    finalize(output, merge_manifest(None, [rec], RunConfig(), DESC, None), ["a"])
    state = read_state(output)
    if letters in ("good", "no size recorded"):
        assert dict(state.committed) == {"a": replace(rec, dead_letter_bytes=size)} and not state.damaged
    else:
        assert "a" not in state.committed
        why = {"short": "it holds 0 rows where its part's record says 1", "missing": MISSING}[letters]
        assert dict(state.damaged) == {dead: why}
        # The reuse index wants only the vectors, which are fine: no read of dead letters.
        assert read_state(output, check_letters=False).committed == {"a": rec}
