"""The run's work list and its splits: what a run embeds, carried as one file.

The driver writes the list into the output (``write_work``); on a worker
``ReadWork`` turns its path back into shards, ``PlanSplits`` cuts a large
shard into parts, and the commit reads the list again for what was expected.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import apache_beam as beam

from beamvec.contract import CommitRecord
from beamvec.contract.layout import RUNS_DIR, WORK_FILE
from beamvec.errors import InputVanishedError
from beamvec.pipeline.worker import WorkerConfig
from beamvec.records import Shard, Split
from beamvec.sources import plan_splits
from beamvec.write.sink import Output


def write_work(output: Output, run_id: str, todo: list[Shard], expected: list[str],
               carried: list[CommitRecord]) -> str:
    """The run's work list, in the output: the job graph then carries one path
    whatever the number of shards (Dataflow refuses graphs over ~10 MB)."""
    lines = [json.dumps({"todo": dataclasses.asdict(s)}) for s in todo]
    lines += [json.dumps({"expected": name}) for name in expected]
    lines += [json.dumps({"carried": rec.to_json()}) for rec in carried]
    path = output.path(RUNS_DIR, run_id, WORK_FILE)
    output.write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def read_work(output: Output, path: str) -> tuple[list[Shard], list[str], list[CommitRecord]]:
    todo: list[Shard] = []
    expected: list[str] = []
    carried: list[CommitRecord] = []
    with output.fs.open(path, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            item = json.loads(line)
            if "todo" in item:
                todo.append(Shard(**item["todo"]))
            elif "expected" in item:
                expected.append(item["expected"])
            else:
                carried.append(CommitRecord.from_json(item["carried"]))
    return todo, expected, carried


class ReadWork(beam.DoFn):
    """The work list's path in, its shards out, read on a worker."""

    def __init__(self, output: str, storage_options: dict[str, object]) -> None:
        self.output = output
        self.storage_options = storage_options

    def process(self, path: str) -> Iterator[Shard]:
        yield from read_work(Output(self.output, self.storage_options), path)[0]


class PlanSplits(beam.DoFn):
    """A shard in, its splits out: a large uncompressed file becomes byte (or
    row-group) ranges that different workers embed."""

    def __init__(self, config: WorkerConfig, target_bytes: int) -> None:
        self.config = config
        self.target_bytes = target_bytes

    def process(self, shard: Shard) -> Iterator[Split]:
        try:
            yield from plan_splits(shard, self.config.reader, self.config.storage_options, self.target_bytes)
        except InputVanishedError:
            yield Split.whole(shard)  # the worker records it as a failed shard
