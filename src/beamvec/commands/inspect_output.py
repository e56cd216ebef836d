"""`beamvec inspect OUTPUT`: what an output holds, read back from its files.

Model, dimension, task and normalization from the manifest (or a footer);
rows and dead letters counted in the Parquet files themselves; a summary of
vector norms read in record batches (memory bounded by one batch, whatever
the output's size); the run history; whether _SUCCESS is there; and where
the files and the manifest disagree. A committed vector or dead-letter file
that is damaged or missing is named with its repair, and the output is then
INCOMPLETE: exit 1, as for any output that does not hold what its manifest
says. The checks of ``read_state`` are cheap (a file of the recorded size is
not read); inspect reads every file anyway, so a file torn within its size
is found here too.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from beamvec.commands import (
    VECTORS_DIR,
    Output,
    Parser,
    add_storage_option,
    dead_letter_files,
    description_of,
    dump_json,
    has_success,
    iter_batches,
    open_output,
    parse,
    progress,
    progress_done,
    shard_name,
    storage_options,
    vector_files,
)
from beamvec.commands.inspect_report import InspectReport, NormSummary, format_report
from beamvec.contract import (
    DEAD_LETTER_SCHEMA,
    MISSING,
    CommitRecord,
    DamagedFileError,
    Description,
    Manifest,
    RunConfig,
    damaged_message,
    dead_letter_path,
    footer_of,
    read_state,
    vector_path,
    vector_schema,
)
from beamvec.contract import columns as col

DESCRIPTION = """\
Describe a beamvec output: shards, rows, model, dimension, task, normalization,
backend, vector norms (min/mean/max over every row), dead letters by reason,
the run history, and whether _SUCCESS exists. Reads only; exits 0 when the
output holds what its manifest says, 1 when a committed vector or dead-letter
file is damaged or missing (use `beamvec verify` to check it against its inputs).

examples:
  beamvec inspect out/
  beamvec inspect gs://bucket/vectors --json
  beamvec inspect s3://bucket/vectors --storage-option client_kwargs.endpoint_url=http://127.0.0.1:9000
"""

VECTOR_COLUMNS = vector_schema(1).names
#: Norms further than this from 1 count as "not unit" for normalized outputs.
UNIT_TOLERANCE = 1e-3


def build_parser() -> Parser:
    parser = Parser("beamvec inspect", DESCRIPTION)
    parser.add_argument("output", metavar="OUTPUT", help="output root written by `beamvec run`")
    add_storage_option(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def main(argv: Sequence[str]) -> int:
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    report = inspect_output(args.output, storage_options(args.storage_option), quiet=args.quiet)
    print(dump_json(report.to_json()) if args.json else format_report(report))
    return 1 if report.damaged else 0


class NormStats:
    """Running min / mean / max of L2 norms, and the odd ones out."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.zero = 0
        self.non_finite = 0
        self.not_unit = 0

    def add(self, matrix: np.ndarray) -> None:
        if not len(matrix):
            return
        finite = np.isfinite(matrix).all(axis=1)
        self.non_finite += int((~finite).sum())
        norms = np.linalg.norm(matrix[finite].astype(np.float64), axis=1)
        if not len(norms):
            return
        self.count += len(norms)
        self.total += float(norms.sum())
        self.min = min(self.min, float(norms.min()))
        self.max = max(self.max, float(norms.max()))
        self.zero += int((norms == 0).sum())
        self.not_unit += int((np.abs(norms - 1.0) > UNIT_TOLERANCE).sum())

    def summary(self) -> NormSummary:
        if not self.count:
            return NormSummary(0, None, None, None, self.zero, self.non_finite, 0)
        return NormSummary(
            count=self.count,
            min=round(self.min, 6),
            mean=round(self.total / self.count, 6),
            max=round(self.max, 6),
            zero=self.zero,
            non_finite=self.non_finite,
            not_unit=self.not_unit,
        )


def vectors_matrix(column: Any, dimension: int) -> np.ndarray:
    """A fixed_size_list<float32> column as an (n, dim) float32 array (no copy when it can)."""
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), dimension)


