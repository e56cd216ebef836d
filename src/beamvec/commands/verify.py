"""`beamvec verify OUTPUT`: every input record is in the output exactly once.

For each input shard, the records are read again with the pipeline's own
reader (``sources.read_shard``, under the shard's output name, so records
without an id get the same ``<shard>:<line>`` id the run gave them) and
matched by id against that shard's vector rows and dead letters. A record in
neither is missing; one found more often than the input holds it is doubled.
One shard is held in memory at a time (its ids), never the whole corpus.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from beamvec.commands import (
    Parser,
    add_storage_option,
    dead_letter_files,
    dump_json,
    iter_batches,
    open_output,
    parse,
    progress,
    progress_done,
    shard_name,
    storage_options,
    vector_files,
    warn,
)
from beamvec.contract import (
    CommitRecord,
    DamagedFileError,
    Manifest,
    RunConfig,
    damaged_message,
    dead_letter_path,
    footer_of,
    read_state,
    vector_path,
)
from beamvec.contract import columns as col
from beamvec.errors import NoInputError, UsageError
from beamvec.records import Shard
from beamvec.sources import FORMATS, ReaderConfig, list_shards, read_shard
from beamvec.write.sink import Output

DESCRIPTION = """\
Check that every input record appears exactly once in OUTPUT, as a vector or
as a dead letter (matched by id, shard by shard). Exits 0 with a one-line
summary when it does; exits 1 and lists the ids that are missing or doubled
(the first 20 of each, and how many) when it does not.

examples:
  beamvec verify --input 'corpus/*.jsonl' out/
  beamvec verify out/        # the inputs and reader flags recorded in out/_manifest.json

--input, --format, --id-field and --text-field default to what the output's
manifest recorded; pass them when the inputs moved or to check a subset.
"""

SHOW = 20


def build_parser() -> Parser:
    parser = Parser("beamvec verify", DESCRIPTION, allow_abbrev=False)
    parser.add_argument("output", metavar="OUTPUT", help="output root written by `beamvec run`")
    parser.add_argument("--input", action="append", default=None, metavar="GLOB",
                        help="input glob or path, as given to `beamvec run` (repeatable)")
    parser.add_argument("--format", choices=FORMATS, default=None, help="input format")
    parser.add_argument("--id-field", "--id_field", dest="id_field", default=None,
                        help="field holding the record id")
    parser.add_argument("--text-field", "--text_field", dest="text_field", default=None,
                        help="field holding the text")
    add_storage_option(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def main(argv: Sequence[str]) -> int:
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    result = verify(args)
    print(dump_json(dataclasses.asdict(result)) if args.json else format_result(result))
    return 0 if result.ok else 1


def _key(record_id: str | None, position: int) -> str:
    """Records without any id (an unreadable tail of a file) match by position."""
    return record_id if record_id is not None else f"(no id, record {position})"


def _output_names(
    output: Output, manifest: Manifest | None, damaged: Mapping[str, str]
) -> dict[str, str]:
    """Input path -> output shard name, from the manifest and the footers of
    vector files it does not list (a crashed run's committed shards)."""
    listed = manifest.shards if manifest is not None else {}
    names = {record.input: name for name, record in listed.items() if record.input}
    for path in vector_files(output):
        name = shard_name(path)
        if name not in listed and path not in damaged:
            found = footer_of(output.fs, path).shard
            if found is not None and found.input:
                names[found.input] = name
    return names


def _found(output: Output, name: str, damaged: dict[str, str]) -> tuple[Counter[str], int, int, bool]:
    """(ids found, vector rows, dead-letter rows, whether the vector file
    exists). A file that cannot be read through counts as absent and is
    added to ``damaged`` (reported apart, with its repair): the contract's
    check reads no file of its recorded size, verify reads each to its end.
    A vector file the contract found damaged but readable (rows and footer
    disagree) is still matched id by id; a damaged dead-letter file is not."""
    path = vector_path(output, name)
    exists = bool(output.fs.exists(path))
    vectors = _ids(output, path, [col.ID], damaged) if exists else None
    exists = vectors is not None
    letters = dead_letter_path(output, name)
    readable = letters not in damaged and output.fs.exists(letters)
    dead = _ids(output, letters, [col.ID, col.SOURCE_POSITION], damaged) if readable else None
    found = (vectors or Counter()) + (dead or Counter())
    return found, sum((vectors or {}).values()), sum((dead or {}).values()), exists


def _ids(output: Output, path: str, columns: list[str], damaged: dict[str, str]) -> Counter[str] | None:
    """The ids of one file (dead letters without an id by position), or None
    when it cannot be read through (then named in ``damaged``)."""
    found: Counter[str] = Counter()
    try:
        for batch in iter_batches(output, path, columns):
            ids = batch.column(col.ID).to_pylist()
            if col.SOURCE_POSITION in batch.schema.names:
                positions = batch.column(col.SOURCE_POSITION).to_pylist()
                found.update(_key(i, p) for i, p in zip(ids, positions, strict=True))
            else:
                found.update(ids)
    except DamagedFileError as exc:
        damaged.setdefault(path, exc.reason)
        return None
    return found


@dataclass(frozen=True)
class Mismatch:
    """An id found fewer or more times in the output than in its input."""

    shard: str
    id: str
    expected: int
    found: int


@dataclass
class Result:
    """What `verify` found (its JSON, docs/cli.md: fields are only ever added)."""

    ok: bool = False
    output: str = ""
    inputs: list[str] = field(default_factory=list)
    shards: int = 0
    records: int = 0
    vectors: int = 0
    dead_letters: int = 0
    missing: int = 0
    doubled: int = 0
    missing_ids: list[Mismatch] = field(default_factory=list)  # the first SHOW
    doubled_ids: list[Mismatch] = field(default_factory=list)  # the first SHOW
    unchecked_output_shards: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)


