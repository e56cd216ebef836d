"""jsonl: one JSON object per line; id, text and title from named fields.

A line over ``max_line_bytes`` is dead-lettered as ``text_too_long`` without
being parsed (or held: only that many bytes of it are ever in memory).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import IO, Any

from beamvec import records as r
from beamvec.records import RawRecord, ReadError, Split, line_id
from beamvec.sources.base import (
    EXCERPT,
    Cursor,
    Item,
    ReaderConfig,
    as_str,
    bad_bytes,
    check_encoding,
    excerpt,
    parse_id,
    strip_bom,
    too_long,
)
from beamvec.sources.lines import iter_lines, start_lines

_LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _has_lone_surrogates(obj: Any) -> bool:
    return r.has_surrogates(json.dumps(obj, ensure_ascii=False))


def read_jsonl(fh: IO[bytes], split: Split, config: ReaderConfig, cursor: Cursor) -> Iterator[Item]:
    encoding = check_encoding(config.encoding)
    offset = start_lines(fh, split)
    end = None if split.end < 0 else split.end
    number = split.first_position - 1
    limit = config.max_line_bytes
    for line in iter_lines(fh, offset=offset, end=end, keep=limit):
        number += 1
        cursor.next = number + 1
        if line.blank:
            continue
        fallback = line_id(split.shard.name, number)
        if line.cut:
            yield too_long(number, fallback, line.length, limit, "line", line.data[: EXCERPT + 1])
            continue
        data = strip_bom(line.data, line.offset, encoding)
        try:
            text_line = data.decode(encoding)
        except UnicodeDecodeError as exc:
            yield bad_bytes(split, number, data, exc, encoding)
            continue
        if not text_line.strip():
            continue
        yield _record(number, fallback, data, text_line, config)


def _record(number: int, fallback: str, data: bytes, text_line: str, config: ReaderConfig) -> Item:
    """The record of one line, or why it cannot be one."""
    raw = excerpt(text_line)
    try:
        obj = json.loads(text_line)
    except json.JSONDecodeError as exc:
        return ReadError(number, fallback, r.INVALID_JSON, f"line {number}: {exc.msg} at column {exc.colno}", raw)
    except RecursionError:
        return ReadError(number, fallback, r.INVALID_JSON, f"line {number}: JSON nested too deeply", raw)
    if not isinstance(obj, dict):
        return ReadError(
            number, fallback, r.INVALID_ROW,
            f"line {number} holds a JSON {type(obj).__name__}, not an object", raw,
        )
    raw_id = obj.get(config.id_field)
    record_id = parse_id(raw_id, fallback)
    if _LONE_SURROGATE_ESCAPE.search(data) and _has_lone_surrogates(obj):
        # "\udc80" is valid JSON but not valid Unicode: it cannot be written out.
        keep_id = record_id is not None and not r.has_surrogates(record_id)
        return ReadError(
            number, record_id if keep_id else fallback, r.INVALID_UTF8,
            f"line {number} holds an unpaired surrogate escape (\\uD800-\\uDFFF)", raw,
        )
    if record_id is None:
        return ReadError(
            number, fallback, r.INVALID_ID,
            f"line {number}: {config.id_field!r} is a JSON {_json_type(raw_id)}; ids must be strings or integers",
            raw,
        )
    text = obj.get(config.text_field)
    if config.text_field not in obj:
        return ReadError(number, record_id, r.MISSING_TEXT, f"line {number} has no {config.text_field!r} field", raw)
    if text is None:
        return ReadError(number, record_id, r.MISSING_TEXT, f"line {number}: {config.text_field!r} is null", raw)
    if not isinstance(text, str):
        return ReadError(
            number, record_id, r.NON_STRING_TEXT,
            f"line {number}: {config.text_field!r} is a JSON {type(text).__name__}, not a string", raw,
        )
    reserved = {config.id_field, config.text_field, config.title_field}
    return RawRecord(
        number,
        record_id,
        text,
        metadata={k: v for k, v in obj.items() if k not in reserved},
        title=as_str(obj.get(config.title_field)) if config.title_field else None,
    )


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", float: "number with a fraction"}.get(type(value), type(value).__name__)
