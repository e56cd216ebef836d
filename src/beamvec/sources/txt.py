"""txt: one record per non-blank line; its id is `<shard>:<line>`.

A line longer than ``max_text_chars`` bytes is never held whole: its prefix
is kept (cut at a character boundary), the rest skipped, and the record is
marked ``cut`` so that prepare truncates or dead-letters it.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from typing import IO

from beamvec.records import RawRecord, Split, line_id
from beamvec.sources.base import Cursor, Item, ReaderConfig, bad_bytes, check_encoding, strip_bom
from beamvec.sources.lines import iter_lines, start_lines


def read_txt(fh: IO[bytes], split: Split, config: ReaderConfig, cursor: Cursor) -> Iterator[Item]:
    encoding = check_encoding(config.encoding)
    offset = start_lines(fh, split)
    end = None if split.end < 0 else split.end
    number = split.first_position - 1
    for line in iter_lines(fh, offset=offset, end=end, keep=config.max_text_chars):
        number += 1
        cursor.next = number + 1
        if line.blank:
            continue
        data = strip_bom(line.data, line.offset, encoding)
        if not line.cut and data.endswith(b"\r"):
            data = data[:-1]
        try:
            if line.cut:  # the kept prefix may end inside a character: drop that part
                text = codecs.getincrementaldecoder(encoding)().decode(data, final=False)
            else:
                text = data.decode(encoding)
        except UnicodeDecodeError as exc:
            yield bad_bytes(split, number, data, exc, encoding)
            continue
        if not line.cut and not text.strip():
            continue
        yield RawRecord(number, line_id(split.shard.name, number), text, cut=line.cut)
