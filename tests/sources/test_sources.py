"""Shard listing and readers, against real files, memory://, and S3/GCS protocol servers.

No fsspec mocks: every case writes real bytes (compressed with the real codecs)
and reads them back through `list_shards` / `read_shard`.
"""

from __future__ import annotations

import bz2
import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import logging
import pickle
import random
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from beamvec import records as r
from beamvec.records import RawRecord, ReadError, Shard, line_id
from beamvec.sources import (
    FORMATS,
    NoInputError,
    ReaderConfig,
    detect_format,
    list_shards,
    read_shard,
)

pytest_plugins = ["servers"]  # s3_server, s3_bucket, gcs_server, gcs_bucket

COMPRESSIONS: dict[str | None, str] = {None: "", "gzip": ".gz", "zstd": ".zst", "bz2": ".bz2"}
EXT = {"txt": ".txt", "jsonl": ".jsonl", "csv": ".csv", "tsv": ".tsv", "parquet": ".parquet"}

ROWS = [
    {"id": "a1", "text": "first text", "lang": "en"},
    {"id": "a2", "text": "zweiter Text — ünïcödé ✓ 日本語", "lang": "de"},
    {"id": "a3", "text": 'third, with "quotes", commas; and an emoji 🚀', "lang": "en"},
]


# --------------------------------------------------------------------------- helpers


def compress(data: bytes, compression: str | None) -> bytes:
    if compression == "gzip":
        return gzip.compress(data)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    if compression == "bz2":
        return bz2.compress(data)
    return data


def encode(fmt: str, rows: list[dict[str, Any]]) -> bytes:
    """The bytes of a well-formed file of `rows` in `fmt`."""
    if fmt == "txt":
        return "".join(row["text"] + "\n" for row in rows).encode()
    if fmt == "jsonl":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().encode()
    if fmt == "tsv":
        lines = ["\t".join(rows[0])] + ["\t".join(str(v) for v in row.values()) for row in rows]
        return ("\n".join(lines) + "\n").encode()
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def read(path: str | Path, config: ReaderConfig | None = None, **options: Any) -> list[RawRecord | ReadError]:
    """All records of the one shard a path lists as."""
    (shard,) = list_shards([str(path)], options or None)
    return list(read_shard(shard, config or ReaderConfig(), options or None))


def shard_of(path: Path) -> Shard:
    (shard,) = list_shards([str(path)])
    return shard


def good(records: list[RawRecord | ReadError]) -> list[RawRecord]:
    return [rec for rec in records if isinstance(rec, RawRecord)]


def err(rec: RawRecord | ReadError) -> str | None:
    """The reason a record could not be read; None for a record that was."""
    return rec.reason if isinstance(rec, ReadError) else None


@pytest.fixture
def memroot() -> Iterator[str]:
    """A private folder on the process-wide memory:// filesystem."""
    root = f"/bv-{uuid.uuid4().hex[:12]}"
    fs = fsspec.filesystem("memory")
    yield root
    if fs.exists(root):
        fs.rm(root, recursive=True)


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a/b.txt", ("txt", None)),
        ("a/b.TXT", ("txt", None)),
        ("s3://b/k.jsonl", ("jsonl", None)),
        ("x.ndjson.gz", ("jsonl", "gzip")),
        ("x.json.zst", ("jsonl", "zstd")),
        ("gs://b/x.csv.bz2", ("csv", "bz2")),
        ("x.tsv", ("tsv", None)),
        ("memory:///d/x.parquet", ("parquet", None)),
        ("dir.v2/part.0001.jsonl.gz", ("jsonl", "gzip")),
    ],
)
def test_detect_format_from_extension(path: str, expected: tuple[str, str | None]) -> None:
    assert detect_format(path) == expected


def test_detect_format_override_keeps_compression_from_the_extension() -> None:
    assert detect_format("part-0000", "jsonl") == ("jsonl", None)
    assert detect_format("part-0000.gz", "csv") == ("csv", "gzip")
    assert detect_format("notes.md", "txt") == ("txt", None)


def test_detect_format_unknown_extension_says_what_to_do() -> None:
    with pytest.raises(ValueError, match=r"notes\.md.*--format"):
        detect_format("s3://b/notes.md")
    with pytest.raises(ValueError, match="format"):
        detect_format("part-0000.gz")
    with pytest.raises(ValueError, match="xml"):
        detect_format("a.txt", "xml")