def verify(args: Any) -> Result:
    options = storage_options(args.storage_option)
    output, manifest = open_output(args.output, options)
    config = manifest.config if manifest is not None else RunConfig()
    inputs = args.input or list(config.inputs)
    if not inputs:
        raise UsageError(
            f"{output.url} does not record its inputs; pass them with --input GLOB "
            "(as given to `beamvec run`)"
        )
    reader = _reader(args, config)
    shards = _list_inputs(inputs, options, output, recorded=not args.input)
    damaged = dict(read_state(output).damaged)  # trust, but check (contract.check_part)
    names = _output_names(output, manifest, damaged)
    listed = manifest.shards if manifest is not None else {}
    result = Result(output=output.url, inputs=list(inputs), shards=len(shards))
    checked_names: set[str] = set()
    for i, shard in enumerate(shards, start=1):
        name = names.get(shard.shown, shard.name)
        checked_names.add(name)
        progress(f"beamvec verify: shard {i}/{len(shards)} {name}", args.quiet)
        _check_shard(output, shard, name, listed.get(name), reader, options, damaged, result)
    progress_done(args.quiet)
    others = sorted({shard_name(p) for p in vector_files(output) + dead_letter_files(output)} - checked_names)
    if others:
        result.notes.append(f"{len(others):,} output shards come from inputs not given here; not checked")
    result.notes += [damaged_message(path, why) for path, why in damaged.items()]
    result.unchecked_output_shards = others
    result.damaged = sorted(damaged)
    result.ok = result.missing == 0 and result.doubled == 0 and not damaged
    return result


def _reader(args: Any, config: RunConfig) -> ReaderConfig:
    """The reader the run used, as its manifest recorded it, unless the flags say otherwise."""
    for flag, ours, theirs in (("--format", args.format, config.format),
                               ("--id-field", args.id_field, config.id_field),
                               ("--text-field", args.text_field, config.text_field)):
        if ours and theirs and ours != theirs:
            warn(f"{flag} {ours} differs from the run's {theirs}: ids may not match")
    return ReaderConfig(
        format=args.format or config.format,
        id_field=args.id_field or config.id_field or "id",
        text_field=args.text_field or config.text_field or "text",
        title_field=config.title_field,
    )


