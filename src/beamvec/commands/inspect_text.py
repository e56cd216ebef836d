"""`beamvec inspect`'s text form: what a person reads about an output."""

from __future__ import annotations

from typing import Any

Report = dict[str, Any]  # inspect_output's JSON-ready dict (docs/cli.md)


def _norm(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_report(rep: Report) -> str:
    if rep["damaged"]:
        state = f"INCOMPLETE: {len(rep['damaged'])} committed files damaged or missing"
    else:
        state = "complete: _SUCCESS written" if rep["complete"] else "INCOMPLETE: no _SUCCESS"
    n = rep["norms"]
    lines = [
        f"beamvec output {rep['output']}  ({state})",
        f"  backend        {rep['backend']}",
        f"  model          {rep['model']}",
        f"  dimension      {rep['dimension']}",
        f"  task           {rep['task_type'] or '-'}",
        f"  normalization  vectors: {rep['vector_normalization']}; "
        f"text: {rep['text_normalization'] or 'unknown'}",
        f"  shards         {rep['shards']:,} vector files ({rep['shards_in_manifest']:,} in the manifest, "
        f"{rep['dead_letter_files']:,} with dead letters)",
        f"  rows           {rep['rows']:,} vectors",
        f"  vector norms   min {_norm(n['min'])}  mean {_norm(n['mean'])}  max {_norm(n['max'])}"
        f"  over {n['count']:,} rows",
        f"  dead letters   {rep['dead_letters']:,}",
    ]
    for reason, count in rep["dead_letters_by_reason"].items():
        lines.append(f"    {reason:<14} {count:,}")
    if rep["inputs"]:
        lines.append(f"  inputs         {', '.join(rep['inputs'])}")
    runs = rep["runs"]
    lines.append(f"  runs           {len(runs)} in the manifest's history" + (":" if runs else ""))
    for run in runs:
        lines.append(
            f"    {run.get('started_at', '?')} .. {run.get('finished_at', '?')}  "
            f"{run.get('shards', 0):,} shards, {run.get('read', 0):,} read, "
            f"{run.get('embedded', 0):,} embedded ({run.get('sent', 0) + run.get('batch_sent', 0):,} sent, "
            f"{run.get('reused', 0):,} reused, {run.get('deduplicated', 0):,} repeats), "
            f"{run.get('dead_lettered', 0):,} dead-lettered, {run.get('tokens', 0):,} tokens"
        )
    if rep.get("duckdb_query"):
        lines.append("  query in DuckDB (cosine top 5 of one record; change the id):")
        lines.append(f"    {rep['duckdb_query']}")
    if rep["problems"]:
        lines.append("  problems")
        lines += [f"    - {p}" for p in rep["problems"]]
    return "\n".join(lines)

