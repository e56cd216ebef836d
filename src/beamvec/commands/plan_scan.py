"""`beamvec plan`'s scan: the sampled shards routed exactly as workers route
them, nothing embedded, and what they would send, scaled to every shard."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from beamvec.commands import progress, progress_done
from beamvec.commands.plan_sample import Sample
from beamvec.commands.plan_schema import ShardScan
from beamvec.driver.resolve import JobInputs, planning_router, routed
from beamvec.records import DeadLetter, Shard
from beamvec.route.router import Lookup, Refusals, RunMemory, Send


class RequestCounter:
    """Requests for texts sent together across shards: ``batching.batches``,
    streamed, so a plan of any size holds no texts."""

    def __init__(self, max_items: int, max_tokens: int) -> None:
        self.max_items, self.max_tokens = max_items, max_tokens
        self.requests = 0
        self.largest = 0
        self._items = self._tokens = 0

    def add(self, tokens: int) -> None:
        if self._items and (self._items >= self.max_items or self._tokens + tokens > self.max_tokens):
            self._close()
        self._items += 1
        self._tokens += tokens

    def _close(self) -> None:
        self.requests += 1
        self.largest = max(self.largest, self._tokens)
        self._items = self._tokens = 0

    def done(self) -> RequestCounter:
        if self._items:
            self._close()
        return self


@dataclass(frozen=True)
class Lookups:
    """Where a planned record finds a vector already made, as a run would."""

    default: Lookup  # the output's index, or nothing to look up
    by_shard: Mapping[str, Lookup]  # the join's lookups, where the run joins
    batch: Lookup | None  # vectors earlier --batch-api runs collected and did not commit yet
    refusals: Refusals | None  # texts --retry-dead-letters dead-letters again unsent


@dataclass(frozen=True)
class Scan:
    """What routing found: per shard as read, and in total scaled to every shard to embed."""

    per_shard: list[ShardScan]
    totals: Counter[str]
    reasons: Counter[str]
    requests: int
    largest_request: int  # tokens of the fullest request


def scan_shard(shard: Shard, inputs: JobInputs, lookup: Lookup, memory: RunMemory,
               requests: RequestCounter, batch: Lookup | None = None,
               refusals: Refusals | None = None) -> ShardScan:
    """One shard routed exactly as a worker routes it; nothing embedded."""
    router = planning_router(inputs, lookup, memory, batch, refusals)
    records = characters = tokens = truncated = 0
    for decision in routed(router, shard, inputs):
        if isinstance(decision, DeadLetter):
            continue
        record = decision.record
        records += 1
        characters += len(record.text)
        tokens += record.tokens
        truncated += record.truncated
        if isinstance(decision, Send):
            requests.add(record.tokens)
    counts = router.shard_counts(records, Counter(), tokens, truncated)
    return {
        "name": shard.name,
        "input": shard.path,
        **{k: v for k, v in asdict(counts).items() if k not in ("embedded", "dead_lettered")},
        "records": records,
        "characters": characters,
        "dead_letters": counts.dead_lettered,
    }


def scan(inputs: JobInputs, sample: Sample, lookups: Lookups, quiet: bool) -> Scan:
    """The sample's shards in order, one memory of texts sent across them (as
    in a run), counts summed and scaled by input bytes when it is a sample."""
    limits = inputs.backend.limits
    memory = RunMemory(limits.dimension)
    requests = RequestCounter(limits.max_items, limits.max_request_tokens)
    results = []
    for i, shard in enumerate(sample.shards, start=1):
        progress(f"beamvec plan: reading shard {i}/{len(sample.shards)} {shard.name}", quiet)
        results.append(scan_shard(shard, inputs, lookups.by_shard.get(shard.name, lookups.default), memory,
                                  requests, lookups.batch, lookups.refusals))
    progress_done(quiet)
    requests.done()
    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for res in results:
        for key, value in res.items():
            if isinstance(value, int):
                totals[key] += value
        reasons.update(res["dead_letters_by_reason"])
    if sample.exact:
        return Scan(results, totals, reasons, requests.requests, requests.largest)
    return Scan(
        results,
        Counter({k: round(v * sample.factor) for k, v in totals.items()}),
        Counter({k: round(v * sample.factor) for k, v in reasons.items()}),
        round(requests.requests * sample.factor),
        requests.largest,
    )
