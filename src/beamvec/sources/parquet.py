"""Parquet: one record per row; splits are ranges of row groups.

Read a batch at a time (never the whole file: ``pre_buffer`` off), and
planned from the footer alone.
"""

from __future__ import annotations

import base64
import datetime as _dt
import decimal
from collections.abc import Iterator
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from beamvec import records as r
from beamvec.records import RawRecord, ReadError, Split, line_id
from beamvec.sources.base import (
    Cursor,
    Item,
    ReaderConfig,
    as_str,
    bytes_excerpt,
    excerpt,
    missing_column,
    parse_id,
)


def _jsonable(value: Any) -> Any:
    """Arrow's Python values made JSON-friendly for the metadata column."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


def _column_values(column: pa.Array) -> tuple[list[Any], set[int]]:
    """Python values of a column, and the rows whose strings are not valid UTF-8."""
    try:
        return column.to_pylist(), set()
    except UnicodeDecodeError:
        values: list[Any] = []
        bad: set[int] = set()
        for i in range(len(column)):
            try:
                values.append(column[i].as_py())
            except UnicodeDecodeError:
                values.append(None)
                bad.add(i)
        return values, bad


def _id(value: Any, fallback: str) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return parse_id(value, fallback)


def row_groups(fh: IO[bytes], target: int) -> tuple[list[tuple[int, int]], int]:
    """(first row group, first position) of each split after the first, from the
    footer; and the number of row groups.

    Consecutive row groups are gathered until their compressed size reaches
    ``target`` bytes.
    """
    meta = pq.ParquetFile(fh, pre_buffer=False).metadata
    cuts: list[tuple[int, int]] = []
    rows = size = 0
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        if size >= target:
            cuts.append((i, rows + 1))
            size = 0
        size += sum(group.column(j).total_compressed_size for j in range(group.num_columns))
        rows += group.num_rows
    return cuts, meta.num_row_groups


def read_parquet(fh: IO[bytes], split: Split, config: ReaderConfig, cursor: Cursor) -> Iterator[Item]:
    if not fh.read(1):
        return  # a compressed empty file
    fh.seek(0)
    shard = split.shard
    # pre_buffer (pyarrow's default) would read every row group up front: the whole file.
    pf = pq.ParquetFile(fh, pre_buffer=False)
    names = pf.schema_arrow.names
    if config.text_field not in names:
        raise missing_column(shard, "text", config.text_field, names, "--text-field")
    if config.title_field and config.title_field not in names:
        raise missing_column(shard, "title", config.title_field, names, "--title-field")
    reserved = {config.id_field, config.text_field, config.title_field}
    groups = None if split.end < 0 else list(range(split.start, split.end))
    number = split.first_position - 1
    for batch in pf.iter_batches(batch_size=1024, row_groups=groups):
        columns, bad_rows = _batch_values(batch)
        texts = columns[config.text_field]
        ids = columns.get(config.id_field)
        titles = columns.get(config.title_field) if config.title_field else None
        meta_names = [n for n in batch.schema.names if n not in reserved]
        for i, value in enumerate(texts):
            number += 1
            cursor.next = number + 1
            fallback = line_id(shard.name, number)
            raw_id = ids[i] if ids is not None else None
            record_id = _id(raw_id, fallback)
            text = value
            if not isinstance(value, str) or record_id is None or i in bad_rows:  # else: no check fails
                text = _text(number, record_id, fallback, raw_id, value, bad_rows.get(i), config)
                if isinstance(text, ReadError):
                    yield text
                    continue
            yield RawRecord(
                number,
                record_id,
                text,
                metadata={n: _jsonable(columns[n][i]) for n in meta_names},
                title=as_str(titles[i]) if titles is not None else None,
            )


def _batch_values(batch: pa.RecordBatch) -> tuple[dict[str, list[Any]], dict[int, str]]:
    """Python values by column, and the rows with a string that is not UTF-8 (and its column)."""
    columns: dict[str, list[Any]] = {}
    bad_rows: dict[int, str] = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        columns[name], bad = _column_values(column)
        for i in bad:
            bad_rows.setdefault(i, name)
    return columns, bad_rows


def _text(
    number: int, record_id: str | None, fallback: str, raw_id: Any, text: Any, bad_column: str | None,
    config: ReaderConfig,
) -> str | ReadError:
    """One row's text, or why the row is a dead letter."""
    if bad_column is not None:
        return ReadError(
            number, record_id or fallback, r.INVALID_UTF8,
            f"row {number}: column {bad_column!r} is not valid UTF-8", excerpt(repr(text)),
        )
    if record_id is None:
        return ReadError(
            number, fallback, r.INVALID_ID,
            f"row {number}: {config.id_field!r} is {type(raw_id).__name__}; "
            "ids must be strings or integers", excerpt(repr(raw_id)),
        )
    if text is None:
        return ReadError(number, record_id, r.MISSING_TEXT, f"row {number}: {config.text_field!r} is null")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            return ReadError(
                number, record_id, r.INVALID_UTF8,
                f"row {number}: {config.text_field!r} is not valid UTF-8: {exc.reason}",
                bytes_excerpt(text),
            )
    if not isinstance(text, str):
        return ReadError(
            number, record_id, r.NON_STRING_TEXT,
            f"row {number}: {config.text_field!r} is {type(text).__name__}, not a string",
            excerpt(repr(text)),
        )
    return text
