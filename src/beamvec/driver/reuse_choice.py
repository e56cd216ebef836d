"""How reuse finds vectors for a run (and for `plan`, by the same rule): the
in-process index (lookup.py) or the join (reuse_join.py).

The index wins for small reuse sources, for runs that route few records and
for reruns in the output's order (each row group it reads serves a window of
records); the join wins for large sources met in another order (each row
group is read once per run instead of once per window). The sizes come from
the manifests and commit records; the order from a sample: the first
records of a few shards to embed, looked for in the sources' hash columns.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice, pairwise

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from beamvec.contract import OutputState, read_state
from beamvec.contract import columns as col
from beamvec.driver.resolve import JobInputs
from beamvec.errors import InputVanishedError
from beamvec.pipeline.reuse_join import JoinedKeys, JoinSpec, join_in_process
from beamvec.pipeline.reuse_stage import HASH_BYTES, Stage, bucket_count
from beamvec.pipeline.worker import FETCH_WINDOW
from beamvec.records import Record, Shard, Split
from beamvec.route.lookup import reusable_files
from beamvec.route.prepare import prepare, uncounted
from beamvec.sources import read_shard
from beamvec.write.sink import ROW_GROUP_ROWS, Output

#: The join replaces the in-process index when the reuse sources hold at least
#: this many vectors of the run's configuration ...
JOIN_MIN_VECTORS = 250_000
#: ... and the run routes at least this many records (a few of the worker's
#: fetch windows: below that, the index's random reads cost less than reading
#: every reusable vector once) ...
JOIN_MIN_RECORDS = 4 * FETCH_WINDOW
#: ... unless a sample says the records come in the sources' order.
SAMPLE_SHARDS = 3
SAMPLE_RECORDS = 64
#: Hashes of the sources read at most to find the sample (a second or two).
SAMPLE_SCAN_ROWS = 4_000_000
#: Share of the sample's consecutive found pairs that must lie a row group's span apart at most.
IN_ORDER = 0.9
#: Bytes of input a record takes, when no committed shard says better.
BYTES_PER_RECORD = 200


@dataclass(frozen=True)
class ReuseChoice:
    """How reuse will find vectors, and why (logged by `run`, printed by `plan`)."""

    by: str  # "join", "index" or "none"
    vectors: int  # reusable vectors the sources hold
    why: str

    @property
    def join(self) -> bool:
        return self.by == "join"


def reusable_vectors(state: OutputState, fingerprint: str, dimension: int) -> int:
    """Committed vectors of this configuration in an output, from its manifest
    and commit records (no vector file is opened)."""
    if state.description is not None and state.description.dimension != dimension:
        return 0
    return sum(
        rec.counts.embedded for rec in state.committed.values()
        if rec.config_fingerprint in (None, fingerprint)
    )


def bytes_per_record(state: OutputState | None) -> float:
    """Input bytes per record read, as the output's committed shards measured it."""
    sizes: dict[str, int] = {}  # every part of a shard carries the shard's size
    read = 0
    for rec in state.committed.values() if state else ():
        sizes[rec.shard_name] = max(0, rec.input_size)
        read += rec.counts.read
    size = sum(sizes.values())
    return size / read if size > 0 and read > 0 else float(BYTES_PER_RECORD)


def choose_join(vectors: int, records: int) -> bool:
    """Whether the sizes call for the join: a large reuse source and enough
    records that a random order would make the index read it many times."""
    return vectors >= JOIN_MIN_VECTORS and records >= JOIN_MIN_RECORDS


def in_order(runs: Sequence[Sequence[str]], where: dict[str, tuple[int, int]]) -> bool:
    """Whether the sampled runs of hashes sit in the sources in their order:
    most consecutive pairs found lie within a row group's span of rows of one
    file (what makes the index's row-group cache hit; a run writes its rows
    in about the input's order, reordered a little by requests in flight)."""
    found = near = 0
    for run in runs:
        for a, b in pairwise(run):
            if a in where and b in where:
                found += 1
                (fa, ra), (fb, rb) = where[a], where[b]
                near += fa == fb and abs(rb - ra) < ROW_GROUP_ROWS
    return found >= SAMPLE_RECORDS // 2 and near >= IN_ORDER * found


