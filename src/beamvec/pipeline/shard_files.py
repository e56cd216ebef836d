"""One part's files in the output: its vectors and dead letters buffered and
written as row groups, committed under the output's lease (dead letters
first, then the vector file, whose commit is the part's), or found already
committed by a run that crashed or was killed."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from beamvec.contract import (
    CommitRecord,
    Description,
    Footer,
    check_dead_letters,
    dead_letter_path,
    footer_and_rows,
    vector_path,
)
from beamvec.contract.fence import fenced
from beamvec.errors import UsageError, unwritable
from beamvec.progress import PROGRESS
from beamvec.records import DeadLetter, Embedded, Split
from beamvec.write.sink import (
    DEAD_LETTER_SCHEMA,
    Output,
    ParquetShardWriter,
    dead_letter_table,
    vector_schema,
    vector_table,
)

FLUSH_ROWS = 2048


class ShardSink:
    """Buffers of vectors and dead letters for one shard, flushed as row groups."""

    def __init__(self, output: Output, split: Split, dimension: int) -> None:
        self.shard = split.shard
        self.url = output.url
        self.dimension = dimension
        self.vectors = ParquetShardWriter(output, vector_path(output, split.name), vector_schema(dimension))
        self.letters = ParquetShardWriter(output, dead_letter_path(output, split.name), DEAD_LETTER_SCHEMA)
        self.rows: list[Embedded] = []
        self.dead: list[DeadLetter] = []
        self.embedded = 0
        self.dead_lettered = 0
        self.failed: Counter[str] = Counter()  # dead letters of texts that were sent
        self.tokens = 0
        self.truncated = 0

    def add(self, row: Embedded) -> None:
        PROGRESS.add_done()
        self.rows.append(row)
        self.embedded += 1
        self.tokens += row.record.tokens
        self.truncated += row.record.truncated
        if len(self.rows) >= FLUSH_ROWS:
            self.flush()

    def dead_letter(self, letter: DeadLetter) -> None:
        PROGRESS.add_done()
        self.dead.append(letter)
        self.dead_lettered += 1
        if len(self.dead) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        try:
            if self.rows:
                self.vectors.write(vector_table(self.rows, self.shard.shown, self.dimension))
                self.rows = []
            if self.dead:
                self.letters.write(dead_letter_table(self.dead, self.shard.shown))
                self.dead = []
        except OSError as exc:  # a full disk: the run stops, in one line
            raise unwritable(self.url, exc, what=f"the shard {self.shard.name}") from exc

    def abort(self) -> None:
        self.vectors.abort()
        self.letters.abort()


def committed_part(output: Output, split: Split, fingerprint: str,
                   retry_reasons: tuple[str, ...]) -> CommitRecord | None:
    """The commit record of a part a crashed or killed run already
    committed from this same input, when its file still matches it."""
    path = vector_path(output, split.name)
    try:
        footer, rows = footer_and_rows(output.fs, path)
    except (FileNotFoundError, UsageError):
        return None
    rec = footer.shard
    if (
        rec is None or rec.input_fingerprint != split.fingerprint
        or rec.config_fingerprint != fingerprint
        or rec.name != split.name or rows != rec.counts.embedded  # damaged: redo it
        or any(rec.counts.dead_letters_by_reason.get(r) for r in retry_reasons)
    ):
        return None
    letters = dead_letter_path(output, split.name)
    try:
        size: int | None = output.fs.size(letters)
    except FileNotFoundError:
        size = None
    checked, _ = check_dead_letters(output.fs, letters, rec, size)
    if checked is None:
        return None
    return replace(checked, vector_bytes=output.fs.size(path))


def commit_part(output: Output, split: Split, sink: ShardSink, record: CommitRecord,
                description: Description, lease_owner: str | None) -> CommitRecord:
    """Dead letters first, then the vector file, whose commit is the shard's."""
    footer = Footer(description, record).to_json()
    sink.flush()
    try:
        # A run that lost the output's lease commits nothing more (contract.fence).
        with fenced(output, lease_owner):
            letter_bytes = 0
            if record.counts.dead_lettered:
                sink.letters.commit(footer)
                letter_bytes = output.fs.size(sink.letters.final)
            else:
                output.remove(dead_letter_path(output, split.name))
            sink.vectors.commit(footer)
        return replace(record, vector_bytes=output.fs.size(sink.vectors.final),
                       dead_letter_bytes=letter_bytes)
    except OSError as exc:  # a full disk, a store refusing writes: the run stops
        raise unwritable(output.url, exc, what="the shard " + split.name) from exc
