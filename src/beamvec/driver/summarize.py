"""The end-of-run summary, read back from the manifest the pipeline wrote and
from Beam's counters (``run_summary`` holds its shape, Beam-free)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from apache_beam.metrics.metric import MetricsFilter

from beamvec import counters as c
from beamvec.contract import SUCCESS, CommitRecord, read_manifest, total
from beamvec.counters import THROTTLING_COUNTER
from beamvec.driver.job_plan import JobPlan
from beamvec.driver.run_summary import READ_ERRORS, DamagedInput, Requests, RunSummary, exit_code
from beamvec.progress import PROGRESS


def beam_counters(result: Any) -> dict[str, int]:
    """beamvec's Beam counters (requests, retries, 429s, throttling-msecs, ...),
    where the runner reports them; {} where it does not."""
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace("beamvec"))["counters"]
    except Exception:  # noqa: BLE001 - some runners have no metrics API
        return {}
    totals: dict[str, int] = {}
    for counter in counters:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals


def summarize(
    plan: JobPlan, started: float, counters: dict[str, int] | None = None, in_process: bool = False,
) -> RunSummary:
    """The end-of-run summary, read back from the manifest the pipeline wrote."""
    manifest = read_manifest(plan.output)
    # A large file is committed as parts, each under its own name: match a
    # record by the input file it belongs to, not by its name.
    todo = {s.name: s.fingerprint for s in plan.work.todo}
    records = [
        rec for rec in (manifest.shards.values() if manifest else [])
        if todo.get(rec.shard_name) == rec.file_fingerprint
    ]
    done = total(rec.counts for rec in records)
    wall = time.time() - started
    description = plan.inputs.description
    status = "complete" if plan.output.fs.exists(plan.output.path(SUCCESS)) else "incomplete"
    return RunSummary(
        output=plan.output.url,
        status=status,
        exit_code=exit_code(status, done.dead_lettered, plan.inputs.bv.fail_on_dead_letters),
        shards=len(plan.inputs.shards),
        shards_run=len({rec.shard_name for rec in records}),
        shards_skipped=len(plan.work.skipped),
        read=done.read,
        embedded=done.embedded,
        sent=done.sent,
        batch_sent=done.batch_sent,
        reused=done.reused,
        deduplicated=done.deduplicated,
        dead_lettered=done.dead_lettered,
        dead_letters_by_reason=dict(sorted(done.dead_letters_by_reason.items())),
        damaged_inputs=damaged_inputs(records),
        tokens=done.tokens,
        sent_tokens=done.sent_tokens + done.batch_sent_tokens,
        wall_seconds=round(wall, 2),
        records_per_second=round(done.read / wall, 1) if wall else 0.0,
        model=description.model,
        dimension=description.dimension,
        requests=_requests(counters, in_process) if counters else None,
    )


def damaged_inputs(records: Sequence[CommitRecord]) -> tuple[DamagedInput, ...]:
    """The input files whose bytes could not all be read, each once (a large
    file is committed as several parts)."""
    by_input: dict[str, dict[str, int]] = {}
    for rec in records:
        for reason, count in rec.counts.dead_letters_by_reason.items():
            if reason in READ_ERRORS and count:
                reasons = by_input.setdefault(rec.input, {})
                reasons[reason] = reasons.get(reason, 0) + count
    return tuple(
        DamagedInput(path, sum(reasons.values()), dict(sorted(reasons.items())))
        for path, reasons in sorted(by_input.items())
    )


def _requests(counters: dict[str, int], in_process: bool) -> Requests:
    """The API calls, from Beam's counters; the quota's wait as wall time where
    the workers ran in this process (the counter sums it over threads)."""
    return Requests(
        requests=counters.get(c.REQUESTS, 0),
        retries=counters.get(c.RETRIES, 0),
        throttled_429=counters.get(c.THROTTLED_429, 0),
        retries_by_status=c.retries_by_status(counters),
        throttled_seconds=round(PROGRESS.read()[c.THROTTLED_WALL_MS] / 1000, 2) if in_process else 0.0,
        throttled_thread_seconds=round(counters.get(THROTTLING_COUNTER, 0) / 1000, 2),
    )
