"""Records separated by newlines, read in bounded chunks.

One splitter serves txt, jsonl, csv and tsv, and the planner of splits, so a
record boundary means the same thing to the one that cuts a file and to the
ones that read its parts. A line longer than ``keep`` bytes is not held: its
first ``keep`` bytes are kept and the rest is counted and dropped, so memory
stays bounded by ``keep`` plus one chunk whatever the input.

CSV (``quoted=True``): a newline ends a record only where the number of
``"`` characters since the record's start is even, which is exactly where
RFC 4180 says a record ends. A stray quote inside an unquoted field (which RFC
4180 forbids) joins lines until the next stray quote; the csv reader reports
such a record as ``invalid_row``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from beamvec.records import Split
from beamvec.sources.base import CHUNK

#: Bytes read per call when only counting newlines (planning).
SCAN_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Line:
    """One record's bytes, without its final newline."""

    offset: int  # byte offset of its first byte in the (decompressed) stream
    data: bytes  # at most `keep` bytes of it
    length: int  # its full length in bytes
    blank: bool  # only ASCII whitespace (or nothing)
    tabs: bool = False  # blank, and holds a tab (a row of empty fields in tsv)

    @property
    def cut(self) -> bool:
        return self.length > len(self.data)


def iter_lines(
    fh: IO[bytes],
    *,
    offset: int = 0,
    end: int | None = None,
    keep: int | None = None,
    quoted: bool = False,
) -> Iterator[Line]:
    """The records of ``fh`` that start before ``end``, ``fh`` being at ``offset``.

    The record that crosses ``end`` is read through. A last line without a
    final newline is a record; an empty tail after the last newline is not.
    """
    pieces: list[bytes] = []
    kept = length = 0
    odd = False
    blank = True
    tabs = False
    start = pos = offset
    if end is not None and start >= end:
        return
    # read1 returns what one underlying read produced: when a stream turns out
    # to be corrupt, only that last piece is lost, not a whole CHUNK of lines.
    read = getattr(fh, "read1", fh.read)
    while True:
        chunk = read(CHUNK)
        if not chunk:
            break
        i, n = 0, len(chunk)
        while i < n:
            nl = chunk.find(b"\n", i)
            stop = n if nl < 0 else nl
            if stop > i:
                if quoted and chunk.count(b'"', i, stop) & 1:
                    odd = not odd
                if blank:
                    piece = chunk[i:stop]
                    blank = piece.isspace()
                    tabs = tabs or (blank and b"\t" in piece)
                if keep is None or kept < keep:
                    take = stop - i if keep is None else min(stop - i, keep - kept)
                    pieces.append(chunk[i : i + take])
                    kept += take
                length += stop - i
            if nl < 0:
                break
            i = nl + 1
            if quoted and odd:  # a newline inside a quoted field belongs to the record
                blank = False
                if keep is None or kept < keep:
                    pieces.append(b"\n")
                    kept += 1
                length += 1
                continue
            data = b"".join(pieces)
            pieces = []
            yield Line(start, data, length, blank, tabs and blank)
            kept = length = 0
            odd, blank, tabs = False, True, False
            start = pos + i
            if end is not None and start >= end:
                return
        pos += n
    if length:
        data = b"".join(pieces)
        pieces = []
        yield Line(start, data, length, blank, tabs and blank)


def skip_partial_line(fh: IO[bytes], start: int) -> int:
    """Seek ``fh`` to the first line that starts at or after ``start``; return its offset.

    The line in which ``start`` falls belongs to the split before (a record
    belongs to the split in which its first byte lies).
    """
    if start == 0:
        fh.seek(0)
        return 0
    fh.seek(start - 1)
    pos = start - 1
    while True:
        chunk = fh.read(CHUNK)
        if not chunk:
            return pos
        nl = chunk.find(b"\n")
        if nl >= 0:
            fh.seek(pos + nl + 1)
            return pos + nl + 1
        pos += len(chunk)


def line_cuts(fh: IO[bytes], target: int) -> list[tuple[int, int]]:
    """(offset, line number) of a line start near every ``target`` bytes, after 0.

    One streaming pass with ``bytes.find``/``bytes.count`` on large chunks:
    a cut is the start of the first line that begins at or after the next
    multiple of ``target`` past the previous cut.
    """
    cuts: list[tuple[int, int]] = []
    newlines = 0  # newlines before `pos`
    pos = 0
    want = target
    while True:
        chunk = fh.read(SCAN_CHUNK)
        if not chunk:
            break
        i = 0
        while pos + len(chunk) > want - 1:
            # the first newline at or after `want - 1` ends the line in which `want - 1` lies
            nl = chunk.find(b"\n", max(i, want - 1 - pos))
            if nl < 0:
                break
            newlines += chunk.count(b"\n", i, nl + 1)
            i = nl + 1
            cuts.append((pos + i, newlines + 1))
            want = pos + i + target
        newlines += chunk.count(b"\n", i)
        pos += len(chunk)
    if cuts and cuts[-1][0] >= pos:
        cuts.pop()  # a cut at the very end would start an empty split
    return cuts


def start_lines(fh: IO[bytes], split: Split) -> int:
    """Position ``fh`` at the split's first line; return that line's offset."""
    return skip_partial_line(fh, split.start) if split.start else 0