@pytest.mark.parametrize("compression", list(COMPRESSIONS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_and_compression_on_local_disk(
    tmp_path: Path, fmt: str, compression: str | None
) -> None:
    path = write(tmp_path / f"part{EXT[fmt]}{COMPRESSIONS[compression]}", compress(encode(fmt, ROWS), compression))
    shard = shard_of(path)
    records = list(read_shard(shard, ReaderConfig()))
    assert [err(rec) for rec in records] == [None] * len(ROWS)
    assert [rec.text for rec in records] == [row["text"] for row in ROWS]
    assert [rec.position for rec in records] == [1, 2, 3]
    if fmt == "txt":
        assert [rec.id for rec in records] == [line_id(shard.name, i) for i in (1, 2, 3)]
        assert all(rec.metadata == {} for rec in records)
    else:
        assert [rec.id for rec in records] == [row["id"] for row in ROWS]
        assert [rec.metadata for rec in records] == [{"lang": row["lang"]} for row in ROWS]


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_override_reads_files_without_a_known_extension(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path / "part-00000.gz", compress(encode(fmt, ROWS), "gzip"))
    records = read(path, ReaderConfig(format=fmt))
    assert [rec.text for rec in records] == [row["text"] for row in ROWS]


@pytest.mark.parametrize("compression", list(COMPRESSIONS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_file_yields_nothing(tmp_path: Path, fmt: str, compression: str | None) -> None:
    ext = EXT[fmt] + COMPRESSIONS[compression]
    assert read(write(tmp_path / f"zero-bytes{ext}", b"")) == []
    if compression:  # a valid stream of zero bytes
        assert read(write(tmp_path / f"empty-stream{ext}", compress(b"", compression))) == []


def test_gzip_with_several_members_reads_them_all(tmp_path: Path) -> None:
    data = gzip.compress(b"one\ntwo\n") + gzip.compress(b"three\n")
    assert [rec.text for rec in read(write(tmp_path / "m.txt.gz", data))] == ["one", "two", "three"]


def test_zstd_with_several_frames_reads_them_all(tmp_path: Path) -> None:
    """pzstd and `cat a.zst b.zst` make multi-frame files; fsspec's own reader stops at frame one."""
    zc = zstandard.ZstdCompressor()
    data = zc.compress(b"one\ntwo\n") + zc.compress(b"three\n") + zc.compress(b"four\n")
    assert [rec.text for rec in read(write(tmp_path / "m.txt.zst", data))] == ["one", "two", "three", "four"]


# --------------------------------------------------------------------------- txt


def test_txt_skips_blank_lines_and_keeps_line_numbers(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbffirst\r\n\n   \n\t\r\nsecond  \n\xe3\x80\x80\nlast without newline"
    shard = shard_of(write(tmp_path / "t.txt", data))
    records = list(read_shard(shard, ReaderConfig()))
    assert [(rec.position, rec.text) for rec in records] == [
        (1, "first"),  # BOM and CR dropped
        (5, "second  "),  # inner and trailing spaces kept: normalization is prepare's job
        (7, "last without newline"),
    ]
    assert [rec.id for rec in records] == [f"{shard.name}:1", f"{shard.name}:5", f"{shard.name}:7"]


def test_txt_invalid_utf8_is_one_dead_record_not_a_crash(tmp_path: Path) -> None:
    records = read(write(tmp_path / "t.txt", b"good\nbad \xff\xfe bytes\nalso good\n"))
    assert [rec.text for rec in good(records)] == ["good", "also good"]
    (bad,) = [rec for rec in records if err(rec)]
    assert err(bad) == r.INVALID_UTF8
    assert bad.position == 2
    assert bad.id and bad.id.endswith(":2")
    assert "\\xff" in bad.raw and "utf-8" in bad.detail


def test_txt_other_encoding(tmp_path: Path) -> None:
    records = read(write(tmp_path / "t.txt", "café\nnaïve\n".encode("latin-1")), ReaderConfig(encoding="latin-1"))
    assert [rec.text for rec in records] == ["café", "naïve"]
    with pytest.raises(ValueError, match="ASCII-compatible"):
        read(tmp_path / "t.txt", ReaderConfig(encoding="utf-16"))


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_huge_lines_are_read_whole(tmp_path: Path, compression: str | None) -> None:
    huge = "word " * 1_000_000  # 5 MB on one line
    data = f"short\n{huge}\n".encode()
    records = read(write(tmp_path / f"h.txt{COMPRESSIONS[compression]}", compress(data, compression)))
    assert [len(rec.text) for rec in records] == [5, len(huge)]
    jsonl = json.dumps({"id": "big", "text": huge}).encode() + b"\n"
    (rec,) = read(write(tmp_path / f"h.jsonl{COMPRESSIONS[compression]}", compress(jsonl, compression)))
    assert rec.text == huge and rec.id == "big"


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv", "parquet"])
def test_reading_streams_instead_of_loading_the_file(tmp_path: Path, fmt: str) -> None:
    n = 16_000  # 4 MB of text; a reader that loads it whole peaks far above 1.5 MB
    rows = [{"id": str(i), "text": f"{i} " + "y" * 240} for i in range(n)]
    if fmt == "parquet":
        path = tmp_path / "big.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=1000, compression="none")
        shard = shard_of(path)
    else:
        shard = shard_of(write(tmp_path / f"big{EXT[fmt]}.gz", gzip.compress(encode(fmt, rows), 1)))
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_shard(shard, ReaderConfig()))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < 1_500_000, f"peak {peak} bytes for a {n * 250 // 1_000_000} MB file"


# --------------------------------------------------------------------------- jsonl


def test_jsonl_every_bad_case_is_one_record_with_a_reason(tmp_path: Path) -> None:
    lines = [
        b'{"id": "ok", "text": "fine", "title": "T", "tags": ["x"], "n": 1}',
        b"",
        b"   ",
        b"{not json",
        b"[1, 2]",
        b'"just a string"',
        b'{"id": "m", "body": "no text field"}',
        b'{"id": "n", "text": null}',
        b'{"id": 7, "text": 42}',
        b'{"id": "bytes", "text": "caf\xe9"}',
        b'{"id": "s", "text": "lone \\udc80 surrogate"}',
        b'{"id": null, "text": "id is null"}',
        b'{"text": "pair \\ud83d\\ude80 is fine"}',
        b'{"id": "meta", "text": "x", "meta": {"k": "\\ud800"}}',
    ]
    path = write(tmp_path / "d.jsonl", b"\n".join(lines) + b"\n")
    shard = shard_of(path)
    records = list(read_shard(shard, ReaderConfig(title_field="title")))
    got = [(rec.position, rec.id, err(rec)) for rec in records]
    assert got == [
        (1, "ok", None),
        (4, f"{shard.name}:4", r.INVALID_JSON),
        (5, f"{shard.name}:5", r.INVALID_ROW),
        (6, f"{shard.name}:6", r.INVALID_ROW),
        (7, "m", r.MISSING_TEXT),
        (8, "n", r.MISSING_TEXT),
        (9, "7", r.NON_STRING_TEXT),
        (10, f"{shard.name}:10", r.INVALID_UTF8),
        (11, "s", r.INVALID_UTF8),
        (12, f"{shard.name}:12", None),
        (13, f"{shard.name}:13", None),
        (14, "meta", r.INVALID_UTF8),
    ]
    ok = records[0]
    assert (ok.text, ok.title, ok.metadata) == ("fine", "T", {"tags": ["x"], "n": 1})
    assert '"text": 42' in records[6].raw and "int" in records[6].detail
    assert records[10].text == "pair 🚀 is fine"
    for rec in records[1:9]:
        assert rec.detail and len(rec.raw) <= 201
    assert "{not json" in records[1].raw


def test_jsonl_raw_excerpt_is_short_for_huge_bad_lines(tmp_path: Path) -> None:
    records = read(write(tmp_path / "d.jsonl", b'{"text": "' + b"x" * 1_000_000 + b"\n"))
    (rec,) = records
    assert err(rec) == r.INVALID_JSON and len(rec.raw) <= 201


def test_jsonl_custom_fields(tmp_path: Path) -> None:
    data = b'{"doc_id": 5, "body": "hello", "heading": "H", "id": "kept as metadata"}\n'
    (rec,) = read(write(tmp_path / "d.jsonl", data), ReaderConfig(id_field="doc_id", text_field="body", title_field="heading"))
    assert (rec.id, rec.text, rec.title, rec.metadata) == ("5", "hello", "H", {"id": "kept as metadata"})


# --------------------------------------------------------------------------- csv / tsv


def test_csv_rows_multiline_fields_bad_rows_and_bad_bytes(tmp_path: Path) -> None:
    data = (
        b"\xef\xbb\xbfid,text,source\r\n"
        b'1,"a text\nover two lines, with a comma",web\r\n'
        b"\r\n"
        b"2,,empty text is prepare's call\r\n"
        b"3,too,many,fields\r\n"
        b"4,short\r\n"
        b"5,bad \xff byte,web\r\n"
        b",no id here,web\r\n"
        b'6,"quoted ""inner"" quotes",web\r\n'
    )
    shard = shard_of(write(tmp_path / "d.csv", data))
    records = list(read_shard(shard, ReaderConfig()))
    assert [(rec.position, rec.id, err(rec)) for rec in records] == [
        (1, "1", None),
        (2, "2", None),
        (3, f"{shard.name}:3", r.INVALID_ROW),
        (4, f"{shard.name}:4", r.INVALID_ROW),
        (5, f"{shard.name}:5", r.INVALID_UTF8),
        (6, f"{shard.name}:6", None),
        (7, "6", None),
    ]
    assert records[0].text == "a text\nover two lines, with a comma"
    assert records[0].metadata == {"source": "web"}
    assert records[1].text == ""
    assert "4 fields" in records[2].detail and "3" in records[2].detail
    assert "\\xff" in records[4].raw
    assert records[6].text == 'quoted "inner" quotes'


def test_csv_huge_field(tmp_path: Path) -> None:
    huge = "x" * 5_000_000
    (rec,) = read(write(tmp_path / "d.csv", f'id,text\n1,"{huge}"\n'.encode()))
    assert rec.text == huge


def test_csv_missing_text_column_is_a_config_error_naming_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", b"id,body\n1,hello\n")
    with pytest.raises(ValueError, match=r"'text'.*\['id', 'body'\]"):
        read(path)
    (rec,) = read(path, ReaderConfig(text_field="body"))
    assert (rec.id, rec.text) == ("1", "hello")
    with pytest.raises(ValueError, match="title"):
        read(path, ReaderConfig(text_field="body", title_field="heading"))


def test_tsv_quotes_in_text_do_not_swallow_rows(tmp_path: Path) -> None:
    data = b'id\ttext\n1\t"unbalanced quote opens here\n2\tsecond row\n3\tthird "row"\n'
    records = read(write(tmp_path / "d.tsv", data))
    assert [rec.text for rec in records] == ['"unbalanced quote opens here', "second row", 'third "row"']


def test_csv_without_id_column_uses_line_ids(tmp_path: Path) -> None:
    shard = shard_of(write(tmp_path / "d.csv", b"text,title,n\xffote\nhello,Greeting,x\nbye,,y\n"))
    first, second = read_shard(shard, ReaderConfig(title_field="title"))
    assert (first.id, first.text, first.title) == (f"{shard.name}:1", "hello", "Greeting")
    assert first.metadata == {"n\ufffdote": "x"}  # a bad byte in a column name is not a row's fault
    assert (second.id, second.title) == (f"{shard.name}:2", None)


# --------------------------------------------------------------------------- parquet


def test_parquet_row_groups_nulls_types_and_metadata(tmp_path: Path) -> None:
    n = 2500
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "text": pa.array([None if i == 3 else f"text {i}" for i in range(n)], pa.string()),
            "when": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5)] * n, pa.timestamp("s")),
            "tags": pa.array([["a", "b"]] * n, pa.list_(pa.string())),
        }
    )
    path = tmp_path / "d.parquet"
    pq.write_table(table, path, row_group_size=1000)
    records = read(path)
    assert len(records) == n
    assert [rec.position for rec in records] == list(range(1, n + 1))
    assert records[0].id == "0" and records[0].text == "text 0"
    assert records[0].metadata == {"when": "2024-01-02T03:04:05", "tags": ["a", "b"]}
    assert err(records[3]) == r.MISSING_TEXT
    assert records[2499].text == "text 2499"
    json.dumps([rec.metadata for rec in good(records)])  # metadata must be JSON-able


