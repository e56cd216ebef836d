"""`beamvec export OUTPUT --to lancedb|vertex-vector-search ...`: vectors where users load them.

Both destinations are incremental: the export remembers (in the output,
``_exports/``) which vector files it sent, sends only new or changed ones
the next night, and deletes the ids of files that left the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from beamvec.commands import Output, Parser, add_storage_option, open_output, parse, storage_options
from beamvec.commands.export_lancedb import export_to_lancedb
from beamvec.commands.export_state import (
    ExportResult,
    load_state,
    plan_export,
    save_state,
    state_key,
)
from beamvec.commands.export_vertex import export_to_vertex, previous_ids, save_ids
from beamvec.errors import UsageError

DESCRIPTION = """\
Export an output's vectors to a vector store, sending only what changed since
the last export to the same place.

  --to lancedb URI --table NAME [--index]
      upsert by id into a LanceDB table (created when missing); rows of
      vector files that left the output are deleted; --index builds an
      IVF_PQ cosine index with one partition per 8,192 rows (from 16,384
      rows; a smaller table is searched exactly, without one).
  --to vertex-vector-search DIR [--restrict FIELD ...] [--export-name NAME]
      write a Vertex AI Vector Search batch root: .json files of
      {"id", "embedding", "restricts"} and delete/ files for an incremental
      index update; DIR must be new or empty (one directory per update).

examples:
  beamvec export out/ --to lancedb ./lance --table docs --index
  beamvec export gs://b/vectors --to vertex-vector-search gs://b/vs/2026-01-15 --restrict lang
"""

TARGETS = ("lancedb", "vertex-vector-search")


def build_parser() -> Parser:
    parser = Parser("beamvec export", DESCRIPTION)
    parser.add_argument("output", metavar="OUTPUT", help="output root written by `beamvec run`")
    parser.add_argument("--to", nargs=2, metavar=("KIND", "WHERE"), required=True,
                        help=f"destination kind ({', '.join(TARGETS)}) and its URI or directory")
    parser.add_argument("--table", help="LanceDB table name (--to lancedb)")
    parser.add_argument("--index", action="store_true", help="build an ANN index (--to lancedb)")
    parser.add_argument("--restrict", action="append", default=[], metavar="FIELD",
                        help="metadata field to export as a Vector Search restrict namespace (repeatable)")
    parser.add_argument("--export-name", default="default",
                        help="names the state of a vertex-vector-search export (one per index)")
    parser.add_argument("--max-file-mb", type=float, default=256.0,
                        help="size of each vertex-vector-search data file (default 256)")
    parser.add_argument("--full", action="store_true",
                        help="send every vector file again (files that left the output are still deleted)")
    add_storage_option(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    kind, where = args.to
    if kind not in TARGETS:
        raise UsageError(f"--to {kind}: unknown destination; choose one of {', '.join(TARGETS)}")
    options = storage_options(args.storage_option)
    output, _ = open_output(args.output, options)
    if kind == "lancedb":
        result = export_lancedb(output, where, args.table, args.index, args.full)
    else:
        result = export_vertex(output, where, args.restrict, args.export_name, options,
                               int(args.max_file_mb * 1024 * 1024), args.full)
    print(result.line())
    return 0


def export_lancedb(output: Output, uri: str, table: str | None, index: bool, full: bool = False) -> ExportResult:
    if not table:
        raise UsageError("--to lancedb needs --table NAME")
    key = state_key("lancedb", uri, table)
    plan = plan_export(output, load_state(output, key), full)
    result = export_to_lancedb(output, plan, uri, table, index)
    save_state(output, key, f"lancedb {uri} table {table}", plan.current)
    return result


def export_vertex(
    output: Output, directory: str, restrict: Sequence[str], name: str, options: dict[str, Any],
    max_bytes: int,
    full: bool = False,
) -> ExportResult:
    if bad := [f for f in restrict if not f or "," in f]:
        raise UsageError(f"--restrict takes one metadata field name per flag, got {bad}")
    key = state_key("vertex-vector-search", name, *sorted(restrict))
    before = previous_ids(output, key)  # kept by --full too: its delete/ file needs them
    state = load_state(output, key) if before else {}  # both, or neither: resend everything
    plan = plan_export(output, state, full)
    result, after = export_to_vertex(output, plan, directory, restrict, before, options, max_bytes)
    save_ids(output, key, after)
    save_state(output, key, f"vertex-vector-search {name}", plan.current)
    return result
