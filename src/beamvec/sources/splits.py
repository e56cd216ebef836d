"""Reading a split of a shard, and cutting a large file into splits.

Only files stored uncompressed are split: a gzip, bzip2 or zstd stream can
only be read from its start. txt, jsonl, csv and tsv splits are byte ranges
starting at record boundaries; Parquet splits are ranges of row groups. A
record keeps the position and id it has when the file is read whole.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from typing import IO

import fsspec

from beamvec import records as r
from beamvec.errors import InputVanishedError
from beamvec.records import ReadError, Shard, Split
from beamvec.sources.base import Cursor, Item, Reader, ReaderConfig, detect_format, excerpt
from beamvec.sources.compression import decompressed, is_corrupt
from beamvec.sources.delimited import data_rows, read_csv, read_tsv
from beamvec.sources.jsonl import read_jsonl
from beamvec.sources.lines import line_cuts
from beamvec.sources.parquet import read_parquet, row_groups
from beamvec.sources.resync import Gap, line_stream
from beamvec.sources.txt import read_txt

READERS: dict[str, Reader] = {
    "txt": read_txt,
    "jsonl": read_jsonl,
    "csv": read_csv,
    "tsv": read_tsv,
    "parquet": read_parquet,
}


@contextlib.contextmanager
def _opened(shard: Shard, storage_options: dict | None) -> Iterator[IO[bytes]]:
    """The raw bytes of a shard; a file gone since listing is `InputVanishedError`."""
    try:
        with fsspec.open(shard.path, "rb", **(storage_options or {})) as raw:
            yield raw
    except InputVanishedError:
        raise
    except FileNotFoundError:
        raise InputVanishedError(shard.path) from None


def read_split(
    split: Split, config: ReaderConfig, storage_options: dict | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[Item]:
    """Stream the records of one split: one `RawRecord` or `ReadError` per record.

    Memory stays bounded by one line or CSV record (and by ``max_text_chars``
    / ``max_line_bytes`` for long ones), or one Parquet batch; only a
    compressed Parquet file (``x.parquet.gz``) is read whole, as Parquet must
    seek. A corrupt stream yields what was readable, then one ``corrupt_file``
    error at the next position. Config errors (no such text column) and
    transport errors (denied, connection lost) are raised so that the run or
    the runner's retry deals with them, never a half-read split committed as
    complete; a file gone since listing raises `InputVanishedError`.

    ``on_bytes`` hears, every few hundred records and at the end, how many
    more bytes of the stored file were consumed: progress inside a split.
    """
    shard = split.shard
    fmt, compression = detect_format(shard.path, config.format)
    if compression and split.count > 1 and fmt != "parquet":
        raise ValueError(f"{shard.path} is compressed: it cannot be read in splits")
    cursor = Cursor(split.first_position)
    try:
        with _opened(shard, storage_options) as raw:
            if not raw.read(1):
                return  # an empty file is an empty shard, even when named .gz or .bz2
            raw.seek(0)
            gaps: list[Gap] = []
            if fmt == "parquet" and compression:
                fh = io.BytesIO(decompressed(raw, compression).read())  # Parquet needs to seek
            elif compression:  # lines: a damaged member loses only itself (sources/resync.py)
                fh, gaps = line_stream(raw, compression)
            else:
                fh = raw
            if on_bytes is None:
                yield from READERS[fmt](fh, split, config, cursor)
            else:
                yield from _counted(READERS[fmt](fh, split, config, cursor), raw, split, on_bytes)
            for gap in gaps:
                yield ReadError(cursor.next, None, r.CORRUPT_FILE,
                                excerpt(f"{shard.path}: {gap.describe(compression or '')}", 500))
                cursor.next += 1
    except Exception as exc:
        if not is_corrupt(exc):
            raise
        yield ReadError(
            cursor.next, None, r.CORRUPT_FILE,
            excerpt(f"{shard.path}: unreadable from record {cursor.next} on: {type(exc).__name__}: {exc}", 500),
        )


def split_bytes(split: Split) -> int:
    """The stored bytes a split stands for: its range, or its share of a
    Parquet file (row groups are about equal in bytes)."""
    size = max(0, split.shard.size)
    if split.count == 1:
        return size
    if detect_format(split.shard.path)[0] == "parquet":
        return size // split.count
    return max(0, split.end - split.start)


def _counted(items: Iterator[Item], raw: IO[bytes], split: Split,
             on_bytes: Callable[[int], None]) -> Iterator[Item]:
    """The items, reporting the stored bytes read as they go; the split's
    whole share is reported once it is read."""
    share = split_bytes(split)
    start = split.start if split.count > 1 and detect_format(split.shard.path)[0] != "parquet" else 0
    reported = 0
    for n, item in enumerate(items, 1):
        yield item
        if n % 256 == 0 and not (split.count > 1 and start == 0 and split.index):
            with contextlib.suppress(OSError, ValueError):
                now = min(share, raw.tell() - start)
                if now > reported:
                    on_bytes(now - reported)
                    reported = now
    if share > reported:
        on_bytes(share - reported)


def read_shard(shard: Shard, config: ReaderConfig, storage_options: dict | None = None) -> Iterator[Item]:
    """All records of a shard: its one whole-file split."""
    return read_split(Split.whole(shard), config, storage_options)


def splittable(shard: Shard, config: ReaderConfig) -> bool:
    """Whether a shard's format and storage let it be cut (False for gz, bz2, zst).

    `plan` warns about a large file that is not: one worker will read it all.
    """
    return detect_format(shard.path, config.format)[1] is None


def plan_splits(
    shard: Shard, config: ReaderConfig, storage_options: dict | None, target_bytes: int
) -> list[Split]:
    """Cut a shard into splits of about ``target_bytes`` each, at record boundaries.

    One whole-file split when the file is small (by its listed size),
    compressed, or empty. Otherwise txt and jsonl are cut with one streaming
    pass that counts newlines; csv and tsv with one pass that finds record
    boundaries and counts rows as the reader does; Parquet from its footer.
    A file that turns out to be corrupt is not split (its reader reports it).
    """
    fmt, _ = detect_format(shard.path, config.format)
    if not splittable(shard, config) or target_bytes <= 0 or 0 <= shard.size <= target_bytes:
        return [Split.whole(shard)]
    try:
        with _opened(shard, storage_options) as fh:
            if fmt == "parquet":
                cuts, last = row_groups(fh, target_bytes)
            elif fmt in ("csv", "tsv"):
                cuts = data_rows(fh, "," if fmt == "csv" else "\t", config, target_bytes)
                last = fh.seek(0, io.SEEK_END)
            else:
                cuts = line_cuts(fh, target_bytes)
                last = fh.seek(0, io.SEEK_END)
    except Exception as exc:
        if not is_corrupt(exc):
            raise
        return [Split.whole(shard)]
    if not cuts:
        return [Split.whole(shard)]
    starts = [(0, 1), *cuts]
    count = len(starts)
    return [
        Split(shard, i, count, start, starts[i + 1][0] if i + 1 < count else last, first)
        for i, (start, first) in enumerate(starts)
    ]

