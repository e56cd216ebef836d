"""Every counter a run keeps, named once.

The embedder counts what it sends (``Stats``), the transforms hand the counts
to Beam's metrics, the timeline samples them, progress prints them and the
job's summary reads them back: one spelling each, defined here.
"""

from __future__ import annotations

#: The namespace of beamvec's Beam metrics.
NAMESPACE = "beamvec"
#: Beam's own counter for time spent throttled (Dataflow's autoscaler reads it).
THROTTLING_COUNTER = "throttling-msecs"

# -- what the embedder counts (Stats keys, Beam counters of the same name) --------
REQUESTS = "requests"  # requests that left
TEXTS = "texts"  # texts sent and answered
TOKENS = "tokens"  # their estimated tokens
RETRIES = "retries"  # retries of any cause
THROTTLED_429 = "throttled_429"  # requests answered 429
THROTTLED_MS = "throttled_ms"  # quota waits, summed over threads (Beam: THROTTLING_COUNTER)
IN_FLIGHT = "in_flight"  # a gauge: requests sent and not yet answered
DEAD_LETTERS = "dead_letters"  # records the embedder dead-lettered
#: Gauges are levels, not counts: never summed into Beam's counters.
GAUGES = (IN_FLIGHT,)

# -- what progress keeps (read by the timeline and the summary) -------------------
RECORDS = "records"  # records read
SHARDS = "shards"  # shards read
BYTES = "bytes"  # input bytes read
REUSED = "reused"  # records whose vector was reused
DONE = "done"  # records written (vectors and dead letters)
THROTTLED_WALL_MS = "throttled_wall_ms"  # quota waits as wall time (once, however many threads wait)
REQUESTS_OK = "requests_ok"  # answered without an error, where the source counts it

# -- Beam counters of the shard transform --------------------------------------------
RECORDS_READ = "records_read"
RECORDS_EMBEDDED = "records_embedded"


def retries_of(status: object) -> str:
    """The counter of retries after an error of ``status`` (an HTTP code or a name)."""
    return f"{RETRIES}_{status}"


def status_of(status: object) -> str:
    """The counter of answers with ``status`` (or ``error`` when there was none)."""
    return f"status_{status or 'error'}"


def retries_by_status(counts: dict[str, float]) -> dict[str, float]:
    """The per-status retry counters of ``counts``, keyed by status."""
    prefix = RETRIES + "_"
    return {k.removeprefix(prefix): v for k, v in sorted(counts.items()) if k.startswith(prefix)}
