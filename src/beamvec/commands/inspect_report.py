"""What `beamvec inspect` reports about an output: one typed record, printed
as JSON (a stable schema, docs/cli.md) or as text for a person."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SCHEMA = "beamvec.inspect/1"


@dataclass(frozen=True)
class NormSummary:
    """L2 norms over the rows read, and the odd ones out."""

    count: int
    min: float | None
    mean: float | None
    max: float | None
    zero: int  # all-zero vectors
    non_finite: int  # vectors holding NaN or inf
    not_unit: int  # norms further than inspect_output.UNIT_TOLERANCE from 1


@dataclass(frozen=True)
class InspectReport:
    """What `inspect` prints (its JSON form's fields, in order, after ``schema``)."""

    output: str
    complete: bool
    damaged: list[str]
    unreadable: list[str]
    manifest: bool
    backend: str | None
    model: str | None
    dimension: int | None
    task_type: str | None
    output_dimensionality: int | None
    vector_normalization: str
    text_normalization: str | None
    beamvec_version: str | None
    config_fingerprint: str | None
    updated_at: str | None
    shards: int
    shards_in_manifest: int
    rows: int
    dead_letters: int
    dead_letter_files: int
    dead_letters_by_reason: dict[str, int]
    totals: dict[str, int] | None
    norms: NormSummary
    runs: list[dict[str, Any]]  # the manifest's run history, as it is stored
    inputs: list[str] | None
    problems: list[str]
    duckdb_query: str | None

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **dataclasses.asdict(self)}  # docs/cli.md: fields are only ever added



def _norm(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_report(rep: InspectReport) -> str:
    if rep.damaged:
        state = f"INCOMPLETE: {len(rep.damaged)} committed files damaged or missing"
    else:
        state = "complete: _SUCCESS written" if rep.complete else "INCOMPLETE: no _SUCCESS"
    n = rep.norms
    lines = [
        f"beamvec output {rep.output}  ({state})",
        f"  backend        {rep.backend}",
        f"  model          {rep.model}",
        f"  dimension      {rep.dimension}",
        f"  task           {rep.task_type or '-'}",
        f"  normalization  vectors: {rep.vector_normalization}; "
        f"text: {rep.text_normalization or 'unknown'}",
        f"  shards         {rep.shards:,} vector files ({rep.shards_in_manifest:,} in the manifest, "
        f"{rep.dead_letter_files:,} with dead letters)",
        f"  rows           {rep.rows:,} vectors",
        f"  vector norms   min {_norm(n.min)}  mean {_norm(n.mean)}  max {_norm(n.max)}"
        f"  over {n.count:,} rows",
        f"  dead letters   {rep.dead_letters:,}",
    ]
    for reason, count in rep.dead_letters_by_reason.items():
        lines.append(f"    {reason:<14} {count:,}")
    if rep.inputs:
        lines.append(f"  inputs         {', '.join(rep.inputs)}")
    runs = rep.runs
    lines.append(f"  runs           {len(runs)} in the manifest's history" + (":" if runs else ""))
    for run in runs:
        lines.append(
            f"    {run.get('started_at', '?')} .. {run.get('finished_at', '?')}  "
            f"{run.get('shards', 0):,} shards, {run.get('read', 0):,} read, "
            f"{run.get('embedded', 0):,} embedded ({run.get('sent', 0) + run.get('batch_sent', 0):,} sent, "
            f"{run.get('reused', 0):,} reused, {run.get('deduplicated', 0):,} repeats), "
            f"{run.get('dead_lettered', 0):,} dead-lettered, {run.get('tokens', 0):,} tokens"
        )
    if rep.duckdb_query:
        lines.append("  query in DuckDB (cosine top 5 of one record; change the id):")
        lines.append(f"    {rep.duckdb_query}")
    if rep.problems:
        lines.append("  problems")
        lines += [f"    - {p}" for p in rep.problems]
    return "\n".join(lines)

