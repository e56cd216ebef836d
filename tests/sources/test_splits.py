"""Splits: a file cut anywhere reads as the same records as the whole file.

For every target size over small tricky files (BOM, CRLF, blank lines,
multi-byte characters, quoted newlines, no final newline), the records of all
splits, concatenated, equal the records of the unsplit file: positions, ids,
texts and reasons included.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beamvec import records as r
from beamvec.records import RawRecord, ReadError, Shard, Split
from beamvec.sources import (
    ReaderConfig,
    list_shards,
    plan_splits,
    read_shard,
    read_split,
    splittable,
)

BOM = "\ufeff".encode()

TXT = BOM + (
    "first line\r\n"
    "\n"
    "  \r\n"
    "zweite Zeile — ünïcödé ✓ 日本語\n"
    "emoji 🚀🚀🚀 here\r\n"
    "\n\n"
    "bad \xff byte\n"
    "last line without a newline 🎉"
).encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff")

JSONL = BOM + (
    b'{"id": "a", "text": "first \xe2\x9c\x93"}\r\n'
    b"\n"
    b'{"id": 2, "text": "second"}\n'
    b"{not json}\n"
    b'{"id": "c", "text": "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", "x": [1, 2]}\n'
    b"   \n"
    b'{"id": {"o": 1}, "text": "bad id"}\n'
    b'{"text": "no id, no final newline"}'
)

CSV = BOM + (
    b"id,text,source\r\n"
    b'1,"a text\nover two lines, with a comma",web\r\n'
    b"\r\n"
    b"2,,empty\r\n"
    b"3,too,many,fields\r\n"
    b'4,"quoted ""inner"" quotes\r\nand a CRLF inside",web\r\n'
    b"   \r\n"
    b'5,third "row" unquoted,x\r\n'
    b"6,\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x9a\x80,web\r\n"
    b'7,"""",q\n'
    b'9,he said "hi,a\r\n10,and "bye,b\r\n'
    b"8,no final newline,web"
)

TSV = BOM + (
    b"id\ttext\tsource\n"
    b'1\t"unbalanced quote opens here\tx\n'
    b"\n"
    b"2\tsecond row \xc3\xa9\ty\r\n"
    b"\t\t\n"
    b'3\tthird "row"\tz\n'
    b"4\tlast"
)

FILES = {"txt": TXT, "jsonl": JSONL, "csv": CSV, "tsv": TSV}


def _shard(path: Path) -> Shard:
    (shard,) = list_shards([str(path)])
    return shard


def _all_splits(shard: Shard, target: int, config: ReaderConfig) -> tuple[list[Split], list[RawRecord | ReadError]]:
    splits = plan_splits(shard, config, None, target)
    return splits, [rec for split in splits for rec in read_split(split, config)]


@pytest.mark.parametrize("fmt", list(FILES))
def test_every_target_size_reads_the_same_records(tmp_path: Path, fmt: str) -> None:
    data = FILES[fmt]
    (tmp_path / f"f.{fmt}").write_bytes(data)
    shard = _shard(tmp_path / f"f.{fmt}")
    config = ReaderConfig()
    whole = list(read_shard(shard, config))
    assert len(whole) >= 5 and any(isinstance(rec, ReadError) for rec in whole)
    if fmt == "csv":  # two stray quotes join two lines into one bad row, split or not
        assert any(isinstance(rec, ReadError) and "joined 2 lines" in rec.detail for rec in whole)
    most = 1
    for target in range(1, len(data) + 2):
        splits, records = _all_splits(shard, target, config)
        assert records == whole, f"target {target}: {[(s.start, s.end, s.first_position) for s in splits]}"
        assert [s.index for s in splits] == list(range(len(splits)))
        assert all(s.count == len(splits) for s in splits)
        assert splits[0].start == 0 and splits[-1].end == (len(data) if len(splits) > 1 else -1)
        assert all(a.end == b.start for a, b in zip(splits, splits[1:], strict=False))
        most = max(most, len(splits))
    assert most >= 5  # small targets really did cut the file


@pytest.mark.parametrize("fmt", ["txt", "jsonl"])
def test_a_split_starting_mid_line_skips_it_and_reads_through_its_end(tmp_path: Path, fmt: str) -> None:
    """A record belongs to the split in which its first byte lies, wherever the cut falls."""
    data = FILES[fmt]
    (tmp_path / f"f.{fmt}").write_bytes(data)
    shard = _shard(tmp_path / f"f.{fmt}")
    whole = list(read_shard(shard, ReaderConfig()))
    starts = [0] + [i + 1 for i, byte in enumerate(data) if byte == ord("\n")]  # line starts
    number_at = {start: n for n, start in enumerate(starts, start=1)}
    for cut in range(1, len(data)):
        first_line = next(s for s in starts + [len(data)] if s >= cut)
        first_position = number_at.get(first_line, len(starts) + 1)
        head = Split(shard, 0, 2, 0, cut, 1)
        tail = Split(shard, 1, 2, cut, len(data), first_position)
        got = list(read_split(head, ReaderConfig())) + list(read_split(tail, ReaderConfig()))
        assert got == whole, f"cut at byte {cut}"


