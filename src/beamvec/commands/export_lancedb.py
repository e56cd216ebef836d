"""Export vectors into a LanceDB table: upsert by id, only what changed.

Each row carries two columns besides the output's own: ``beamvec_file``,
the vector file it came from, and ``beamvec_export``, when it was sent.
A changed file's rows are upserted (``merge_insert`` on ``id``), then the
rows still tagged with that file and an older export are deleted: records
that left the shard. A vanished file's rows are deleted by ``beamvec_file``;
after ``--full``, every row this export did not send is deleted, so the table
matches the output even when the export's state was lost.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from beamvec.commands import Output, iter_batches, warn
from beamvec.commands.export_state import ExportPlan, ExportResult, absolute
from beamvec.contract import columns as col
from beamvec.contract.schema import vector_schema
from beamvec.errors import UsageError

FILE_COLUMN = "beamvec_file"
EXPORT_COLUMN = "beamvec_export"
COLUMNS = vector_schema(1).names  # the output's columns, in its order
#: Rows per IVF partition: lancedb's own default target (``IvfPq.target_partition_size``).
PARTITION_ROWS = 8192
#: Below two partitions' worth an IVF index only adds PQ's error: the table is
#: searched exactly (brute force) instead, which is fast at that size. (On 505
#: rows, sqrt(rows) = 22 partitions trained 1 and put a row 0.09 from itself.)
MIN_INDEX_ROWS = 2 * PARTITION_ROWS


def _lancedb() -> Any:
    try:
        import lancedb  # optional heavy dependency: the `lancedb` extra
        import lancedb.index
    except ImportError as exc:
        raise UsageError("--to lancedb needs the lancedb package: pip install 'beamvec[lancedb]'") from exc
    return lancedb


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _tagged(batch: pa.RecordBatch, rel: str, generation: int) -> pa.Table:
    table = pa.Table.from_batches([batch])
    table = table.append_column(FILE_COLUMN, pa.array([rel] * len(table), pa.string()))
    return table.append_column(EXPORT_COLUMN, pa.array([generation] * len(table), pa.int64()))


def export_to_lancedb(
    output: Output, plan: ExportPlan, uri: str, table_name: str, build_index: bool = False
) -> ExportResult:
    """Upsert the plan's changed files, delete the removed ones; optionally build an ANN index."""
    lancedb = _lancedb()
    db = lancedb.connect(uri)
    try:
        table = db.open_table(table_name)
    except (ValueError, FileNotFoundError):
        table = None
    generation = time.time_ns()
    rows_sent = ids_deleted = 0
    for rel in plan.changed:
        for batch in iter_batches(output, absolute(output, rel), COLUMNS):
            if not batch.num_rows:
                continue
            data = _tagged(batch, rel, generation)
            if table is None:
                table = db.create_table(table_name, schema=data.schema)
            try:
                table.merge_insert(col.ID).when_matched_update_all().when_not_matched_insert_all().execute(data)
            except Exception as exc:  # noqa: BLE001 - lance reports schema clashes as plain errors
                raise UsageError(
                    f"cannot upsert into LanceDB table {table_name} at {uri}: {str(exc).splitlines()[0]}; "
                    "a table made from another model or dimension needs a new --table"
                ) from exc
            rows_sent += data.num_rows
        if table is not None:  # rows of this file that this export did not send: records gone from it
            stale = f"{FILE_COLUMN} = {_quote(rel)} AND {EXPORT_COLUMN} < {generation}"
            ids_deleted += table.count_rows(stale)
            table.delete(stale)
    removed = set(plan.removed)
    for rel in plan.removed:
        if table is not None:
            gone = f"{FILE_COLUMN} = {_quote(rel)}"
            ids_deleted += table.count_rows(gone)
            table.delete(gone)
    if plan.full and table is not None:
        files, swept = _sweep(table, generation)
        removed |= files
        ids_deleted += swept
    note = ""
    if build_index and table is not None:
        note = _index(table)
    return ExportResult(
        f"lancedb {uri} table {table_name}", len(plan.changed), rows_sent, len(plan.unchanged),
        len(removed), ids_deleted, note,
    )


def index_partitions(rows: int) -> int:
    """IVF partitions for a table of ``rows``: 0 when an index would not pay off."""
    return 0 if rows < MIN_INDEX_ROWS else rows // PARTITION_ROWS


def _sweep(table: Any, generation: int) -> tuple[set[str], int]:
    """After a full export, rows this export did not send: files that left
    the output though no state remembers them (a lost or older ``_exports/``).
    Returns their files and how many rows were deleted."""
    stale = f"{EXPORT_COLUMN} < {generation}"
    files = table.search().where(stale).select([FILE_COLUMN]).limit(None).to_arrow().column(FILE_COLUMN)
    if not len(files):
        return set(), 0
    table.delete(stale)
    return {f for f in files.to_pylist() if f}, len(files)


def _index(table: Any) -> str:
    rows = table.count_rows()
    partitions = index_partitions(rows)
    if not partitions:
        warn(f"no ANN index built: {rows:,} rows are searched exactly, which is fast at this size; "
             f"an IVF_PQ index pays off from {MIN_INDEX_ROWS:,} rows ({PARTITION_ROWS:,} per partition)")
        return f"no index ({rows:,} rows < {MIN_INDEX_ROWS:,}: exact search)"
    dimension = table.schema.field(col.VECTOR).type.list_size
    sub_vectors = dimension // 16 if dimension % 16 == 0 else max(1, dimension // 8)
    config = _lancedb().index.IvfPq(
        distance_type="cosine", num_partitions=partitions, num_sub_vectors=sub_vectors,
    )
    table.create_index(col.VECTOR, config=config, replace=True)
    return f"IVF_PQ index (cosine) over {rows:,} rows in {partitions} partitions"
