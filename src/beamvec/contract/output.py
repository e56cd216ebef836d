"""An output root on any fsspec store, and how small files are written there.

Commit rules, on every store:
- local disk: write under ``_tmp/`` and rename into place (atomic on POSIX);
- object stores (gs://, s3://, memory://): write under the final name; the
  object becomes visible only when its upload completes, so no rename (which
  is copy + delete there) is ever needed.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from beamvec.contract.layout import TMP_DIR
from beamvec.contract.schema import write_options

#: Staged files of another run untouched this long belong to a dead run
#: (a live run holds the output's lease and renews it every 30 s).
STALE_STAGING_S = 120.0

def _newest_mtime(fs: Any, entry: dict[str, Any]) -> float:
    """The latest modification time of a staged file, or of anything in a run's folder."""
    times = [float(entry.get("mtime") or 0)]
    if entry.get("type") == "directory":
        with contextlib.suppress(FileNotFoundError):
            times += [float(i.get("mtime") or 0) for i in fs.find(entry["name"], detail=True).values()]
    return max(times)


class Output:
    """An output root on any fsspec store, and the paths inside it."""

    def __init__(
        self, root: str, storage_options: dict[str, Any] | None = None, run_id: str = ""
    ) -> None:
        self.fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
        self.root = path.rstrip("/")
        self.url = root.rstrip("/")
        self.renames = isinstance(self.fs, LocalFileSystem)
        #: Files are staged under ``_tmp/<run_id>/``: one run never touches another's.
        self.run_id = run_id

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def write_table(self, final: str, table: pa.Table) -> None:
        """Write a small Parquet file atomically."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **write_options(table.schema))
        self.write_bytes(final, sink.getvalue().to_pybytes())

    def remove_tree(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)

    def staging(self, final: str) -> str:
        """Where to write ``final`` before it is committed."""
        if not self.renames:
            return final
        name = final.rsplit("/", 1)[-1]
        return self.path(TMP_DIR, *([self.run_id] if self.run_id else []), f"{uuid.uuid4().hex}.{name}")

    def commit(self, staged: str, final: str) -> None:
        if staged != final:
            self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            self.fs.mv(staged, final)

    def makedirs(self, path: str) -> None:
        if self.renames:
            self.fs.makedirs(path, exist_ok=True)

    def write_bytes(self, final: str, data: bytes) -> None:
        """Write a small file atomically (manifest, _SUCCESS)."""
        staged = self.staging(final)
        self.makedirs(staged.rsplit("/", 1)[0])
        with self.fs.open(staged, "wb") as fh:
            fh.write(data)
        self.commit(staged, final)

    def read_json(self, final: str) -> dict[str, Any] | None:
        try:
            with self.fs.open(final, "rb") as fh:
                return json.loads(fh.read())
        except FileNotFoundError:
            return None

    def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path)

    def clean_staging(self, older_than: float = STALE_STAGING_S) -> list[str]:
        """Remove what crashed runs left under ``_tmp/`` (local disk only):
        entries of other runs untouched for ``older_than`` seconds, never this
        run's nor a live one's (a run holding the lease renews it far more
        often). Returns what was removed."""
        tmp = self.path(TMP_DIR)
        if not self.renames or not self.fs.exists(tmp):
            return []
        removed = []
        cutoff = time.time() - older_than
        for entry in self.fs.ls(tmp, detail=True):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if name == self.run_id or _newest_mtime(self.fs, entry) > cutoff:
                continue
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(entry["name"], recursive=True)
                removed.append(entry["name"])
        return removed

    def finish_staging(self) -> None:
        """Remove this run's staging folder, and ``_tmp/`` when it is empty."""
        if not self.renames or not self.run_id:
            return
        self.remove_tree(self.path(TMP_DIR, self.run_id))
        with contextlib.suppress(OSError):
            self.fs.rmdir(self.path(TMP_DIR))