def inspect_output(url: str, options: dict[str, Any], quiet: bool = False) -> InspectReport:
    """The report `inspect` prints (as JSON, or text by ``format_report``)."""
    output, manifest = open_output(url, options)
    # Trust, but check: a committed file that does not match its commit record;
    # and, below, any file that cannot be read through (its size was the recorded one).
    damaged = dict(read_state(output).damaged)
    files = [path for path in vector_files(output) if path not in damaged]
    desc = description_of(output, manifest, files)
    in_manifest = manifest.shards if manifest is not None else {}
    vectors = _read_vectors(output, files, manifest, damaged, quiet)
    reasons, dead_by_shard = _read_dead_letters(output, damaged)
    norm_summary = vectors.norms.summary()
    problems = [
        *(damaged_message(path, why) for path, why in damaged.items()),
        *vectors.problems,
        *_unmatched(output, in_manifest, vectors.rows_by_shard, dead_by_shard, damaged),
        *(["no _manifest.json: the first run crashed before writing it; rerun "
           "`beamvec run` with the same flags to finish it"] if manifest is None else []),
        *_norm_problems(desc, norm_summary),
    ]
    config = manifest.config if manifest is not None else RunConfig()
    about = desc.to_json() if desc else {}
    return InspectReport(
        output=output.url,
        complete=has_success(output) and not damaged,
        damaged=sorted(damaged),
        unreadable=sorted(p for p, why in damaged.items() if why != MISSING),
        manifest=manifest is not None,
        backend=about.get("backend"),
        model=about.get("model"),
        dimension=about.get("dimension"),
        task_type=about.get("task_type"),
        output_dimensionality=about.get("output_dimensionality"),
        vector_normalization=_vector_normalization(desc),
        text_normalization=config.normalization,
        beamvec_version=about.get("beamvec_version"),
        config_fingerprint=about.get("config_fingerprint"),
        updated_at=(manifest.updated_at or None) if manifest is not None else None,
        shards=len(vectors.rows_by_shard),
        shards_in_manifest=len(in_manifest),
        rows=sum(vectors.rows_by_shard.values()),
        dead_letters=sum(reasons.values()),
        dead_letter_files=len(dead_by_shard),
        dead_letters_by_reason=dict(sorted(reasons.items())),
        totals=manifest.totals() if manifest is not None else None,
        norms=norm_summary,
        runs=[run.to_json() for run in manifest.runs] if manifest is not None else [],
        inputs=list(config.inputs) if manifest is not None else None,
        problems=problems,
        duckdb_query=duckdb_query(output, desc.dimension, example)
        if desc and desc.dimension and (example := _first_id(output, [p for p in files if p not in damaged])) is not None else None,
    )


@dataclass
class VectorScan:
    """What the vector files hold, read through, and where they disagree with the manifest."""

    norms: NormStats = field(default_factory=NormStats)
    rows_by_shard: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _read_vectors(
    output: Output, files: Sequence[str], manifest: Manifest | None, damaged: dict[str, str], quiet: bool,
) -> VectorScan:
    """Every vector file read through, its rows matched with the manifest's;
    one that cannot be read through is added to ``damaged``."""
    in_manifest = manifest.shards if manifest is not None else None
    scan = VectorScan()
    seen_models: set[tuple[Any, ...]] = set()
    for i, path in enumerate(files, start=1):
        name = shard_name(path)
        progress(f"beamvec inspect: reading vectors {i}/{len(files)} {name}", quiet)
        made = footer_of(output.fs, path).description
        seen_models.add((made.backend, made.model, made.dimension, made.task_type) if made else (None,) * 4)
        # every column, not just the vectors: a torn page of any of them is damage
        rows = _read_through(output, path, VECTOR_COLUMNS, damaged, lambda b: scan.norms.add(_matrix(b)))
        if rows is None:
            continue
        scan.rows_by_shard[name] = rows
        if in_manifest is not None and name not in in_manifest:
            scan.problems.append(f"vectors/{name}.parquet is not in the manifest (committed by a run "
                                 "that crashed before its manifest: the next `beamvec run` adds it)")
        elif in_manifest is not None and in_manifest[name].counts.embedded != rows:
            scan.problems.append(f"vectors/{name}.parquet has {rows:,} rows, the manifest says "
                                 f"{in_manifest[name].counts.embedded:,}")
    progress_done(quiet)
    if len(seen_models) > 1:
        scan.problems.append(
            "vector files disagree on backend/model/dimension/task: "
            + "; ".join(str(m) for m in sorted(seen_models, key=str))
        )
    return scan


