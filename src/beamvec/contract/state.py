"""An output's state and its changes: which parts stand committed (trust,
but check), which shards are complete, merging and finalizing a run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from beamvec.contract.files import (
    DamagedFileError,
    check_dead_letters,
    check_part,
    dead_letter_path,
    footer_and_rows,
    footer_of,
    list_parquet,
    name_of,
    read_manifest,
    vector_path,
    write_manifest,
)
from beamvec.contract.model import (
    DEAD_LETTERS_DIR,
    HISTORY_LIMIT,
    PARTIAL_DIR,
    SUCCESS,
    VECTORS_DIR,
    CommitRecord,
    Description,
    Manifest,
    RunConfig,
    RunRecord,
    now,
)
from beamvec.contract.output import Output


@dataclass(frozen=True)
class OutputState:
    """What an output holds: its manifest and the shards that stand committed."""

    manifest: Manifest | None
    committed: Mapping[str, CommitRecord]
    files: Mapping[str, int]  # vector file -> size
    success: bool
    #: vector or dead-letter file -> why it cannot be trusted (its part is then not committed)
    damaged: Mapping[str, str] = field(default_factory=dict)

    @property
    def description(self) -> Description | None:
        return self.manifest.description if self.manifest else None


def read_state(output: Output, *, check_letters: bool = True) -> OutputState:
    """The manifest answers for most shards; a shard committed by a run that
    crashed before writing its manifest is found by listing vectors/ and
    reading only those footers. A part stands committed only while both its
    vector file and its dead-letter file (when it has dead letters) check out;
    ``check_letters=False`` skips the latter, for callers that want only the
    vectors (the reuse index: each worker builds one, and an output made
    before dead-letter sizes were recorded would cost a read per file)."""
    manifest = read_manifest(output)
    known = dict(manifest.shards) if manifest else {}
    files = list_parquet(output, VECTORS_DIR)
    committed: dict[str, CommitRecord] = {}
    damaged: dict[str, str] = {}
    for name, rec in known.items():  # trust, but check (check_part)
        if rec.status != "committed":
            continue
        path = vector_path(output, name)
        checked, why = check_part(output.fs, path, rec, files.get(path))
        if checked is not None:
            committed[name] = checked
        else:
            damaged[path] = why or "damaged"
    for path in files:
        name = name_of(path)
        if name in known and known[name].status == "committed":
            continue
        try:
            footer, rows = footer_and_rows(output.fs, path)
        except DamagedFileError as exc:
            damaged[path] = exc.reason
            continue
        except FileNotFoundError:
            continue
        if footer.shard is None:
            continue
        if rows != footer.shard.counts.embedded:
            damaged[path] = f"it holds {rows} rows where its footer says {footer.shard.counts.embedded}"
            continue
        committed[name] = replace(footer.shard, vector_bytes=files[path])
    if check_letters:
        letters = list_parquet(output, DEAD_LETTERS_DIR)
        for name, rec in list(committed.items()):
            path = dead_letter_path(output, name)
            checked, why = check_dead_letters(output.fs, path, rec, letters.get(path))
            if checked is not None:
                committed[name] = checked
            else:
                del committed[name]
                damaged[path] = why or "damaged"
    return OutputState(
        manifest, committed, files, bool(output.fs.exists(output.path(SUCCESS))), damaged
    )


def description_of(
    output: Output, known: Description | None, files: Iterable[str]
) -> Description | None:
    """What the vectors are: ``known`` (the manifest's), else the footer of
    the first of ``files`` that has one (a run that crashed before its
    manifest)."""
    if known is not None:
        return known
    for path in files:
        found = footer_of(output.fs, path).description
        if found is not None:
            return found
    return None


def merge_manifest(
    previous: Manifest | None,
    records: Iterable[CommitRecord],
    config: RunConfig,
    description: Description,
    run: RunRecord | None,
    removed: Iterable[str] = (),
) -> Manifest:
    """This run's commit records merged into the previous manifest."""
    shards = dict(previous.shards) if previous else {}
    for record in records:
        shards[record.name] = record
    for name in removed:
        shards.pop(name, None)
    runs = tuple(previous.runs) if previous else ()
    if run is not None:
        runs = (*runs[-(HISTORY_LIMIT - 1):], run)
    return Manifest(description, config, shards, runs, now())


def complete_shards(records: Iterable[CommitRecord]) -> dict[str, str]:
    """Shard name -> input file fingerprint, for shards all of whose parts are
    committed from one version of their input."""
    parts: dict[tuple[str, str], set[int]] = {}
    wanted: dict[tuple[str, str], int] = {}
    for rec in records:
        if rec.status != "committed":
            continue
        key = (rec.shard_name, rec.file_fingerprint)
        parts.setdefault(key, set()).add(rec.part)
        wanted[key] = rec.parts
    return {name: fp for (name, fp), got in parts.items() if len(got) == wanted[(name, fp)]}


def stale_parts(manifest: Manifest, current: Mapping[str, str]) -> list[str]:
    """Parts of the shards in ``current`` (name -> input fingerprint) that
    belong to another version of that input: a file re-cut into other splits."""
    return [
        name for name, rec in manifest.shards.items()
        if rec.shard_name in current and rec.file_fingerprint != current[rec.shard_name]
    ]


def remove_parts(output: Output, names: Iterable[str]) -> None:
    for name in names:
        output.remove(vector_path(output, name))
        output.remove(dead_letter_path(output, name))


def finalize(output: Output, manifest: Manifest, expected: Iterable[str]) -> list[str]:
    """Write the manifest; when every expected shard is complete in it, remove
    the checkpoints and write ``_SUCCESS``. Returns the shards still missing."""
    complete = complete_shards(manifest.shards.values())
    missing = [name for name in expected if name not in complete]
    write_manifest(output, manifest)
    if not missing:
        # Every shard is committed, so no checkpoint can be needed any more,
        # including those a crash between a shard's commit and their removal left.
        output.remove_tree(output.path(PARTIAL_DIR))
        output.write_bytes(output.path(SUCCESS), b"")
    return missing
