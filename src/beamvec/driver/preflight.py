"""Before any worker starts: one real call that the run needs anyway.

The backend's preflight checks credentials, model and dimension with a text
the run must send (found by routing the first records of the shards to embed
exactly as the workers will), and its vector travels to the workers, which
the workers take as sent: a run with k texts to send bills exactly k. When
every text scanned is already embedded and the scan covered all the work,
nothing is sent at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

from beamvec.contract import OutputState
from beamvec.driver.resolve import JobInputs, planning_router, reuse_lookup, routed
from beamvec.driver.reuse_choice import held
from beamvec.records import Record, Shard
from beamvec.route.router import Decision, Lookup, NoLookup, Refusals, RunMemory, Seed, Send
from beamvec.write.sink import Output

LOG = logging.getLogger("beamvec")
#: Records scanned for a text to send before falling back to a probe text.
SCAN_LIMIT = 10_000


@dataclass(frozen=True)
class Preflight:
    """What the driver's call leaves the workers: the text it embedded (None
    when it sent a probe text) and when it was sent (wall clock), one request
    already in the server's quota window when the workers start."""

    seed: Seed | None
    sent_at: float


def first_text_to_send(
    output: Output, inputs: JobInputs, todo: list[Shard], reuse: bool, state: OutputState | None = None,
    refusals: Refusals | None = None, joined: bool = False,
) -> tuple[Record | None, Shard | None, bool]:
    """(a record whose text the run will send, its shard, whether the scan saw
    all the work). ``refusals``: texts the run dead-letters unsent (never the
    preflight's text: it would be billed, and refused). ``joined``: the run
    reuses by the join, so no index is built here either: the texts the scan
    would send are looked for in the sources' hash columns, all at once."""
    by_columns = reuse and joined
    lookup = reuse_lookup(inputs, output, state) if reuse and not joined else NoLookup()
    sends: list[tuple[Record, Shard]] = []
    scanned = 0
    for decision, shard in islice(_scan(inputs, todo, lookup, refusals), SCAN_LIMIT):
        scanned += 1
        if isinstance(decision, Send):
            if not by_columns:
                return decision.record, shard, False
            sends.append((decision.record, shard))
    if by_columns:  # a text's first Send, when the sources hold it, is what the index calls a Reuse
        known = held(inputs, output, state, {record.content_hash for record, _ in sends})
        sends = [(record, shard) for record, shard in sends if record.content_hash not in known]
    if sends:
        return sends[0][0], sends[0][1], False
    return None, None, scanned < SCAN_LIMIT


def _scan(inputs: JobInputs, todo: list[Shard], lookup: Lookup, refusals: Refusals | None,
          ) -> Iterator[tuple[Decision, Shard]]:
    """The work's records routed as the workers will route them, in order."""
    memory = RunMemory(inputs.backend.limits.dimension)
    for shard in todo:
        for decision in routed(planning_router(inputs, lookup, memory, refusals=refusals), shard, inputs):
            yield decision, shard


def preflight(
    output: Output, inputs: JobInputs, todo: list[Shard], reuse: bool, state: OutputState | None = None,
    refusals: Refusals | None = None, joined: bool = False,
) -> Preflight | None:
    """Check the backend with a text the run needs; returns its content hash,
    vector and record for the workers (the record counts it as sent, and no
    worker sends that text again), and when it was sent. None when nothing
    was sent that the quota counts."""
    backend = inputs.backend
    if backend.name == "local":  # free: nothing worth keeping
        backend.preflight()
        return None
    record, shard, all_seen = first_text_to_send(output, inputs, todo, reuse, state, refusals, joined)
    if record is None and all_seen:
        LOG.info("every text to embed is already embedded: no preflight call")
        return None
    called_at = time.time()
    vector = backend.preflight(*((record.text, record.title) if record is not None else ()))
    sent_at = backend.preflight_sent_at or called_at  # when its window took it in, as near as known
    if record is None or shard is None or vector is None:
        return Preflight(None, sent_at)
    return Preflight(Seed(record.content_hash, tuple(float(x) for x in vector), shard.path, record.position), sent_at)
