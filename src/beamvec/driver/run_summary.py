"""What `beamvec run` says when it ends: one record, printed as text or JSON,
and the exit code it implies.

The JSON form is a stable schema (docs/cli.md): fields are only ever added,
and ``schema`` names its version. Nothing here imports Beam, so the CLI can
name its exit codes without it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from beamvec.records import CORRUPT_FILE, INVALID_UTF8

SCHEMA = "beamvec.run/1"

# Exit codes (docs/cli.md, `beamvec --help`): what a scheduler can branch on.
EXIT_OK = 0  # done; dead letters are data, not failure (unless --fail-on-dead-letters)
EXIT_FAILED = 1  # a systemic fault, or the run ended without _SUCCESS
EXIT_USAGE = 2  # a flag, file or command is wrong: fix it, retrying will not help
EXIT_DEAD_LETTERS = 3  # done, some records dead-lettered, and --fail-on-dead-letters
EXIT_PENDING = 75  # --no-wait: Batch API jobs still running; rerun later (EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # Ctrl-C: committed shards stay committed
EXIT_TERMINATED = 143  # SIGTERM (a scheduler's stop): committed shards stay committed

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "done (dead letters, if any, are listed in the summary)"),
    (EXIT_FAILED, "failed, or ended without _SUCCESS: rerun the same command to resume"),
    (EXIT_USAGE, "usage error: a flag, file or command is wrong"),
    (EXIT_DEAD_LETTERS, "done with dead letters, and --fail-on-dead-letters was given"),
    (EXIT_PENDING, "--no-wait: Batch API jobs still running; rerun later to collect"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C); committed shards stay committed"),
    (EXIT_TERMINATED, "terminated (SIGTERM); committed shards stay committed"),
)

#: Dead-letter reasons that mean the bytes of an input file could not be read.
READ_ERRORS = (CORRUPT_FILE, INVALID_UTF8)


@dataclass(frozen=True)
class DamagedInput:
    """An input file whose bytes could not all be read, and what that cost."""

    input: str
    dead_letters: int  # records (or unreadable stretches) dead-lettered for read errors
    reasons: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Requests:
    """The API calls of the run, where the runner reports them."""

    requests: int = 0
    retries: int = 0
    throttled_429: int = 0
    retries_by_status: Mapping[str, int] = field(default_factory=dict)
    throttled_seconds: float = 0.0  # wall time during which some request waited on the quota
    throttled_thread_seconds: float = 0.0  # the same waits summed over threads


@dataclass(frozen=True)
class RunSummary:
    """The end of a run, read back from the manifest the pipeline wrote.

    ``read = embedded + dead_lettered`` for the shards this run committed, and
    ``embedded = sent + batch_sent + reused + deduplicated``: every vector was
    billed now, found in an output, or is a repeat of a text billed now.
    """

    output: str
    status: str  # "complete", "incomplete" or "pending" (--no-wait, batch jobs running)
    exit_code: int
    shards: int = 0
    shards_run: int = 0
    shards_skipped: int = 0
    read: int = 0
    embedded: int = 0
    sent: int = 0
    batch_sent: int = 0
    reused: int = 0
    deduplicated: int = 0
    dead_lettered: int = 0
    dead_letters_by_reason: Mapping[str, int] = field(default_factory=dict)
    damaged_inputs: tuple[DamagedInput, ...] = ()
    tokens: int = 0  # tokens of every embedded text
    sent_tokens: int = 0  # of them, billed by this run (online and batch)
    wall_seconds: float = 0.0
    records_per_second: float = 0.0
    model: str | None = None
    dimension: int | None = None
    requests: Requests | None = None  # None where the runner reports no metrics
    batch_status: str | None = None  # the Batch API's one line, with --no-wait

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def to_json(self) -> str:
        return json.dumps({"schema": SCHEMA, **dataclasses.asdict(self)}, indent=2)


def exit_code(status: str, dead_lettered: int, fail_on_dead_letters: bool) -> int:
    """The one policy: see EXIT_CODES."""
    if status == "pending":
        return EXIT_PENDING
    if status != "complete":
        return EXIT_FAILED
    return EXIT_DEAD_LETTERS if dead_lettered and fail_on_dead_letters else EXIT_OK


def format_summary(s: RunSummary) -> str:
    """The summary a person reads."""
    billed = f"{s.sent:,} sent" + (f", {s.batch_sent:,} through batch jobs" if s.batch_sent else "")
    lines = [
        "beamvec run summary",
        f"  shards         {s.shards} ({s.shards_run} run, {s.shards_skipped} skipped as committed)",
        f"  records read   {s.read:,}",
        f"  embedded       {s.embedded:,}  ({billed}, {s.reused:,} reused, "
        f"{s.deduplicated:,} repeats of a text sent now)",
        f"  model          {s.model}, {s.dimension} dims; {s.tokens:,} tokens embedded, "
        f"{s.sent_tokens:,} sent",
        f"  dead-lettered  {s.dead_lettered:,}",
    ]
    lines += [f"    {reason:<14} {count:,}" for reason, count in sorted(s.dead_letters_by_reason.items())]
    for damaged in s.damaged_inputs:
        lines.append(f"  read error     {damaged.input}: {damaged.dead_letters:,} dead letters "
                     f"({', '.join(f'{r} {n:,}' for r, n in sorted(damaged.reasons.items()))})")
    r = s.requests
    if r is not None and r.requests:
        by_status = ", ".join(f"{k}: {v}" for k, v in sorted(r.retries_by_status.items()))
        lines.append(
            f"  requests       {r.requests:,}  (retries {r.retries:,}"
            + (f" by status {by_status}" if by_status else "")
            + f"; 429s {r.throttled_429:,}; waited on the quota {_throttled(r)})"
        )
    state = {"complete": "complete: _SUCCESS written"}.get(s.status, "INCOMPLETE")
    lines += [
        f"  wall time      {s.wall_seconds:.1f} s  ({s.records_per_second:,.1f} records/s)",
        f"  output         {s.output}  ({state})",
    ]
    return "\n".join(lines)


def _throttled(r: Requests) -> str:
    if r.throttled_seconds or not r.throttled_thread_seconds:
        return f"{r.throttled_seconds:.1f} s of wall time"
    # Only summed counters (a remote runner): say what the figure is.
    return f"{r.throttled_thread_seconds:.1f} s summed over threads"