def _read_dead_letters(output: Output, damaged: dict[str, str]) -> tuple[Counter[str], dict[str, int]]:
    """(dead letters by reason, rows by shard) of every dead-letter file read through."""
    reasons: Counter[str] = Counter()
    dead_by_shard: dict[str, int] = {}
    dead_files = [path for path in dead_letter_files(output) if path not in damaged]
    for path in dead_files:
        # every column: dead-letter files are small, and a torn page of any column is damage
        found: Counter[str] = Counter()
        count = _read_through(output, path, list(DEAD_LETTER_SCHEMA.names), damaged,
                              lambda b, found=found: found.update(b.column(col.REASON).to_pylist()))
        if count is not None:  # a torn file's reasons are not counted: it is named apart
            reasons.update(found)
            dead_by_shard[shard_name(path)] = count
    return reasons, dead_by_shard


def _unmatched(
    output: Output, in_manifest: Mapping[str, CommitRecord], rows_by_shard: Mapping[str, int],
    dead_by_shard: Mapping[str, int], damaged: Mapping[str, str],
) -> list[str]:
    """Shards the manifest lists whose files are missing or hold other counts."""
    problems = []
    for name, record in in_manifest.items():
        if name not in rows_by_shard and vector_path(output, name) not in damaged:
            problems.append(f"the manifest lists shard {name} but vectors/{name}.parquet is missing; "
                            "rerun `beamvec run` with the same flags to redo it")
        if dead_letter_path(output, name) in damaged:
            continue  # named above, with the repair
        if dead_by_shard.get(name, 0) != record.counts.dead_lettered:
            problems.append(f"dead_letters/{name}.parquet has {dead_by_shard.get(name, 0):,} rows, "
                            f"the manifest says {record.counts.dead_lettered:,}")
    return problems


def _norm_problems(desc: Description | None, norms: NormSummary) -> list[str]:
    problems = []
    if desc is not None and desc.normalized and norms.not_unit:
        problems.append(f"{norms.not_unit:,} vectors are not unit length although the "
                        "output says its vectors are normalized")
    if norms.non_finite or norms.zero:
        problems.append(f"{norms.non_finite:,} vectors hold NaN/inf and "
                        f"{norms.zero:,} are all zeros")
    return problems


def _matrix(batch: pa.RecordBatch) -> np.ndarray:
    column = batch.column(col.VECTOR)
    return vectors_matrix(column, column.type.list_size)


def _read_through(
    output: Output, path: str, columns: list[str], damaged: dict[str, str],
    each: Callable[[pa.RecordBatch], object],
) -> int | None:
    """Rows of a file read to its end, each batch handed to ``each``; None,
    with the file added to ``damaged``, when it cannot be read through (the
    norms keep what a torn vector file's first batches held)."""
    rows = 0
    try:
        for batch in iter_batches(output, path, columns):
            each(batch)
            rows += batch.num_rows
    except DamagedFileError as exc:
        damaged[path] = exc.reason
        return None
    except FileNotFoundError:
        damaged[path] = MISSING
        return None
    return rows


def duckdb_query(output: Output, dimension: int, record_id: str, k: int = 5) -> str:
    """A DuckDB query that runs as printed: the ``k`` nearest records to one
    record by cosine. DuckDB reads the vector column as ``FLOAT[]`` (a list),
    and ``array_cosine_similarity`` takes fixed-size ``FLOAT[n]`` arrays,
    hence the casts; ``**`` matches any depth, none included, so split part
    files under ``vectors/<shard>/`` are read too."""
    root = output.root if output.renames else output.url  # local: an absolute path
    files = _sql_string(f"{root}/{VECTORS_DIR}/**/*.parquet")
    cast = f"vector::FLOAT[{int(dimension)}]"
    return (
        f"select id, array_cosine_similarity({cast}, (select {cast} from read_parquet({files}) "
        f"where id = {_sql_string(record_id)} limit 1)) as score from read_parquet({files}) "
        f"order by score desc limit {int(k)};"
    )


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _first_id(output: Output, files: list[str]) -> str | None:
    for path in files:
        for batch in iter_batches(output, path, [col.ID], batch_size=1):
            if batch.num_rows:
                return str(batch.column(0)[0].as_py())
    return None


def _vector_normalization(desc: Description | None) -> str:
    if desc is None:
        return "unknown"
    if desc.normalization == "l2":
        return "L2-normalized by beamvec (reduced output_dimensionality)"
    if desc.normalization == "native":
        return "as returned by the API (native size: unit length)"
    if desc.normalized:
        return "unit L2 norm"
    if desc.normalized is False:
        return "not normalized"
    return "unknown"
