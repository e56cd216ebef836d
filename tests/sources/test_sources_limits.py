"""Inputs that must not hurt: huge lines, ids that are not ids, the output under
the input glob, files with no format, and an input deleted after listing."""

from __future__ import annotations

import json
import pickle
import tracemalloc
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beamvec import records as r
from beamvec.errors import InputVanishedError, UsageError
from beamvec.records import DeadLetter, RawRecord, ReadError, Record, Split
from beamvec.route.prepare import PrepareConfig, prepare
from beamvec.sources import (
    NoInputError,
    ReaderConfig,
    list_shards,
    plan_splits,
    read_shard,
    read_split,
)

MB = 1024 * 1024


def _read(path: Path, config: ReaderConfig) -> list[RawRecord | ReadError]:
    (shard,) = list_shards([str(path)])
    return list(read_shard(shard, config))


def _write_huge_line(path: Path, head: bytes, unit: bytes, size: int, tail: bytes) -> None:
    """`head`, then `unit` repeated to about `size` bytes on the same line, then `tail`."""
    block = unit * (MB // len(unit))
    with path.open("wb") as fh:
        fh.write(head)
        for _ in range(size // len(block)):
            fh.write(block)
        fh.write(tail)


def _peak(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------- long texts


def test_a_50_mb_txt_line_is_cut_while_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    _write_huge_line(path, b"short one\n", b"word ", 50 * MB, b"\nafter\n")
    keep = 1_000_000
    records, peak = _peak(lambda: _read(path, ReaderConfig(max_text_chars=keep)))
    short, huge, after = records
    assert (short.text, short.cut, after.text, after.position) == ("short one", False, "after", 3)
    assert huge.position == 2 and huge.cut
    assert huge.text == ("word " * (keep // 5 + 1))[:keep]
    assert peak < 3 * keep + 4 * MB, f"peak {peak} bytes for a 50 MB line kept to {keep}"
    # Without a limit the line is read whole, as before.
    assert not _read(path, ReaderConfig())[1].cut


def test_a_cut_multibyte_line_ends_on_a_whole_character(tmp_path: Path) -> None:
    path = tmp_path / "cjk.txt"
    _write_huge_line(path, b"", "日本語🚀".encode(), 3 * MB, b"\n")
    (rec,) = _read(path, ReaderConfig(max_text_chars=100_001))
    assert rec.cut and rec.text == ("日本語🚀" * 20_000)[: len(rec.text)]
    assert 100_001 // 4 <= len(rec.text) <= 100_001


def test_prepare_flags_a_cut_text_truncated_or_dead_letters_it() -> None:
    raw = RawRecord(7, "x", "one two three", cut=True)
    out = prepare(raw, PrepareConfig(max_text_tokens=10), lambda t: len(t.split()), lambda t, n: t)
    assert isinstance(out, Record) and out.truncated and out.text == "one two three"
    out = prepare(raw, PrepareConfig(max_text_tokens=10, on_long_text="dead-letter"),
                  lambda t: len(t.split()), lambda t, n: t)
    assert isinstance(out, DeadLetter) and (out.reason, out.position, out.id) == (r.TEXT_TOO_LONG, 7, "x")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
def test_a_50_mb_jsonl_or_csv_line_is_dead_lettered_unparsed(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"huge.{fmt}"
    if fmt == "jsonl":
        head, tail = b'{"id": "a", "text": "ok"}\n{"id": "big", "text": "', b'"}\n{"id": "c", "text": "fine"}\n'
    else:
        sep = b"," if fmt == "csv" else b"\t"
        head = b"id" + sep + b"text\n" + b"a" + sep + b"ok\n" + b"big" + sep
        tail = b"\nc" + sep + b"fine\n"
    _write_huge_line(path, head, b"word ", 50 * MB, tail)
    limit = 1 * MB
    records, peak = _peak(lambda: _read(path, ReaderConfig(max_line_bytes=limit)))
    first, big, last = records
    assert (first.id, first.text, last.id, last.text) == ("a", "ok", "c", "fine")
    assert isinstance(big, ReadError) and big.reason == r.TEXT_TOO_LONG
    assert big.position == 2 and big.id.endswith(":2")
    assert "over the 1048576-byte limit" in big.detail and len(big.raw) <= 201
    assert peak < 3 * limit + 4 * MB, f"peak {peak} bytes"


# --------------------------------------------------------------------------- ids


def test_jsonl_ids_must_be_strings_or_integers(tmp_path: Path) -> None:
    lines = [
        {"id": {"a": 1}, "text": "object id"},
        {"id": True, "text": "boolean id"},
        {"id": [1, 2], "text": "array id"},
        {"id": 1.5, "text": "fraction id"},
        {"id": 1, "text": "integer id"},
        {"id": "1", "text": "string id"},
        {"id": 12345678901234567890, "text": "big integer id"},
        {"text": "no id"},
    ]
    path = tmp_path / "ids.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    (shard,) = list_shards([str(path)])
    records = list(read_shard(shard, ReaderConfig()))
    bad = records[:4]
    assert all(isinstance(rec, ReadError) and rec.reason == r.INVALID_ID for rec in bad)
    assert [rec.id for rec in bad] == [f"{shard.name}:{i}" for i in (1, 2, 3, 4)]
    assert "object" in bad[0].detail and "boolean" in bad[1].detail and "array" in bad[2].detail
    # 1 and "1" are the same id "1": the router dead-letters the second as duplicate_id.
    assert [rec.id for rec in records[4:]] == ["1", "1", "12345678901234567890", f"{shard.name}:8"]
    assert r.INVALID_ID in r.REASONS
    letter = prepare(bad[0], PrepareConfig(), len, lambda t, n: t)
    assert isinstance(letter, DeadLetter) and letter.reason == r.INVALID_ID


def test_parquet_ids_must_be_strings_or_integers(tmp_path: Path) -> None:
    for values, expected in (
        (pa.array([1.5, 2.0]), [r.INVALID_ID, r.INVALID_ID]),
        (pa.array([True, False]), [r.INVALID_ID, r.INVALID_ID]),
        (pa.array([{"a": 1}, {"a": 2}]), [r.INVALID_ID, r.INVALID_ID]),
        (pa.array([7, None], pa.int32()), ["7", "fallback"]),
        (pa.array(["x", "y"]), ["x", "y"]),
    ):
        path = tmp_path / f"ids-{values.type}.parquet".replace("<", "").replace(">", "").replace(" ", "")
        pq.write_table(pa.table({"id": values, "text": ["a", "b"]}), path)
        (shard,) = list_shards([str(path)])
        got = [
            rec.reason if isinstance(rec, ReadError) else ("fallback" if rec.id == f"{shard.name}:2" else rec.id)
            for rec in read_shard(shard, ReaderConfig())
        ]
        assert got == expected, values.type


# --------------------------------------------------------------------------- listing


def _tree(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b'{"text": "x"}\n')


def test_the_output_under_the_input_glob_is_never_an_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path, [
        "c9/a.jsonl", "c9/sub/b.jsonl",
        "c9/out/_manifest.json", "c9/out/_SUCCESS", "c9/out/vectors/a.parquet",
        "c9/out/dead_letters/a.parquet", "c9/out/_tmp/x.parquet", "c9/outside.jsonl",
    ])
    monkeypatch.chdir(tmp_path)
    shards = list_shards(["c9/**"], exclude=["c9/out"])
    assert [Path(s.path).relative_to(tmp_path).as_posix() for s in shards] == [
        "c9/a.jsonl", "c9/outside.jsonl", "c9/sub/b.jsonl",
    ]
    # the same output named another way, and named explicitly as an input
    assert len(list_shards([str(tmp_path / "c9")], exclude=[str(tmp_path / "c9" / "x" / ".." / "out/")])) == 3
    with pytest.raises(NoInputError, match="output"):
        list_shards(["c9/out/vectors/a.parquet"], exclude=["c9/out"])


def test_beamvec_own_files_are_skipped_even_without_exclude(tmp_path: Path) -> None:
    _tree(tmp_path, [
        "in/a.jsonl", "in/old/_manifest.json", "in/old/_tmp/x.jsonl", "in/old/_partial/s/0.jsonl",
        "in/old/_batch/b.jsonl", "in/old/_runs/r.jsonl", "in/old/_lease", "in/old/_leases/l.jsonl",
    ])
    assert [Path(s.path).name for s in list_shards([str(tmp_path / "in")])] == ["a.jsonl"]


def test_output_on_another_filesystem_excludes_nothing(tmp_path: Path) -> None:
    _tree(tmp_path, ["in/a.jsonl"])
    assert len(list_shards([str(tmp_path / "in")], exclude=[f"memory://{tmp_path}/in"])) == 1


def test_memory_output_under_a_memory_input_is_excluded() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/bv-excl/in/a.jsonl", b'{"text": "x"}\n')
    fs.pipe("/bv-excl/in/out/vectors/a.parquet", b"PAR1")
    try:
        shards = list_shards(["memory://bv-excl/in"], exclude=["memory://bv-excl/in/out"])
        assert [s.path for s in shards] == ["memory:///bv-excl/in/a.jsonl"]
    finally:
        fs.rm("/bv-excl", recursive=True)


def test_a_glob_matching_a_file_with_no_format_is_refused_at_listing(tmp_path: Path) -> None:
    _tree(tmp_path, ["c9/a.jsonl", "c9/README.md", "c9/z.txt"])
    pattern = str(tmp_path / "c9" / "*")
    with pytest.raises(UsageError, match=r"README\.md.*no known format.*--format") as info:
        list_shards([pattern], config=ReaderConfig())
    assert "\n" not in str(info.value) and repr(pattern) in str(info.value)
    assert len(list_shards([pattern], config=ReaderConfig(format="txt"))) == 3
    assert len(list_shards([pattern])) == 3  # without a reader config, listing alone does not judge
    with pytest.raises(UsageError, match="--format xml"):
        list_shards([pattern], config=ReaderConfig(format="xml"))


# --------------------------------------------------------------------------- vanished input


def test_a_vanished_input_raises_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "gone.jsonl"
    path.write_bytes(b'{"text": "x"}\n' * 1000)
    (shard,) = list_shards([str(path)])
    path.unlink()
    with pytest.raises(InputVanishedError) as info:
        list(read_split(Split.whole(shard), ReaderConfig()))
    message = str(info.value)
    assert str(path) in message and "\n" not in message and "no longer exists" in message
    assert isinstance(info.value, FileNotFoundError)
    again = pickle.loads(pickle.dumps(info.value))
    assert (type(again), str(again), again.path) == (InputVanishedError, message, str(path))
    with pytest.raises(InputVanishedError, match="gone.jsonl"):
        plan_splits(shard, ReaderConfig(), None, 100)