def test_parquet_non_string_and_binary_text(tmp_path: Path) -> None:
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": pa.array([1, 2])}), path)
    records = read(path)
    assert [err(rec) for rec in records] == [r.NON_STRING_TEXT] * 2 and records[0].raw == "1"
    path = tmp_path / "bin.parquet"
    pq.write_table(pa.table({"text": pa.array([b"caf\xc3\xa9", b"bad \xff", None], pa.binary())}), path)
    records = read(path)
    assert [(rec.text, err(rec)) for rec in records[:1]] == [("café", None)]
    assert err(records[1]) == r.INVALID_UTF8 and "\\xff" in records[1].raw
    assert err(records[2]) == r.MISSING_TEXT


def test_parquet_invalid_utf8_inside_a_string_column(tmp_path: Path) -> None:
    """Arrow does not validate strings on read; one bad value must not lose the batch."""
    raw = pa.array([b"fine", b"bad \xff"], pa.binary())
    bad_strings = pa.Array.from_buffers(pa.string(), 2, raw.buffers())
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["one", "two"], "note": bad_strings}), path)
    records = read(path)
    assert [(rec.text, err(rec)) for rec in good(records)] == [("one", None)]
    assert (err(records[1]), records[1].raw) == (r.INVALID_UTF8, "'two'")
    assert "note" in records[1].detail