def test_csv_quoted_newlines_are_never_a_cut(tmp_path: Path) -> None:
    rows = "".join(f'{i},"line one of {i}\nline two, of {i}",s\n' for i in range(200))
    path = tmp_path / "q.csv"
    path.write_text("id,text,source\n" + rows)
    shard = _shard(path)
    splits = plan_splits(shard, ReaderConfig(), None, 500)
    assert len(splits) > 10
    texts = [rec.text for s in splits for rec in read_split(s, ReaderConfig())]
    assert texts == [f"line one of {i}\nline two, of {i}" for i in range(200)]
    # every cut is at the start of a row, never inside a quoted field
    data = path.read_bytes()
    assert all(data[s.start:].startswith(f"{s.first_position - 1},".encode()) for s in splits[1:])


def test_parquet_splits_are_row_group_ranges(tmp_path: Path) -> None:
    n = 5000
    table = pa.table({"id": pa.array(range(n), pa.int64()), "text": [f"text {i}" for i in range(n)]})
    path = tmp_path / "d.parquet"
    pq.write_table(table, path, row_group_size=700, compression="none")
    shard = _shard(path)
    whole = list(read_shard(shard, ReaderConfig()))
    groups = pq.ParquetFile(path).metadata.num_row_groups
    assert groups == 8
    for target in (1, 2_000, 10_000, 30_000, shard.size - 1):
        splits = plan_splits(shard, ReaderConfig(), None, target)
        got = [rec for s in splits for rec in read_split(s, ReaderConfig())]
        assert got == whole
        assert splits[0].start == 0 and splits[-1].end == (groups if len(splits) > 1 else -1)
        assert len(splits) > 1 or target == shard.size - 1
        assert all(a.end == b.start for a, b in zip(splits, splits[1:], strict=False))
        if target == 1:
            assert len(splits) == groups
            assert [s.first_position for s in splits] == [1 + 700 * i for i in range(groups)]
    assert whole[0].id == "0" and whole[-1].position == n


def test_small_compressed_or_unknown_size_files_are_one_split(tmp_path: Path) -> None:
    small = tmp_path / "s.txt"
    small.write_bytes(b"a\nb\n")
    shard = _shard(small)
    assert plan_splits(shard, ReaderConfig(), None, 1 << 20) == [Split.whole(shard)]
    packed = tmp_path / "big.txt.gz"
    packed.write_bytes(gzip.compress(b"".join(b"line %d\n" % i for i in range(10_000))))
    gz = _shard(packed)
    assert plan_splits(gz, ReaderConfig(), None, 100) == [Split.whole(gz)]
    assert splittable(shard, ReaderConfig()) and not splittable(gz, ReaderConfig())
    with pytest.raises(ValueError, match="compressed"):
        list(read_split(Split(gz, 0, 2, 0, 50, 1), ReaderConfig()))


def test_split_names_and_fingerprints() -> None:
    shard = Shard("/in/a.jsonl", "a.jsonl-0123456789", 1000, "v1")
    whole = Split.whole(shard)
    assert (whole.name, whole.fingerprint) == (shard.name, shard.fingerprint)
    a, b = Split(shard, 0, 2, 0, 500, 1), Split(shard, 1, 2, 500, 1000, 41)
    assert (a.name, b.name) == ("a.jsonl-0123456789.part-00000-of-00002", "a.jsonl-0123456789.part-00001-of-00002")
    assert len({a.fingerprint, b.fingerprint, whole.fingerprint}) == 3
    moved = Split(Shard("/in/a.jsonl", "a.jsonl-0123456789", 1000, "v2"), 1, 2, 500, 1000, 41)
    assert moved.fingerprint != b.fingerprint  # a changed file changes every split's fingerprint
    with pytest.raises(AttributeError):
        a.start = 3  # type: ignore[misc]


@pytest.mark.slow
def test_big_file_planning_counts_lines_exactly(tmp_path: Path) -> None:
    """A file several scan chunks long: positions of every split's first record are exact."""
    buf = io.BytesIO()
    for i in range(1, 400_001):
        buf.write(b"%d %s\n" % (i, b"x" * (i % 37)))
    path = tmp_path / "big.txt"
    path.write_bytes(buf.getvalue())
    shard = _shard(path)
    splits = plan_splits(shard, ReaderConfig(), None, 3_000_000)
    assert len(splits) >= 3
    for split in splits:
        first = next(iter(read_split(split, ReaderConfig())))
        assert first.position == split.first_position
        assert first.text.split(" ")[0] == str(split.first_position)  # line i holds "i ..."
    assert sum(1 for s in splits for _ in read_split(s, ReaderConfig())) == 400_000
    assert {rec.position for rec in read_split(splits[-1], ReaderConfig())} >= {400_000}
    assert r.CORRUPT_FILE not in {getattr(rec, "reason", None) for rec in read_shard(shard, ReaderConfig())}
