"""Decompressed byte streams (gzip, zstd, bz2 or none), and telling corrupt bytes
from a fault in reaching them."""

from __future__ import annotations

import io
import lzma
import zlib
from typing import IO, Any

import fsspec.compression
import pyarrow as pa
import zstandard

from beamvec.sources.base import CHUNK


class ZstdReader(io.RawIOBase):
    """zstd decompression that reads every frame and fails on a truncated one.

    fsspec's zstd wrapper stops after the first frame (pzstd and concatenated
    files have many) and returns a clean EOF on a truncated frame: both would
    silently lose records.
    """

    #: Compressed bytes fed to the decoder at a time: bounds what one call inflates to.
    _FEED = 16 * 1024

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._obj: Any = None  # decoder of the frame in progress, None between frames
        self._pending = b""  # compressed bytes not yet fed
        self._out = b""  # decompressed bytes not yet returned
        self._pos = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self._pos >= len(self._out) and not self._eof:
            self._fill()
        n = min(len(b), len(self._out) - self._pos)
        b[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n

    def _fill(self) -> None:
        if not self._pending:
            self._pending = self._raw.read(CHUNK)
            if not self._pending:
                if self._obj is not None:
                    raise zstandard.ZstdError("zstd stream is truncated: input ended inside a frame")
                self._eof = True
                return
        data, self._pending = self._pending[: self._FEED], self._pending[self._FEED :]
        out = []
        while data:
            if self._obj is None:
                self._obj = self._dctx.decompressobj()
            out.append(self._obj.decompress(data))
            if self._obj.eof:  # frame done; what follows is the next frame
                data = self._obj.unused_data
                self._obj = None
            else:
                data = b""
        self._out, self._pos = b"".join(out), 0


def decompressed(raw: IO[bytes], compression: str | None) -> IO[bytes]:
    """A stream of the decompressed bytes of ``raw`` (``raw`` itself when not compressed)."""
    if compression is None:
        return raw
    if compression == "zstd":
        return io.BufferedReader(ZstdReader(raw), CHUNK)
    return fsspec.compression.compr[compression](raw, mode="rb")


def is_corrupt(exc: BaseException) -> bool:
    """A fault in the bytes of the file (report it, keep going) vs. one in reaching them.

    Transport and permission errors are raised, so the runner retries the
    shard instead of committing a truncated one.
    """
    if isinstance(
        exc,
        (FileNotFoundError, PermissionError, IsADirectoryError, ConnectionError, TimeoutError),
    ):
        return False
    if isinstance(
        exc,
        (EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError, pa.ArrowInvalid, pa.ArrowNotImplementedError),
    ):
        return True  # ArrowNotImplementedError: e.g. a Parquet codec this pyarrow lacks
    # gzip.BadGzipFile, bz2 "Invalid data stream", pyarrow IO errors on bad pages:
    # OSErrors without an errno come from decoders, not from the OS or network.
    return isinstance(exc, OSError) and exc.errno is None
