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

from beamvec.inputs import JobInputs
from beamvec.lookup import build_index
from beamvec.records import Record, Shard
from beamvec.routing import NoLookup, Router, RunMemory, Seed, Send
from beamvec.sink import Output
from beamvec.sources import read_shard

LOG = logging.getLogger("beamvec")
#: Records scanned for a text to send before falling back to a probe text.
SCAN_LIMIT = 10_000


def first_text_to_send(
    output: Output, inputs: JobInputs, todo: list[Shard], reuse: bool
) -> tuple[Record | None, Shard | None, bool]:
    """(a record whose text the run will send, its shard, whether the scan saw all the work)."""
    fingerprint = inputs.description.config_fingerprint
    dimension = inputs.backend.limits.dimension
    if reuse:
        others = [Output(url, inputs.storage_options) for url in inputs.bv.reuse_from or ()]
        lookup = build_index(output, others, fingerprint, dimension)
    else:
        lookup = NoLookup()
    memory = RunMemory(dimension)
    scanned = 0
    for shard in todo:
        router = Router(
            inputs.prepare, inputs.backend.count_tokens, inputs.backend.truncate, lookup, memory,
            lambda record, outcome: None, planning=True,
        )
        for raw in read_shard(shard, inputs.reader, inputs.storage_options):
            scanned += 1
            decision = router.route(raw)
            if isinstance(decision, Send):
                return decision.record, shard, False
            if scanned >= SCAN_LIMIT:
                return None, None, False
    return None, None, True


def preflight(output: Output, inputs: JobInputs, todo: list[Shard], reuse: bool) -> Seed | None:
    """Check the backend with a text the run needs; returns its content hash,
    vector and record for the workers: the record counts it as sent, and no
    worker sends that text again."""
    backend = inputs.backend
    if backend.name == "local":  # free: nothing worth keeping
        backend.preflight()
        return None
    record, shard, all_seen = first_text_to_send(output, inputs, todo, reuse)
    if record is None and all_seen:
        LOG.info("every text to embed is already embedded: no preflight call")
        return None
    vector = backend.preflight(*((record.text, record.title) if record is not None else ()))
    if record is None or shard is None or vector is None:
        return None
    return Seed(record.content_hash, tuple(float(x) for x in vector), shard.path, record.position)
