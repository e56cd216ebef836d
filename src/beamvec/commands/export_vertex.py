"""Export vectors as Vertex AI Vector Search input files for a batch update.

The documented input ("Input data format and structure", Vertex AI Vector
Search): ``.json`` files directly under the batch root, one record per line,
``{"id": ..., "embedding": [...], "restricts": [{"namespace": ..., "allow":
[...]}]}``; at most 5000 objects under the batch root; a ``delete/``
subdirectory of text files with one id per line; an id may not be both in a
data file and in a delete file. The data files are cut at ``max_file_bytes``
(beamvec's choice: the page documents no per-file size).

Which ids to delete needs the ids each vector file held when it was last
exported: kept beside the export's state, ``_exports/<key>.ids.parquet``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beamvec.commands import Output, iter_batches
from beamvec.commands.export_state import ExportPlan, ExportResult, absolute, state_path
from beamvec.contract import columns as col
from beamvec.errors import UsageError

MAX_OBJECTS = 5000  # documented: objects in a batch root directory
DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024
IDS_SUFFIX = ".ids.parquet"


def previous_ids(output: Output, key: str) -> dict[str, list[str]]:
    """Ids by vector file, as the last export of this state sent them."""
    path = state_path(output, key, IDS_SUFFIX)
    if not output.fs.exists(path):
        return {}
    with output.fs.open(path, "rb") as fh:
        table = pq.read_table(fh)
    found: dict[str, list[str]] = {}
    for rel, rid in zip(table.column("file").to_pylist(), table.column(col.ID).to_pylist(), strict=True):
        found.setdefault(rel, []).append(rid)
    return found


def save_ids(output: Output, key: str, ids: dict[str, list[str]]) -> None:
    files = [rel for rel, values in ids.items() for _ in values]
    flat = [rid for values in ids.values() for rid in values]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"file": pa.array(files, pa.string()), col.ID: pa.array(flat, pa.string())}), sink)
    output.write_bytes(state_path(output, key, IDS_SUFFIX), sink.getvalue().to_pybytes())


def record(rid: str, vector: np.ndarray, metadata: str | None, restrict: Sequence[str]) -> dict[str, Any]:
    """One Vector Search datapoint; restricts from the chosen metadata fields (strings)."""
    out: dict[str, Any] = {"id": rid, "embedding": [float(x) for x in vector]}
    if restrict:
        fields = json.loads(metadata) if metadata else {}
        restricts = []
        for name in restrict:
            value = fields.get(name)
            if value is None:
                continue
            values = value if isinstance(value, list) else [value]
            restricts.append({"namespace": name, "allow": [str(v) for v in values]})
        if restricts:
            out["restricts"] = restricts
    return out


class _Files:
    """Numbered .json files under the batch root, each under a byte budget."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, max_bytes: int) -> None:
        self.fs, self.root, self.max_bytes = fs, root, max_bytes
        self.count = 0
        self.buffer = io.BytesIO()

    def add(self, line: bytes) -> None:
        if self.buffer.tell() and self.buffer.tell() + len(line) > self.max_bytes:
            self.flush()
        self.buffer.write(line)

    def flush(self) -> None:
        if not self.buffer.tell():
            return
        if self.count >= MAX_OBJECTS - 1:  # one object stays free for the delete/ directory
            raise UsageError(
                f"more than {MAX_OBJECTS} files would go under {self.root}, above Vector Search's limit "
                "per batch root; raise --max-file-mb"
            )
        with self.fs.open(f"{self.root}/vectors-{self.count:05d}.json", "wb") as fh:
            fh.write(self.buffer.getvalue())
        self.count += 1
        self.buffer = io.BytesIO()


def _rows(output: Output, rel: str) -> Iterator[tuple[str, np.ndarray, str | None]]:
    for batch in iter_batches(output, absolute(output, rel), [col.ID, col.VECTOR, col.METADATA]):
        ids = batch.column(col.ID).to_pylist()
        column = batch.column(col.VECTOR)
        matrix = column.flatten().to_numpy(zero_copy_only=False).reshape(len(ids), column.type.list_size)
        metadata = (batch.column(col.METADATA).to_pylist() if col.METADATA in batch.schema.names
                    else [None] * len(ids))
        yield from zip(ids, matrix, metadata, strict=True)


def export_to_vertex(
    output: Output,
    plan: ExportPlan,
    directory: str,
    restrict: Sequence[str],
    before: dict[str, list[str]],
    storage_options: dict[str, Any] | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> tuple[ExportResult, dict[str, list[str]]]:
    """Write the batch root; returns the counts and the ids by file to remember."""
    fs, root = fsspec.core.url_to_fs(directory, **(storage_options or {}))
    root = root.rstrip("/")
    if fs.exists(root) and fs.find(root):
        raise UsageError(
            f"{directory} is not empty: Vector Search reads every file of a batch root, so give each "
            "export its own directory (e.g. .../2026-01-15/)"
        )
    fs.makedirs(root, exist_ok=True)
    files = _Files(fs, root, max_file_bytes)
    after = {rel: ids for rel, ids in before.items() if rel in plan.current and rel not in plan.changed}
    sent: set[str] = set()
    rows_sent = 0
    for rel in plan.changed:
        kept = after.setdefault(rel, [])
        kept.clear()
        for rid, vector, metadata in _rows(output, rel):
            files.add((json.dumps(record(rid, vector, metadata, restrict)) + "\n").encode())
            kept.append(rid)
            sent.add(rid)
            rows_sent += 1
    files.flush()
    # ids the index holds from changed or removed files that no file sends any more
    stale = {rid for rel in (*plan.changed, *plan.removed) for rid in before.get(rel, [])}
    still = {rid for ids in after.values() for rid in ids}
    deleted = sorted(stale - sent - still)
    if deleted:
        fs.makedirs(f"{root}/delete", exist_ok=True)
        with fs.open(f"{root}/delete/ids-00000.txt", "wb") as fh:
            fh.write(("\n".join(deleted) + "\n").encode())
    result = ExportResult(
        f"vertex-vector-search batch root {directory}", len(plan.changed), rows_sent, len(plan.unchanged),
        len(plan.removed), len(deleted), f"{files.count} data files" + (", 1 delete file" if deleted else ""),
    )
    return result, after
