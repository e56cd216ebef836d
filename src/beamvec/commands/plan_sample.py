"""`beamvec plan` on large corpora: read a random sample of shards, scale by bytes.

Exact up to ``EXACT_SHARDS`` shards to embed (or with `plan --exact`); past
that, ``SAMPLE_SHARDS`` shards chosen at random (seeded, so two plans agree)
are routed as a run would route them, and every count is scaled by input
bytes (a ratio estimator: count per byte in the sample times the bytes to
embed). The stated error is the 95 % interval of that estimator for the texts
to send, from the spread of the sampled shards' per-byte ratios. What a sample
cannot see: repeats *across* unsampled shards (the estimate counts them as
sent, so it errs high, never low).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from beamvec.records import Shard

EXACT_SHARDS = 2_000
SAMPLE_SHARDS = 1_000


@dataclass(frozen=True)
class Sample:
    shards: list[Shard]  # the shards to read
    factor: float  # what their counts are multiplied by (1.0: exact)
    of: int  # shards to embed in all

    @property
    def exact(self) -> bool:
        return self.factor == 1.0 and len(self.shards) == self.of


def choose(todo: Sequence[Shard], exact: bool) -> Sample:
    if exact or len(todo) <= EXACT_SHARDS:
        return Sample(list(todo), 1.0, len(todo))
    chosen = random.Random(0).sample(list(todo), SAMPLE_SHARDS)
    sampled_bytes = sum(max(0, s.size) for s in chosen)
    total_bytes = sum(max(0, s.size) for s in todo)
    factor = total_bytes / sampled_bytes if sampled_bytes else len(todo) / len(chosen)
    return Sample(chosen, factor, len(todo))


def relative_error_95(per_shard: Sequence[Mapping[str, object]], sizes: Sequence[int], key: str,
                      population: int) -> float | None:
    """Half-width of the 95 % interval of the ratio estimate of ``key``, as a
    fraction of the estimate (finite-population corrected)."""
    n = len(per_shard)
    values = [float(s.get(key, 0) or 0) for s in per_shard]  # type: ignore[arg-type]
    total_x, total_b = sum(values), float(sum(sizes))
    if n < 2 or total_x <= 0 or total_b <= 0:
        return None
    ratio = total_x / total_b
    mean_b = total_b / n
    residual = sum((x - ratio * b) ** 2 for x, b in zip(values, sizes, strict=True)) / (n - 1)
    correction = max(0.0, 1 - n / population)
    se_ratio = math.sqrt(correction * residual / n) / mean_b
    return 1.96 * se_ratio / ratio