def sample_runs(inputs: JobInputs, todo: Sequence[Shard]) -> list[list[str]]:
    """The content hashes of the first records of a few shards, spread over the list."""
    backend, runs = inputs.backend, []
    picks = sorted({len(todo) * k // SAMPLE_SHARDS for k in range(SAMPLE_SHARDS)} - {len(todo)})
    for shard in (todo[k] for k in picks):
        items = (prepare(raw, inputs.prepare, uncounted, backend.truncate)
                 for raw in read_shard(shard, inputs.reader, inputs.storage_options))
        try:
            runs.append([item.content_hash for item in islice(
                (i for i in items if isinstance(i, Record)), SAMPLE_RECORDS)])
        except InputVanishedError:
            continue  # the workers record that shard as failed
    return runs


def locate(files: Sequence[tuple[Output, str]], wanted: set[str],
           max_rows: int | None = SAMPLE_SCAN_ROWS) -> dict[str, tuple[int, int]]:
    """(file, row) of each wanted hash, reading hash columns in order until
    all are found or ``max_rows`` rows are read (None: every row)."""
    where: dict[str, tuple[int, int]] = {}
    if not wanted:
        return where
    values, read = pa.array(sorted(wanted), pa.string()), 0
    for number, (output, path) in enumerate(files):
        try:
            with output.fs.open(path, "rb") as fh:
                row = 0
                for batch in pq.ParquetFile(fh).iter_batches(65_536, columns=[col.CONTENT_HASH]):
                    hashes = batch.column(0)
                    for at in pc.indices_nonzero(pc.is_in(hashes, value_set=values)).to_pylist():
                        where.setdefault(hashes[at].as_py(), (number, row + at))
                    row += batch.num_rows
                    read += batch.num_rows
                    if len(where) == len(wanted) or (max_rows is not None and read >= max_rows):
                        return where
        except Exception:  # noqa: BLE001 - gone or damaged: the sample just misses it
            continue
    return where


def source_states(inputs: JobInputs, own: Output | None,
                  own_state: OutputState | None) -> list[tuple[Output, OutputState]]:
    """The reuse sources in tie-breaking order (own, then each --reuse-from), with their states."""
    sources = [(own, own_state)] if own is not None else []
    sources += [(Output(url, inputs.storage_options), None) for url in inputs.bv.reuse_from or ()]
    return [(o, s or read_state(o, check_letters=False)) for o, s in sources]


def source_files(inputs: JobInputs, states: Sequence[tuple[Output, OutputState]]) -> list[tuple[Output, str]]:
    """Every reusable vector file (and checkpoint) of the sources, in order."""
    dimension, fingerprint = inputs.description.dimension, inputs.description.config_fingerprint
    return [(o, path) for o, state in states for path in reusable_files(o, fingerprint, dimension, state)]


def held(inputs: JobInputs, own: Output | None, own_state: OutputState | None, wanted: set[str]) -> set[str]:
    """Which of ``wanted`` the reuse sources hold, read from their hash
    columns without building an index (the driver's preflight, on a run
    that joins: memory grows with ``wanted``, not with the sources)."""
    if not wanted:
        return set()
    return set(locate(source_files(inputs, source_states(inputs, own, own_state)), wanted, max_rows=None))


def plan_reuse(inputs: JobInputs, own: Output | None, own_state: OutputState | None,
               todo: Sequence[Shard]) -> ReuseChoice:
    """The one choice `run` and `plan` make: the join or the index, from the sizes and the order."""
    if inputs.bv.force or not todo:
        return ReuseChoice("none", 0, "nothing to reuse")
    dimension, fingerprint = inputs.description.dimension, inputs.description.config_fingerprint
    states = source_states(inputs, own, own_state)
    vectors = sum(reusable_vectors(state, fingerprint, dimension) for _, state in states)
    records = int(sum(max(0, s.size) for s in todo) / bytes_per_record(own_state))
    if not choose_join(vectors, records):
        return ReuseChoice("index", vectors, f"{vectors:,} reusable vectors, about {records:,} records to route")
    runs = sample_runs(inputs, todo)
    if in_order(runs, locate(source_files(inputs, states), {h for run in runs for h in run})):
        return ReuseChoice("index", vectors, "the records come in the reuse sources' order")
    return ReuseChoice("join", vectors, f"{vectors:,} reusable vectors met in another order")


def planned_join(inputs: JobInputs, choice: ReuseChoice, own: Output | None,
                 shards: Sequence[Shard]) -> dict[str, JoinedKeys]:
    """What the join would find for each shard, by the run's own steps over
    hash columns only (no vector read), staged in a temporary folder: `plan`'s
    lookups when the run joins."""
    sources = ([own.url] if own is not None else []) + list(inputs.bv.reuse_from or ())
    description = inputs.description
    folder = tempfile.mkdtemp(prefix="beamvec-plan-join-")
    try:
        spec = JoinSpec(Stage(folder), bucket_count(choice.vectors, HASH_BYTES), description.dimension,
                        description.config_fingerprint, inputs.storage_options, carry_vectors=False)
        found = join_in_process(inputs.backend, inputs.reader, inputs.prepare, spec,
                                [Split.whole(shard) for shard in shards], sources)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {name: JoinedKeys(hashes) for name, hashes in found.items()}
