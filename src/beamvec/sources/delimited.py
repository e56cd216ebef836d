"""csv and tsv: a header row, then one record per row.

csv: RFC 4180 quoting, fields over several lines. A record ends at a newline
where the count of ``"`` characters since the record's start is even (see
`lines`), so that a file can be cut into splits at record boundaries found
by counting, without parsing. tsv: no quoting (IANA TSV), so a stray quote
in a text cannot swallow the rows after it; every line is a record.

Positions count records after the header, blank lines skipped; the planner
of splits counts with the very same rule (`data_rows`).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from typing import IO

from beamvec import records as r
from beamvec.records import RawRecord, ReadError, Shard, Split, line_id
from beamvec.sources.base import (
    EXCERPT,
    Cursor,
    Item,
    Reader,
    ReaderConfig,
    bytes_excerpt,
    check_encoding,
    excerpt,
    missing_column,
    strip_bom,
    too_long,
)
from beamvec.sources.lines import Line, iter_lines

#: Bytes of each record kept while planning: enough to tell a blank line.
_PLAN_KEEP = 4096


def _raise_field_size_limit() -> None:
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def _skip(line: Line, columns: int, encoding: str, delimiter: str) -> bool:
    """A line that is no row: empty, or only whitespace when rows have several fields.

    Whitespace is ASCII whitespace; in tsv a tab is a delimiter, so a line of
    tabs is a row of empty fields.
    """
    data = strip_bom(line.data, line.offset, encoding)
    if not line.cut and data in (b"", b"\r"):
        return True
    if columns <= 1 or (delimiter == "\t" and line.tabs):
        return False
    return line.blank or (not line.cut and data.isspace() and delimiter.encode() not in data)


def _rows(data: bytes, delimiter: str, encoding: str) -> list[list[str]]:
    """The csv rows of one record's bytes (one, unless a stray quote joined lines).

    Bad bytes become lone surrogates, caught per row.
    """
    text = data.decode(encoding, "surrogateescape")
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    return list(csv.reader((part + "\n" for part in text.split("\n")), delimiter=delimiter,
                           quoting=quoting, strict=False))


def _header(lines: Iterator[Line], delimiter: str, config: ReaderConfig, encoding: str) -> list[str] | None:
    """The column names: the first row that is not empty. None for a file with none."""
    for line in lines:
        if _skip(line, 0, encoding, delimiter):
            continue
        if line.cut:
            raise ValueError(
                f"the header row is over {config.max_line_bytes} bytes; is this really a "
                f"{'csv' if delimiter == ',' else 'tsv'} file? pass --format if not"
            )
        rows = _rows(strip_bom(line.data, line.offset, encoding), delimiter, encoding)
        header = rows[0] if rows else []
        # Column names are keys, not data: a bad byte there becomes U+FFFD.
        return [h.encode(encoding, "surrogateescape").decode(encoding, "replace").strip() for h in header]
    return None


def data_rows(fh: IO[bytes], delimiter: str, config: ReaderConfig, target: int) -> list[tuple[int, int]]:
    """(offset, first position) of a record start near every ``target`` bytes, for splits.

    Reads the file once, holding a few KB of each record, and counts rows with
    the reader's own rule for blank lines and the header.
    """
    encoding = check_encoding(config.encoding)
    quoted = delimiter == ","
    header = _header(iter_lines(fh, keep=config.max_line_bytes, quoted=quoted), delimiter, config, encoding)
    if header is None:
        return []
    fh.seek(0)
    cuts: list[tuple[int, int]] = []
    rows = 0
    seen_header = False
    want = target
    for line in iter_lines(fh, keep=_PLAN_KEEP, quoted=quoted):
        if not seen_header:
            seen_header = not _skip(line, 0, encoding, delimiter)
            continue
        if line.offset >= want:
            cuts.append((line.offset, rows + 1))
            want = line.offset + target
        if not _skip(line, len(header), encoding, delimiter):
            rows += 1
    return cuts


def _check_columns(shard: Shard, header: list[str], config: ReaderConfig) -> None:
    if config.text_field not in header:
        raise missing_column(shard, "text", config.text_field, header, "--text-field")
    if config.title_field and config.title_field not in header:
        raise missing_column(shard, "title", config.title_field, header, "--title-field")


def delimited_reader(delimiter: str) -> Reader:
    quoted = delimiter == ","

    def read(fh: IO[bytes], split: Split, config: ReaderConfig, cursor: Cursor) -> Iterator[Item]:
        encoding = check_encoding(config.encoding)
        _raise_field_size_limit()
        shard, limit = split.shard, config.max_line_bytes
        end = None if split.end < 0 else split.end
        lines = iter_lines(fh, end=None if split.start else end, keep=limit, quoted=quoted)
        header = _header(lines, delimiter, config, encoding)
        if header is None:
            return  # empty file, or only blank lines
        _check_columns(shard, header, config)
        if split.start:  # a later split: its start is a record boundary (plan_splits)
            lines.close()
            fh.seek(split.start)
            lines = iter_lines(fh, offset=split.start, end=end, keep=limit, quoted=quoted)
        columns = {name: i for i, name in enumerate(header)}
        text_i = columns[config.text_field]
        id_i = columns.get(config.id_field)
        title_i = columns.get(config.title_field) if config.title_field else None
        reserved = {text_i, id_i, title_i}
        number = split.first_position - 1
        for line in lines:
            if _skip(line, len(header), encoding, delimiter):
                continue
            number += 1
            cursor.next = number + 1
            fallback = line_id(shard.name, number)
            if line.cut:
                yield too_long(number, fallback, line.length, limit, "row", line.data[: EXCERPT + 1])
                continue
            try:
                rows = _rows(line.data, delimiter, encoding)
            except csv.Error as exc:
                yield ReadError(number, fallback, r.INVALID_ROW, f"row {number}: {exc}")
                continue
            if len(rows) != 1:
                yield ReadError(
                    number, fallback, r.INVALID_ROW,
                    f"row {number}: a quote inside an unquoted field joined {len(rows)} lines into one "
                    "record; quote the whole field (RFC 4180) or read the file as tsv",
                    bytes_excerpt(line.data),
                )
                continue
            (row,) = rows
            joined = delimiter.join(row)
            if r.has_surrogates(joined):
                yield ReadError(
                    number, fallback, r.INVALID_UTF8,
                    f"row {number} holds bytes that are not valid {encoding}",
                    bytes_excerpt(joined.encode(encoding, "surrogateescape")),
                )
                continue
            if len(row) != len(header):
                yield ReadError(
                    number, fallback, r.INVALID_ROW,
                    f"row {number} has {len(row)} fields, the header has {len(header)}", excerpt(joined),
                )
                continue
            yield RawRecord(
                number,
                row[id_i] if id_i is not None and row[id_i] != "" else fallback,
                row[text_i],
                metadata={header[i]: v for i, v in enumerate(row) if i not in reserved},
                title=row[title_i] or None if title_i is not None else None,
            )

    return read


read_csv = delimited_reader(",")
read_tsv = delimited_reader("\t")
