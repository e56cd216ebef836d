"""The run's commit: every part's commit record into the manifest, then
``_SUCCESS``; stale parts of re-cut inputs and, with ``--prune``, shards no
longer listed, out of the output. Fenced by the output's lease."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import apache_beam as beam

from beamvec.contract import (
    CommitRecord,
    Description,
    RunConfig,
    RunRecord,
    finalize,
    merge_manifest,
    read_manifest,
    remove_parts,
    stale_parts,
    total,
)
from beamvec.contract.fence import fenced
from beamvec.contract.layout import RUNS_DIR, WORK_FILE
from beamvec.pipeline.work_list import read_work
from beamvec.pricing import estimate_cost
from beamvec.records import Shard
from beamvec.write.sink import Output


class CommitManifest(beam.DoFn):
    """Writes the manifest from all commit records, then ``_SUCCESS``."""

    def __init__(
        self,
        output: str,
        storage_options: dict[str, object],
        work: str,
        config: RunConfig,
        description: Description,
        started: float,
        prune: bool = False,
        lease_owner: str = "",
    ) -> None:
        self.output = output
        self.lease_owner = lease_owner
        self.storage_options = storage_options
        self.work = work
        self.config = config
        self.description = description
        self.started = started
        self.prune = prune

    def process(self, results: list[CommitRecord]) -> Iterator[list[str]]:
        out = Output(self.output, self.storage_options)
        todo, expected, carried = read_work(out, self.work)
        yield commit_run(
            out, results, todo, expected, carried, self.config, self.description,
            self.started, self.prune, self.lease_owner or None,
        )


def commit_run(
    out: Output,
    results: list[CommitRecord],
    todo: list[Shard],
    expected: list[str],
    carried: list[CommitRecord],
    config: RunConfig,
    description: Description,
    started: float | None,
    prune: bool,
    lease_owner: str | None = None,
) -> list[str]:
    """This run's commit records into the manifest; stale parts of re-cut
    inputs and, with ``prune``, shards no longer listed, out of the output.
    Returns the shards still missing (failed or not run). Fenced: only while
    ``lease_owner`` (by default, this process's) holds the output's lease,
    read, merge and writes all under one check (contract.fence)."""
    with fenced(out, lease_owner):
        return _commit_run(out, results, todo, expected, carried, config, description, started,
                           prune)


def _commit_run(
    out: Output, results: list[CommitRecord], todo: list[Shard], expected: list[str],
    carried: list[CommitRecord], config: RunConfig, description: Description,
    started: float | None, prune: bool,
) -> list[str]:
    previous = read_manifest(out)
    committed = [r for r in results if r.status == "committed"]
    current = {s.name: s.fingerprint for s in todo}
    removed: list[str] = []
    if previous is not None:
        kept = {r.name for r in committed}
        removed = [name for name in stale_parts(previous, current) if name not in kept]
        if prune:
            listed = set(expected)
            removed += [n for n, rec in previous.shards.items() if rec.shard_name not in listed]
    pruned = sorted({previous.shards[n].shard_name for n in removed if previous and n in previous.shards})
    # A no-op rerun adds no history; one that only prunes says so.
    run = run_record(results, description, started, pruned if prune else ()) if results or removed else None
    # Shards skipped as committed whose manifest entry a crash lost come back here.
    manifest = merge_manifest(previous, [*carried, *committed], config, description, run, removed)
    missing = finalize(out, manifest, expected)
    remove_parts(out, removed)  # after the manifest no longer names them
    if not missing:
        _remove_work_lists(out)
    return missing


def _remove_work_lists(out: Output) -> None:
    """The output is complete and this run holds its lease (the caller is
    fenced): this run's work list is done with, and so are those that killed
    runs left behind, since a run that lost the lease can commit nothing."""
    for left in out.fs.glob(out.path(RUNS_DIR, "*", WORK_FILE)):
        out.remove(left)


def run_record(
    results: list[CommitRecord], description: Description, started: float | None,
    pruned: Sequence[str] = (),
) -> RunRecord:
    """One line of the run history: what this run did and what it cost."""
    counts = total(r.counts for r in results)
    cost = estimate_cost(description.backend, description.model, counts.sent_tokens, counts.billable_characters)
    batch = estimate_cost(description.backend, description.model, counts.batch_sent_tokens, 0)
    usd = None if cost.standard is None else cost.standard + (batch.batch or 0.0)
    return RunRecord(
        started_at=None if started is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        shards=len(results), read=counts.read, embedded=counts.embedded,
        dead_lettered=counts.dead_lettered, tokens=counts.tokens, sent=counts.sent,
        sent_tokens=counts.sent_tokens, reused=counts.reused, deduplicated=counts.deduplicated,
        batch_sent=counts.batch_sent, batch_sent_tokens=counts.batch_sent_tokens,
        config_fingerprint=description.config_fingerprint,
        estimated_cost_usd=None if usd is None else round(usd, 6),
        cost_basis=cost.basis,
        pruned=tuple(pruned),
    )
