"""A request file being built on the driver's disk (a stream's texts, or a
retry job's lines copied from its parent's request file), with its keys and
shards."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from typing import IO

from beamvec.batchapi.outcome import BatchSettings


@dataclass
class Spool:
    """One request file being written to disk, with its keys and shards."""

    file: IO[bytes] = field(default_factory=lambda: tempfile.TemporaryFile(prefix="beamvec-requests-"))  # noqa: SIM115 - closed by its user
    keys: list[str] = field(default_factory=list)
    shards: set[str] = field(default_factory=set)
    size: int = 0

    def add(self, key: str, line: bytes, shard: str) -> None:
        self.keys.append(key)
        self.shards.add(shard)
        self.file.write(line)
        self.size += len(line)

    def fits(self, line: bytes, settings: BatchSettings) -> bool:
        return not self.keys or (
            len(self.keys) < settings.max_requests_per_file
            and self.size + len(line) <= settings.max_file_bytes
        )


def line_key(raw: bytes) -> str | None:
    """The key of one request line (``{"key": ..., "request": ...}``)."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    key = obj.get("key") if isinstance(obj, dict) else None
    return key if isinstance(key, str) else None


