"""Where a finished job's vectors land: ``_partial/<fingerprint>/batch-<job id>.parquet``.

The pipeline's workers find them there (``route.lookup.build_batch_index``)
and count them as billed through batch. Written one row group per chunk as the
job's result file streams in, visible only once the job is read whole.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from beamvec.batchapi.journal import BatchJob
from beamvec.contract import columns as col
from beamvec.route.lookup import BATCH_PREFIX, checkpoint_dir
from beamvec.write.sink import Output, ParquetShardWriter


class CheckpointSink:
    """Streams each finished job's vectors to ``batch-<job id>.parquet``, one
    row group per chunk, visible once the job is read whole."""

    def __init__(self, output: Output, fingerprint: str, dimension: int) -> None:
        self.output, self.dimension = output, dimension
        self.schema = pa.schema([
            (col.CONTENT_HASH, pa.string()), (col.VECTOR, pa.list_(pa.float32(), dimension)),
        ])  # fmt: skip
        self.dir = checkpoint_dir(output, fingerprint)

    def __call__(self, job: BatchJob) -> CheckpointWriter:
        path = f"{self.dir}/{BATCH_PREFIX}{job.id}.parquet"
        if self.output.fs.exists(path):  # a job read again for keys it failed: keep both files
            path = f"{self.dir}/{BATCH_PREFIX}{job.id}-{secrets.token_hex(4)}.parquet"
        return CheckpointWriter(ParquetShardWriter(self.output, path, self.schema), job.id)


class CheckpointWriter:
    """One job's checkpoint file; a job without a vector leaves none."""

    def __init__(self, parquet: ParquetShardWriter, job_id: str) -> None:
        self.parquet, self.job_id = parquet, job_id

    def write(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        flat = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1)
        self.parquet.write(pa.table({
            col.CONTENT_HASH: pa.array(keys, pa.string()),
            col.VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(flat), vectors.shape[1]),
        }, schema=self.parquet.schema))  # fmt: skip

    def commit(self) -> None:
        if self.parquet.rows:
            self.parquet.commit({"batch_job": self.job_id})

    def abort(self) -> None:
        self.parquet.abort()
