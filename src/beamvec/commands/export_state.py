"""What an export already sent: so that a nightly export sends only changes.

The state of one destination is a small JSON file in the output,
``_exports/<kind>-<hash>.json``: each exported vector file (its path under
the output) with its size and a digest of its beamvec footer (the shard's
commit record: input fingerprint, counts, config). A file whose size or
footer changed is sent again; a file that disappeared (``--prune``, or a
shard whose input was removed) has its ids deleted at the destination. The
state is written only after the destination took the change, so an export
that fails is simply redone next time (upserts by id are idempotent).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass

from beamvec.commands import Output, vector_files
from beamvec.contract import read_footer
from beamvec.contract.fence import fenced
from beamvec.contract.layout import EXPORTS_DIR as EXPORTS_DIR

STATE_VERSION = 1


@dataclass(frozen=True)
class FileState:
    size: int
    footer: str  # sha256 of the footer JSON, sorted keys
    rows: int


@dataclass(frozen=True)
class ExportPlan:
    """Vector files (paths relative to the output root) by what the export does with them."""

    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    removed: tuple[str, ...]
    current: dict[str, FileState]
    #: ``--full``: every file is sent again and the destination is left
    #: holding those files' rows only, whatever the state remembers.
    full: bool = False


@dataclass(frozen=True)
class ExportResult:
    """Counts of one export, printed and returned (tests check them)."""

    destination: str
    files_sent: int
    rows_sent: int
    files_unchanged: int
    files_removed: int
    ids_deleted: int
    note: str = ""

    def line(self) -> str:
        text = (
            f"beamvec export: {self.destination}: sent {self.rows_sent:,} vectors from "
            f"{self.files_sent:,} new or changed vector files, skipped {self.files_unchanged:,} "
            f"unchanged, deleted {self.ids_deleted:,} ids of {self.files_removed:,} files no longer "
            "in the output"
        )
        return text + (f"; {self.note}" if self.note else "")


def state_key(kind: str, *identity: str) -> str:
    """File name of a destination's state: readable kind, hashed identity."""
    digest = hashlib.sha256("\0".join([kind, *identity]).encode()).hexdigest()[:12]
    return f"{kind}-{digest}"


def state_path(output: Output, key: str, suffix: str = ".json") -> str:
    return output.path(EXPORTS_DIR, key + suffix)


def relative(output: Output, path: str) -> str:
    return path[len(output.root) + 1 :] if path.startswith(output.root + "/") else path


def absolute(output: Output, rel: str) -> str:
    return output.path(rel)


def file_state(output: Output, path: str) -> FileState:
    meta = read_footer(output.fs, path)
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()
    rows = int((meta.get("shard") or {}).get("embedded", -1))
    return FileState(size=int(output.fs.info(path)["size"]), footer=digest, rows=rows)


def load_state(output: Output, key: str) -> dict[str, FileState]:
    found = output.read_json(state_path(output, key))
    if not found or found.get("version") != STATE_VERSION:
        return {}
    return {rel: FileState(**entry) for rel, entry in found.get("files", {}).items()}


def save_state(output: Output, key: str, destination: str, files: dict[str, FileState]) -> None:
    body = {
        "version": STATE_VERSION,
        "destination": destination,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {rel: asdict(state) for rel, state in sorted(files.items())},
    }
    with fenced(output):  # only while no other run took over an output this process holds
        output.write_bytes(state_path(output, key), json.dumps(body, indent=1).encode())


def plan_export(output: Output, previous: dict[str, FileState], full: bool = False) -> ExportPlan:
    """What to send and delete. ``full`` sends every file again but still
    deletes the files the previous state holds and the output no longer does."""
    current = {relative(output, p): file_state(output, p) for p in vector_files(output)}
    changed = tuple(rel for rel, state in current.items() if full or previous.get(rel) != state)
    unchanged = tuple(rel for rel in current if rel not in changed)
    removed = tuple(rel for rel in previous if rel not in current)
    return ExportPlan(changed, unchanged, removed, current, full)