def _list_inputs(inputs: Sequence[str], options: dict[str, Any], output: Output, recorded: bool) -> list[Shard]:
    """The input shards; ``recorded``: the globs came from the manifest, not --input."""
    try:
        return list_shards(inputs, options)
    except NoInputError as exc:
        if not recorded:
            raise
        raise UsageError(
            f"the inputs {output.url} recorded ({', '.join(inputs)}) match no files from here: "
            "pass --input GLOB with where they are now (relative paths are relative to where "
            "`beamvec run` ran)"
        ) from exc


def _check_shard(
    output: Output, shard: Shard, name: str, record: CommitRecord | None, reader: ReaderConfig,
    options: dict[str, Any], damaged: dict[str, str], result: Result,
) -> None:
    """One input shard read again and matched id by id with its output rows, into ``result``."""
    expected: Counter[str] = Counter(
        _key(raw.id, raw.position)
        for raw in read_shard(dataclasses.replace(shard, name=name), reader, options)
    )
    found, vectors, dead, exists = _found(output, name, damaged)
    result.records += sum(expected.values())
    result.vectors += vectors
    result.dead_letters += dead
    if vector_path(output, name) in damaged:
        pass  # named below, with its repair
    elif not exists:
        result.notes.append(f"{shard.shown} has no vector file in the output (not committed yet): "
                            "run `beamvec run` again with the same flags to embed it")
    elif record is not None and record.input_fingerprint not in ("", shard.fingerprint):
        result.notes.append(f"{shard.shown} changed since it was embedded: rerun `beamvec run` to "
                            "embed the new version, then verify again")
    for key, want in expected.items():
        got = found.get(key, 0)
        if got < want:
            result.missing += want - got
            if len(result.missing_ids) < SHOW:
                result.missing_ids.append(Mismatch(name, key, want, got))
    for key, got in found.items():
        want = expected.get(key, 0)
        if got > want:
            result.doubled += got - want
            if len(result.doubled_ids) < SHOW:
                result.doubled_ids.append(Mismatch(name, key, want, got))


def format_result(res: Result) -> str:
    if res.ok:
        line = (
            f"OK: {res.records:,} input records in {res.shards:,} shards each appear exactly "
            f"once in {res.output} ({res.vectors:,} vectors, {res.dead_letters:,} dead letters)"
        )
        return "\n".join([line, *(f"  note: {n}" for n in res.notes)])
    if res.damaged and not res.missing and not res.doubled:
        return "\n".join([f"FAILED: {len(res.damaged)} committed files of {res.output} "
                          "are damaged or missing", *(f"  {n}" for n in res.notes)])
    lines = [
        f"FAILED: {res.missing:,} records missing and {res.doubled:,} doubled in {res.output} "
        f"(of {res.records:,} input records in {res.shards:,} shards; "
        f"{res.vectors:,} vectors, {res.dead_letters:,} dead letters)"
    ]
    for title, rows, total in (("missing", res.missing_ids, res.missing),
                               ("doubled", res.doubled_ids, res.doubled)):
        if not total:
            continue
        shown = f"first {len(rows)} of {total:,}" if total > len(rows) else f"{total:,}"
        lines.append(f"  {title} ({shown}):")
        for row in rows:
            lines.append(f"    {row.id}  in shard {row.shard}  "
                         f"(input has it {row.expected}x, output {row.found}x)")
    lines += [f"  note: {n}" for n in res.notes]
    affected = sorted({row.shard for row in res.missing_ids + res.doubled_ids})
    lines.append(
        "  to repair: delete vectors/<shard>.parquet (and dead_letters/<shard>.parquet) of the "
        f"affected shards ({', '.join(affected[:5])}{', ...' if len(affected) > 5 else ''}), "
        "rerun `beamvec run` with the same flags (it redoes them), then verify again"
    )
    return "\n".join(lines)

