"""Decompressed lines that survive a damaged stretch of a compressed file.

gzip, zstd and bzip2 files are sequences of independent members (frames,
streams): `cat a.gz b.gz`, bgzip, pigz --independent, pzstd and pbzip2 write
many. Inside one member a damaged byte loses the rest of that member (deflate,
zstd blocks and bzip2's bit-aligned blocks cannot be re-entered), but the next
member decodes on its own. ``LineResync`` skips from a damaged stretch to the
next member that decodes, and hands its reader whole lines only: the line
broken by each gap is dropped on both sides, so no half line is ever embedded.
A single-member file (plain `gzip`, `zstd`, `bzip2`) cannot be resumed: the
rest of it is lost, and the gap says so.

Each gap is recorded (``Gap``) for the split reader to report as a dead letter
naming the compressed bytes lost and, from the lines per byte read so far, about
how many records they held.
"""

from __future__ import annotations

import bz2
import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import zstandard

from beamvec.sources.base import CHUNK

#: Bytes of compressed input fed to a decoder at a time, and decoded bytes
#: taken from it at a time where the decoder can stop early (zlib): bounds
#: one call's output. zstd and bzip2 cannot stop early: they get small pieces.
FEED = 16 * 1024
SMALL_FEED = 2 * 1024
OUT = 64 * 1024
#: Output of a member, held until the member proves itself (ends cleanly, its
#: checksum verified) or grows past this: a damaged member that decodes to
#: noise before its checksum fails, and a false start found by resynchronising,
#: never reach the reader. (bgzip members hold at most 64 KiB; a larger member
#: is streamed past this point, unverified, as any streaming reader would.)
PROBATION = 256 * 1024
#: A partial line held past this is handed on (memory stays bounded); a gap
#: then ends it with a newline instead of dropping it.
MAX_HELD = 1024 * 1024

DECODE_ERRORS: tuple[type[BaseException], ...] = (zlib.error, zstandard.ZstdError, OSError, EOFError, ValueError)


@dataclass(frozen=True)
class Codec:
    name: str
    magic: bytes  # how a member begins
    new: Callable[[], Any]  # a decoder with decompress(), eof and unused_data
    bounded: bool = False  # decompress(data, max_length) leaves the rest in unconsumed_tail


CODECS: dict[str, Codec] = {
    "gzip": Codec("gzip", b"\x1f\x8b\x08", lambda: zlib.decompressobj(wbits=31), bounded=True),
    "zstd": Codec("zstd", b"\x28\xb5\x2f\xfd", lambda: zstandard.ZstdDecompressor().decompressobj()),
    "bz2": Codec("bz2", b"BZh", bz2.BZ2Decompressor),
}


@dataclass(frozen=True)
class Gap:
    """Compressed bytes ``start``..``end`` of the file could not be decoded."""

    start: int
    end: int
    reason: str
    resumed: bool  # reading went on at a later member (else the rest of the file is lost)
    records_estimate: int | None  # lines the lost bytes likely held, from the lines per byte so far

    def describe(self, codec: str) -> str:
        if self.start == self.end:
            return f"{self.reason}: the records after the last whole line read are lost"
        about = f", about {self.records_estimate:,} records" if self.records_estimate is not None else ""
        lost = f"compressed bytes {self.start:,}-{self.end:,} could not be decoded ({self.reason}){about}"
        if self.resumed:
            return f"{lost}; reading went on at the next {codec} member"
        return (f"{lost}; the rest of the file is lost: a {codec} member cannot be resumed after "
                "damage (files of many members, e.g. bgzip or pzstd, lose only the damaged one)")


