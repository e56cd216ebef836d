"""VectorIndex over small Parquet files: hits, misses, prefix collisions,
row-group reads, rewritten files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from beamvec.records import Embedded, Record, content_hash
from beamvec.route.lookup import VectorIndex
from beamvec.write.sink import Output, vector_table

from fakes import (
    DIM,
    vec,
)

# -- VectorIndex ---------------------------------------------------------------------


def write_vectors(path: Path, rows: Sequence[tuple[str, str, np.ndarray]], dim: int = DIM,
                  row_group: int | None = None) -> None:
    """(id, content hash, vector) rows in the output's vector format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = vector_table(
        [Embedded(Record(i, "t", h, 1, False, n + 1), v) for n, (i, h, v) in enumerate(rows)], "in", dim
    )
    pq.write_table(table, path, row_group_size=row_group)


def test_vector_index_hits_and_misses_across_files_and_row_groups(tmp_path):
    out = Output(str(tmp_path))
    hashes = [content_hash(f"text {i}") for i in range(100)]
    write_vectors(tmp_path / "a.parquet", [(f"a{i}", hashes[i], vec(i)) for i in range(60)], row_group=16)
    write_vectors(tmp_path / "b.parquet", [(f"b{i}", hashes[i], vec(i)) for i in range(60, 100)], row_group=16)
    write_vectors(tmp_path / "wide.parquet", [("w", content_hash("wide"), vec(0, 8))], dim=8)
    paths = [str(tmp_path / n) for n in ("a.parquet", "b.parquet", "wide.parquet")]
    index = VectorIndex.build([(out, paths)], DIM)
    assert len(index) == 100  # the 8-dim file is not ours
    assert pq.ParquetFile(tmp_path / "a.parquet").num_row_groups == 4
    for i in (0, 15, 16, 59, 60, 99, 47):
        np.testing.assert_array_equal(index.get(hashes[i]), vec(i))
        assert hashes[i] in index
    for missing in (content_hash("text 100"), content_hash("wide")):
        assert index.get(missing) is None and missing not in index
    assert len(VectorIndex.build([], DIM)) == 0 and VectorIndex(DIM).get(hashes[0]) is None


def test_a_64_bit_prefix_collision_is_resolved_by_the_full_hash(tmp_path):
    out = Output(str(tmp_path))
    prefix = content_hash("collide")[:16]
    first, second, absent = (prefix + c * 48 for c in "abc")
    write_vectors(tmp_path / "one.parquet", [("1", first, vec(1))])
    write_vectors(tmp_path / "two.parquet", [("2", second, vec(2))])
    index = VectorIndex.build([(out, [str(tmp_path / "one.parquet"), str(tmp_path / "two.parquet")])], DIM)
    np.testing.assert_array_equal(index.get(first), vec(1))
    np.testing.assert_array_equal(index.get(second), vec(2))
    assert index.get(absent) is None  # same 64 bits, another text: a miss, never a wrong vector
    # ``in`` (what plan asks) looks at the 64-bit key only: a collision there is
    # a 1 in 2**64 chance per pair of texts, and the run still verifies.
    assert absent in index


def test_a_window_in_random_order_reads_each_row_group_once_and_pins_none(tmp_path, monkeypatch):
    """A re-export that shuffled the records: looked up one by one with a
    cache of one row group, nearly every hit reads a row group; looked up as
    one window, each row group is read once. The vectors are copies, so rows
    waiting for their shard's flush do not keep whole row groups alive."""
    out = Output(str(tmp_path))
    hashes = [content_hash(f"text {i}") for i in range(256)]
    write_vectors(tmp_path / "a.parquet", [(f"a{i}", hashes[i], vec(i)) for i in range(128)], row_group=16)
    write_vectors(tmp_path / "b.parquet", [(f"b{i}", hashes[i], vec(i)) for i in range(128, 256)], row_group=16)
    paths = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    shuffled = list(np.random.default_rng(3).permutation(256))
    wanted = [hashes[i] for i in shuffled] + [content_hash("never embedded")]

    one_by_one = VectorIndex.build([(out, paths)], DIM)
    monkeypatch.setattr(one_by_one, "_cache_rows", 16)  # room for one row group
    for h in wanted:
        one_by_one.get(h)
    assert one_by_one.reads > 200  # 256 hits over 16 row groups, in random order

    window = VectorIndex.build([(out, paths)], DIM)
    monkeypatch.setattr(window, "_cache_rows", 16)
    found = window.get_many(wanted)
    assert window.reads == 16  # 2 files x 8 row groups of 16
    assert sorted(found) == sorted(hashes)
    for i in shuffled:
        np.testing.assert_array_equal(found[hashes[i]], vec(i))
        assert found[hashes[i]].base is None  # its own memory, not a view of a row group


def test_a_file_rewritten_after_the_index_was_built_is_a_miss(tmp_path):
    out = Output(str(tmp_path))
    path = tmp_path / "v.parquet"
    hashes = [content_hash(f"text {i}") for i in range(4)]
    write_vectors(path, [(str(i), hashes[i], vec(i)) for i in range(4)])
    index = VectorIndex.build([(out, [str(path)])], DIM)
    # the same texts in another order, and one replaced
    write_vectors(path, [("3", hashes[3], vec(3)), ("x", content_hash("new"), vec(9)),
                         ("2", hashes[2], vec(2)), ("1", hashes[1], vec(1))])
    for moved in (0, 1, 3):  # their rows now hold other texts
        assert index.get(hashes[moved]) is None
    np.testing.assert_array_equal(index.get(hashes[2]), vec(2))  # still at its row: right vector
    path.unlink()
    fresh = VectorIndex(DIM)
    assert fresh.get(hashes[2]) is None
    assert VectorIndex.build([(out, [str(path)])], DIM).get(hashes[2]) is None  # removed: skipped
