"""What writing vector files costs: beamvec's Parquet options against pyarrow's
defaults with zstd (what beamvec wrote before), side by side in one run.

Unit vectors as an embedding model returns them (every float distinct) at 768
and 3,072 dimensions, written the way the worker writes a shard (tables of
2,048 rows, one file), then read back one row group at a time (what a reuse
lookup pays for a row group it has not cached). Best of ``--repeat`` runs.

    python benchmarks/write_cost.py [--rows 16384] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beamvec.pipeline.shard_files import FLUSH_ROWS
from beamvec.records import Embedded, Record, content_hash
from beamvec.write.sink import vector_table, write_options


def table_of(rows: int, dim: int) -> pa.Table:
    """Unit vectors in the worker's own table (``sink.vector_table``)."""
    matrix = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    records = [Record(f"id-{i}", f"text {i}", content_hash(f"text {i}"), 12, False, i + 1) for i in range(rows)]
    return vector_table([Embedded(r, v) for r, v in zip(records, matrix, strict=True)], "in/part-00001.jsonl", dim)


def measure(table: pa.Table, options: dict[str, Any], repeat: int) -> tuple[float, float, float]:
    """Seconds to write, bytes written, seconds to read one row group (best of ``repeat``)."""
    write, read, data = float("inf"), float("inf"), b""
    for _ in range(repeat):
        sink = io.BytesIO()
        started = time.process_time()
        writer = pq.ParquetWriter(sink, table.schema, **options)
        for start in range(0, table.num_rows, FLUSH_ROWS):
            writer.write_table(table.slice(start, FLUSH_ROWS))
        writer.close()
        write = min(write, time.process_time() - started)
        data = sink.getvalue()
        groups = pq.ParquetFile(io.BytesIO(data)).num_row_groups
        started = time.process_time()
        for g in range(groups):
            pq.ParquetFile(io.BytesIO(data)).read_row_group(g, columns=["content_hash", "vector"])
        read = min(read, (time.process_time() - started) / groups)
    return write, float(len(data)), read


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16_384)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.rows:,} unit vectors, written in tables of {FLUSH_ROWS:,} rows; CPU time, best of {args.repeat}\n")
    print("| dims | writer | CPU ms per 1,000 rows | file / raw floats | CPU ms to read a row group |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for dim in (768, 3072):
        table = table_of(args.rows, dim)
        raw = args.rows * dim * 4
        before = measure(table, {"compression": "zstd"}, args.repeat)
        ours = measure(table, write_options(table.schema), args.repeat)
        for name, (write, size, read) in (("pyarrow defaults + zstd (0.1)", before), ("beamvec", ours)):
            print(f"| {dim:,} | {name} | {write * 1e6 / args.rows:.1f} | {size / raw:.3f} | {read * 1e3:.1f} |")
        print(f"| {dim:,} | **ratio** | **{before[0] / ours[0]:.2f} × faster** | "
              f"**{ours[1] / before[1]:.2f} × the size** | **{before[2] / ours[2]:.2f} × faster** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