def test_parquet_missing_text_column(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": [1], "body": ["x"]}), path)
    with pytest.raises(ValueError, match=r"'text'.*\['id', 'body'\]"):
        read(path)


# --------------------------------------------------------------------------- corrupt input


def _lines_payload(n: int = 6000) -> tuple[list[str], bytes]:
    """Text that compresses like prose (not like repeats), so streams hold many blocks."""
    rng = random.Random(7)
    words = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    texts = [f"{i}: " + " ".join(rng.choice(words) for _ in range(10)) for i in range(1, n + 1)]
    return texts, "".join(t + "\n" for t in texts).encode()


@pytest.mark.parametrize("compression", ["gzip", "zstd", "bz2"])
def test_truncated_stream_keeps_what_was_read_then_one_corrupt_record(
    tmp_path: Path, compression: str
) -> None:
    texts, data = _lines_payload()
    packed = bz2.compress(data, 1) if compression == "bz2" else compress(data, compression)
    path = write(tmp_path / f"t.txt{COMPRESSIONS[compression]}", packed[: len(packed) * 2 // 3])
    records = read(path)
    *ok, last = records
    assert 0 < len(ok) < len(texts), "records before the damage must be kept"
    assert [rec.text for rec in ok] == texts[: len(ok)]
    assert [rec.position for rec in ok] == list(range(1, len(ok) + 1))
    assert err(last) == r.CORRUPT_FILE
    assert last.position == len(ok) + 1 and last.id is None
    assert str(path) in last.detail and "truncated" in last.detail


MEMBER_PACKERS = {
    "gzip": lambda b: gzip.compress(b, 6),
    "zstd": lambda b: zstandard.ZstdCompressor(write_checksum=True).compress(b),  # the zstd CLI's default
    "bz2": lambda b: bz2.compress(b, 1),
}


def _members(data: bytes, size: int, compression: str) -> list[bytes]:
    """``data`` cut every ``size`` bytes (mid-line, as bgzip cuts) and each
    piece compressed as its own member, frame or stream."""
    return [MEMBER_PACKERS[compression](data[i : i + size]) for i in range(0, len(data), size)]


def _damage(member: bytes) -> bytes:
    """The member with a run of its middle bytes overwritten."""
    mid = len(member) // 2
    return member[:mid] + b"\xff" * 64 + member[mid + 64 :]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "bz2"])
def test_a_damaged_member_loses_only_its_own_records(tmp_path: Path, compression: str) -> None:
    """One bad block once lost all the records of a .gz file. In a file
    of many members (bgzip, pzstd, pbzip2, `cat a.gz b.gz`) the members after
    the damaged one are read; the lines broken by the damage are dropped,
    never embedded in half."""
    texts, data = _lines_payload(3000)
    size = 20_000
    members = _members(data, size, compression)
    damaged = 4
    members[damaged] = _damage(members[damaged])
    path = write(tmp_path / f"m.txt{COMPRESSIONS[compression]}", b"".join(members))
    records = read(path)
    errors = [rec for rec in records if isinstance(rec, ReadError)]
    got = [rec.text for rec in records if not isinstance(rec, ReadError)]
    (error,) = errors
    assert error.reason == r.CORRUPT_FILE and str(path) in error.detail
    assert f"reading went on at the next {compression} member" in error.detail and "about" in error.detail
    # Every record read is a whole line of the input, in order: nothing half.
    index = {t: i for i, t in enumerate(texts)}
    assert all(t in index for t in got)
    assert [index[t] for t in got] == sorted(index[t] for t in got)
    # What is lost lies in the damaged member (and the lines crossing its edges).
    first_lost, last_lost = damaged * size, (damaged + 1) * size
    offsets, at = [], 0
    for t in texts:
        offsets.append((at, at + len(t) + 1))
        at += len(t) + 1
    must_have = [t for t, (a, b) in zip(texts, offsets, strict=True) if b <= first_lost or a >= last_lost + 1]
    missing = [t for t in must_have if t not in set(got)]
    assert missing == [texts[next(i for i, (a, _) in enumerate(offsets) if a >= last_lost)]] or missing == []
    assert len(texts) - len(got) <= size // 20  # one member's lines or so, of 3,000


@pytest.mark.parametrize("compression", ["gzip", "zstd", "bz2"])
def test_a_damaged_single_member_file_says_the_rest_is_lost(tmp_path: Path, compression: str) -> None:
    texts, data = _lines_payload(3000)
    packed = _damage(MEMBER_PACKERS[compression](data))
    path = write(tmp_path / f"s.txt{COMPRESSIONS[compression]}", packed)
    records = read(path)
    *ok, last = records
    # A member is trusted once its checksum is (or past 1 MiB): here it is
    # not, so what it decoded before the damage is dropped with it.
    assert [rec.text for rec in ok] == texts[: len(ok)] and len(ok) < len(texts)
    assert last.reason == r.CORRUPT_FILE and last.position == len(ok) + 1
    assert "the rest of the file is lost" in last.detail and "cannot be resumed" in last.detail


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv", "tsv"])
def test_gzip_garbage_mid_file(tmp_path: Path, fmt: str) -> None:
    rows = [{"id": f"r{i}", "text": f"text {i}", "lang": "en"} for i in range(50)]
    data = gzip.compress(encode(fmt, rows)) + b"this is not a gzip member" * 10
    records = read(write(tmp_path / f"t{EXT[fmt]}.gz", data))
    *ok, last = records
    assert [rec.text for rec in ok] == [row["text"] for row in rows]
    assert (err(last), last.position) == (r.CORRUPT_FILE, 51)


@pytest.mark.parametrize(("name", "data"), [
    ("g.txt.gz", b"\x1f\x8b\x08\x00garbage from the start" * 20),
    ("n.jsonl.gz", b"not gzip at all"),
    ("z.csv.zst", b"not zstd at all"),
    ("b.tsv.bz2", b"not bz2 at all"),
    ("p.parquet", b"PAR1 but not really a parquet file"),
    ("p2.parquet", b"x"),
])
def test_undecodable_file_is_exactly_one_corrupt_record(tmp_path: Path, name: str, data: bytes) -> None:
    (rec,) = read(write(tmp_path / name, data))
    assert (err(rec), rec.position, rec.id) == (r.CORRUPT_FILE, 1, None)
    assert str(tmp_path / name) in rec.detail


def test_truncated_parquet_is_one_corrupt_record(tmp_path: Path) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(5000)]}), buf, row_group_size=1000)
    data = buf.getvalue()
    (rec,) = read(write(tmp_path / "d.parquet", data[: len(data) // 2]))
    assert err(rec) == r.CORRUPT_FILE


def test_missing_file_is_raised_not_reported_as_corrupt(tmp_path: Path) -> None:
    """Transport faults must fail the shard (the runner retries), never commit it half read."""
    path = write(tmp_path / "gone.txt", b"x\n")
    shard = shard_of(path)
    path.unlink()
    with pytest.raises(FileNotFoundError):
        list(read_shard(shard, ReaderConfig()))


# --------------------------------------------------------------------------- listing


def test_glob_matching_nothing_names_the_glob(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", b"x\n")
    pattern = str(tmp_path / "*.jsonl")
    with pytest.raises(NoInputError, match=r"\*\.jsonl.*matched no files"):
        list_shards([str(tmp_path / "a.txt"), pattern])
    with pytest.raises(NoInputError, match="nope"):
        list_shards([str(tmp_path / "nope" / "x.txt")])
    with pytest.raises(NoInputError):
        list_shards([str(tmp_path / "empty-dir-*")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoInputError):
        list_shards([str(tmp_path / "empty")])
    with pytest.raises(NoInputError):
        list_shards([""])


def test_every_pattern_that_matches_nothing_is_reported_together(tmp_path: Path) -> None:
    with pytest.raises(NoInputError) as info:
        list_shards([str(tmp_path / "one*.txt"), str(tmp_path / "two*.txt")])
    assert "one*" in str(info.value) and "two*" in str(info.value)


def test_overlapping_globs_are_deduplicated_and_sorted(tmp_path: Path) -> None:
    for name in ("b.txt", "a.txt", "c.jsonl", "sub/d.txt"):
        write(tmp_path / name, b"x\n")
    shards = list_shards(
        [str(tmp_path / "*.txt"), str(tmp_path / "a.*"), str(tmp_path), str(tmp_path / "sub" / ".." / "a.txt")]
    )
    assert [s.path for s in shards] == [str(tmp_path / n) for n in ("a.txt", "b.txt", "c.jsonl", "sub/d.txt")]
    assert len({s.name for s in shards}) == 4


def test_a_file_matched_twice_gets_the_same_name_whatever_the_pattern_order(tmp_path: Path) -> None:
    write(tmp_path / "a" / "x.jsonl", b"{}\n")
    narrow, wide = str(tmp_path / "a" / "*.jsonl"), str(tmp_path)
    (one,) = list_shards([narrow, wide])
    (two,) = list_shards([wide, narrow])
    assert one == two and one.name.startswith("a__x.jsonl-")


def test_same_file_name_in_two_folders_gets_two_names(tmp_path: Path) -> None:
    write(tmp_path / "a" / "x.jsonl", b"{}\n")
    write(tmp_path / "b" / "x.jsonl", b"{}\n")
    shards = list_shards([str(tmp_path / "*" / "x.jsonl")])
    assert len(shards) == 2
    assert shards[0].name != shards[1].name
    assert shards[0].name.startswith("a__x.jsonl-") and shards[1].name.startswith("b__x.jsonl-")
    # Same file listed through its own folder: the readable part is relative to the glob base.
    (alone,) = list_shards([str(tmp_path / "a" / "x.jsonl")])
    assert alone.name.startswith("x.jsonl-")


def test_directory_means_every_file_under_it_except_commit_markers(tmp_path: Path) -> None:
    names = (
        "p1.jsonl", "deep/er/p2.jsonl", ".dotted.jsonl", "_under.jsonl",  # data, whatever the name
        "_SUCCESS", ".p1.jsonl.crc", "_temporary/0/p3.jsonl", "_committed_123", ".DS_Store",  # markers
    )
    for name in names:
        write(tmp_path / "in" / name, b"{}\n")
    shards = list_shards([str(tmp_path / "in")])
    assert sorted(s.path[len(str(tmp_path / "in")) + 1:] for s in shards) == sorted(names[:4])
    assert next(s for s in shards if "deep" in s.path).name.startswith("deep__er__p2.jsonl-")
    assert len(list_shards([str(tmp_path / "in" / "*")])) == 4  # a matched folder is expanded too
    assert len(list_shards([str(tmp_path / "in" / "**" / "*.jsonl")])) == 4
    assert [Path(s.path).name for s in list_shards([str(tmp_path / "in" / "_*")])] == ["_under.jsonl"]
    # Named explicitly, markers are listed.
    assert len(list_shards([str(tmp_path / "in" / "_SUCCESS")])) == 1
    assert len(list_shards([str(tmp_path / "in" / "_temporary")])) == 1
    assert len(list_shards([str(tmp_path / "in" / "_temporary" / "*" / "*.jsonl")])) == 1
    write(tmp_path / "done" / "_SUCCESS", b"")
    with pytest.raises(NoInputError, match="commit-marker"):
        list_shards([str(tmp_path / "done")])


def test_unsafe_paths_give_safe_names(tmp_path: Path) -> None:
    weird = tmp_path / "we ird" / "ünï cödé" / "$&;:|<>'\" #%!.txt"
    write(weird, b"x\n")
    dotted = write(tmp_path / "we ird" / "..dots..txt", b"x\n")
    shards = list_shards([str(tmp_path / "we ird" / ".." / "we ird" / "**"), str(dotted)])
    assert {s.path for s in shards} == {str(weird), str(dotted)}
    for shard in shards:
        assert "/" not in shard.name and "\\" not in shard.name
        assert not shard.name.startswith(".") and ".." not in shard.name[:2]
        assert all(ch.isascii() and (ch.isalnum() or ch in "._-") for ch in shard.name)
        assert Path(shard.path).exists()  # still names the real file


def test_glob_characters_in_a_real_file_name(tmp_path: Path) -> None:
    path = write(tmp_path / "data[1].txt", b"hello\n")
    assert [s.path for s in list_shards([str(path)])] == [str(path)]


def test_relative_patterns_and_a_single_string(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "d" / "x.txt", b"x\n")
    monkeypatch.chdir(tmp_path)
    (shard,) = list_shards("d/*.txt")  # type: ignore[arg-type]  # a lone str is one pattern
    assert shard.path == str(tmp_path / "d" / "x.txt")


def test_local_size_and_version_come_from_the_listing(tmp_path: Path) -> None:
    path = write(tmp_path / "x.txt", b"hello\n")
    shard = shard_of(path)
    assert shard.size == 6
    assert float(shard.version) == pytest.approx(path.stat().st_mtime)
    fingerprint = shard.fingerprint
    path.write_bytes(b"hello, changed\n")
    assert shard_of(path).fingerprint != fingerprint
    assert pickle.loads(pickle.dumps((shard, ReaderConfig(title_field="t")))) == (shard, ReaderConfig(title_field="t"))


def test_memory_filesystem(memroot: str) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{memroot}/in/a.jsonl", encode("jsonl", ROWS))
    fs.pipe(f"{memroot}/in/sub/b.csv.gz", gzip.compress(encode("csv", ROWS)))
    fs.pipe(f"{memroot}/in/c.txt", b"one\n")
    shards = list_shards([f"memory:/{memroot}/in", f"memory:/{memroot}/x/../in/*.jsonl"])
    assert [s.path for s in shards] == [
        f"memory://{memroot}/in/a.jsonl",
        f"memory://{memroot}/in/c.txt",
        f"memory://{memroot}/in/sub/b.csv.gz",
    ]
    assert [s.size for s in shards] == [fs.size(s.path) for s in shards]
    assert all(s.version for s in shards)
    texts = [[rec.text for rec in read_shard(s, ReaderConfig())] for s in shards]
    assert texts == [[row["text"] for row in ROWS], ["one"], [row["text"] for row in ROWS]]
    with pytest.raises(NoInputError, match="memory"):
        list_shards([f"memory:/{memroot}/nothing/*.txt"])


# --------------------------------------------------------------------------- object stores


def _fill_bucket(root: str, options: dict[str, Any]) -> dict[str, bytes]:
    fs, path = fsspec.core.url_to_fs(root, **options)
    files = {
        "corpus/2024/a.jsonl": encode("jsonl", ROWS),
        "corpus/2024/b.txt.zst": compress(b"alpha\nbeta\n", "zstd"),
        "corpus/2025/a.jsonl": encode("jsonl", ROWS[:1]),
        "corpus/2025/c.parquet": encode("parquet", ROWS),
        "corpus/_SUCCESS": b"",
        "other/x.csv": encode("csv", ROWS),
    }
    for key, data in files.items():
        fs.pipe(f"{path}/{key}", data)
    return files


def test_s3_listing_and_reading(
    s3_bucket: str, s3_server: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    files = _fill_bucket(s3_bucket, s3_server)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        shards = list_shards([f"{s3_bucket}/corpus", f"{s3_bucket}/corpus/*/a.jsonl", f"{s3_bucket}/other/*.csv"], s3_server)
    requests = [rec.getMessage() for rec in caplog.records if rec.name == "werkzeug"]
    keys = ["corpus/2024/a.jsonl", "corpus/2024/b.txt.zst", "corpus/2025/a.jsonl", "corpus/2025/c.parquet", "other/x.csv"]
    assert requests and not [m for m in requests for k in keys if f"/{k} " in m], (
        "size and version must come from listings, not a request per object"
    )
    assert [s.path for s in shards] == [f"{s3_bucket}/{k}" for k in keys]
    assert [s.size for s in shards] == [len(files[k]) for k in keys]
    assert [s.version for s in shards] == [hashlib.md5(files[k]).hexdigest() for k in keys]  # ETag, unquoted
    assert len({s.name for s in shards}) == len(shards)
    assert shards[0].name.startswith("2024__a.jsonl-")
    texts = [[rec.text for rec in read_shard(s, ReaderConfig(), s3_server)] for s in shards]
    assert texts[1] == ["alpha", "beta"]
    assert texts[3] == texts[4] == [row["text"] for row in ROWS]
    assert all(err(rec) is None for s in shards for rec in read_shard(s, ReaderConfig(), s3_server))
    with pytest.raises(NoInputError, match="nothing"):
        list_shards([f"{s3_bucket}/nothing/*.jsonl"], s3_server)
    fsspec.filesystem("s3", **s3_server).rm(shards[0].path)
    with pytest.raises(FileNotFoundError):  # gone since listing: raised, not "corrupt"
        list(read_shard(shards[0], ReaderConfig(), s3_server))
    with pytest.raises(NoInputError):
        list_shards(["s3://no-such-bucket-bv/x/*.txt"], s3_server)


def test_s3_truncated_object_is_reported_corrupt(s3_bucket: str, s3_server: dict[str, Any]) -> None:
    texts, data = _lines_payload(2000)
    packed = gzip.compress(data)
    fs, path = fsspec.core.url_to_fs(s3_bucket, **s3_server)
    fs.pipe(f"{path}/t.txt.gz", packed[: len(packed) // 2])
    (shard,) = list_shards([f"{s3_bucket}/t.txt.gz"], s3_server)
    *ok, last = read_shard(shard, ReaderConfig(), s3_server)
    assert [rec.text for rec in ok] == texts[: len(ok)] and ok
    assert (err(last), last.position) == (r.CORRUPT_FILE, len(ok) + 1)


def test_gcs_listing_and_reading(gcs_bucket: str, gcs_server: dict[str, Any]) -> None:
    files = _fill_bucket(gcs_bucket, gcs_server)
    shards = list_shards([f"{gcs_bucket}/corpus/**", f"{gcs_bucket}/other"], gcs_server)
    keys = ["corpus/2024/a.jsonl", "corpus/2024/b.txt.zst", "corpus/2025/a.jsonl", "corpus/2025/c.parquet", "other/x.csv"]
    assert [s.path for s in shards] == [f"{gcs_bucket}/{k}" for k in keys]
    assert [s.size for s in shards] == [len(files[k]) for k in keys]
    fs = fsspec.filesystem("gs", **gcs_server)
    assert [s.version for s in shards] == [str(fs.info(s.path)["generation"]) for s in shards]
    texts = [[rec.text for rec in read_shard(s, ReaderConfig(), gcs_server)] for s in shards]
    assert texts == [
        [row["text"] for row in ROWS], ["alpha", "beta"], [ROWS[0]["text"]],
        [row["text"] for row in ROWS], [row["text"] for row in ROWS],
    ]
    # Overwriting an object gives a new generation, so the fingerprint changes.
    fs.pipe(shards[0].path, encode("jsonl", ROWS[:2]))
    fs.invalidate_cache()
    (again,) = list_shards([shards[0].path], gcs_server)
    assert again.version != shards[0].version and again.fingerprint != shards[0].fingerprint
    with pytest.raises(NoInputError, match="nothing"):
        list_shards([f"{gcs_bucket}/nothing/*.jsonl"], gcs_server)