class LineResync(io.RawIOBase):
    """The decompressed bytes of ``raw``, whole lines only, damaged stretches
    skipped and recorded in ``gaps``."""

    def __init__(self, raw: IO[bytes], codec: Codec) -> None:
        super().__init__()
        self._raw, self._codec = raw, codec
        self._buf = b""  # compressed bytes not yet consumed
        self._base = 0  # offset in the file of _buf[0]
        self._dec: Any = None  # decoder of the member in progress
        self._member_start = 0
        self._probation: list[bytes] | None = None  # output of the member, not yet trusted
        self._on_probation = 0  # bytes in it
        self._held = b""  # decoded bytes after the last newline
        self._released_partial = False  # part of the current line went out (over MAX_HELD)
        self._skip_line = False  # drop decoded bytes through the next newline (after a gap)
        self._out = b""
        self._pos = 0
        self._eof = False
        self._lines = 0  # newlines decoded, for the estimate of what a gap held
        self._decoded_from = 0  # compressed bytes behind those lines
        self.gaps: list[Gap] = []

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self._pos >= len(self._out) and not self._eof:
            self._step()
        n = min(len(b), len(self._out) - self._pos)
        b[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n

    # -- decoding --------------------------------------------------------------

    def _more(self) -> bool:
        data = self._raw.read(CHUNK)
        self._buf += data
        return bool(data)

    def _step(self) -> None:
        if not self._buf and not self._more():
            if self._dec is not None:  # cut short, not garbled: what it decoded stands
                self._trust()
                self._gap("the file ends inside a member: it is truncated", self._base, self._base, resumed=False)
            else:
                self._trust()
                if not self._skip_line:
                    self._emit_tail()
            self._eof = True
            return
        if self._dec is None:
            self._buf = self._buf.lstrip(b"\x00")  # padding between members
            if not self._buf:
                return
            while len(self._buf) < len(self._codec.magic) and self._more():
                pass
            if not self._buf.startswith(self._codec.magic):
                self._member_start = self._base
                self._resync("not the start of a member")
                return
            self._dec, self._member_start = self._codec.new(), self._base
            self._probation = []
        bounded = self._codec.bounded
        piece = self._buf[: FEED if bounded else SMALL_FEED]
        try:
            data = self._dec.decompress(piece, OUT) if bounded else self._dec.decompress(piece)
        except DECODE_ERRORS as exc:
            self._resync(_reason(exc))
            return
        used = len(piece) - (len(self._dec.unconsumed_tail) if bounded else 0)
        if self._dec.eof:
            used -= len(self._dec.unused_data)
            self._dec = None
        self._buf, self._base = self._buf[used:], self._base + used
        self._produce(data)
        if self._dec is None:
            self._trust()

    def _resync(self, reason: str) -> None:
        """Skip to the next member after the damaged one (or to the end)."""
        failed_at = self._base
        self._dec = None
        self._probation, self._on_probation = None, 0  # the damaged member's output goes with it
        search_from = max(0, self._member_start + 1 - self._base)
        while True:
            found = self._buf.find(self._codec.magic, search_from)
            if found >= 0:
                self._base += found
                self._buf = self._buf[found:]
                self._gap(reason, failed_at, self._base, resumed=True)
                return
            keep = max(0, len(self._buf) - len(self._codec.magic) + 1)
            self._base += keep
            self._buf = self._buf[keep:]
            search_from = 0
            if not self._more():
                self._base += len(self._buf)
                self._buf = b""
                self._gap(reason, failed_at, self._base, resumed=False)
                self._eof = True
                return

    def _gap(self, reason: str, start: int, end: int, resumed: bool) -> None:
        last = self.gaps[-1] if self.gaps else None
        if last is not None and last.resumed and last.end >= self._member_start:  # a false start: one gap
            start, reason = last.start, last.reason
            self.gaps.pop()
        lost = end - start
        estimate = round(lost * self._lines / self._decoded_from) if self._decoded_from and lost else None
        self.gaps.append(Gap(start, end, reason, resumed, estimate))
        # The line broken by the gap: drop what is held of it, or end what went out.
        if self._released_partial:
            self._out, self._pos = self._out[self._pos :] + b"\n", 0
        self._held, self._released_partial = b"", False
        self._skip_line = True

    # -- lines -----------------------------------------------------------------

    def _produce(self, data: bytes) -> None:
        if self._probation is not None:
            self._probation.append(data)
            self._on_probation += len(data)
            if self._on_probation > PROBATION:
                self._trust()
            return
        self._lines += data.count(b"\n")
        self._decoded_from = self._base
        self._lines_out(data)

    def _trust(self) -> None:
        if self._probation is not None:
            pieces, self._probation, self._on_probation = self._probation, None, 0
            for data in pieces:
                self._produce(data)

    def _lines_out(self, data: bytes) -> None:
        if self._skip_line:
            nl = data.find(b"\n")
            if nl < 0:
                return
            data, self._skip_line = data[nl + 1 :], False
        data = self._held + data
        nl = data.rfind(b"\n")
        ready, self._held = (data[: nl + 1], data[nl + 1 :]) if nl >= 0 else (b"", data)
        if nl >= 0:
            self._released_partial = False
        if len(self._held) > MAX_HELD:
            ready, self._held, self._released_partial = ready + self._held, b"", True
        if ready:
            self._out, self._pos = self._out[self._pos :] + ready, 0

    def _emit_tail(self) -> None:
        if self._held:
            self._out, self._pos = self._out[self._pos :] + self._held, 0
            self._held = b""


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def line_stream(raw: IO[bytes], compression: str) -> tuple[IO[bytes], list[Gap]]:
    """A buffered stream of whole lines of ``raw``, and the list its gaps are
    recorded in as it is read."""
    reader = LineResync(raw, CODECS[compression])
    return io.BufferedReader(reader, CHUNK), reader.gaps
