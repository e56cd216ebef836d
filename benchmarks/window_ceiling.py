"""What two evenly paced clients can get through one short sliding window.

Two jobs that do not know of each other each pace their requests evenly. A
server that meters over a window of W seconds refuses a request when the
window already holds L. A client paced at r requests a second can put
ceil(r * W) requests into some window, and the two clients' phases drift, so
sooner or later both peaks meet: unless ceil(r1 * W) + ceil(r2 * W) <= L,
some requests are refused however far under L / W the two rates add up to.

Over 60 s (600 requests) that costs a fraction of a percent; over 1 s (10
requests) it is why two unaware jobs cannot hold 0.95 of the quota there
without 429s: only rates just under whole numbers of requests per second fit.
No beamvec code runs here, only the emulator's own window (the same class the
emulator enforces quotas with), fed two fixed-rate streams with random phases
and a few milliseconds of jitter. Used by the README's quota section.
"""

from __future__ import annotations

import argparse
import random
import sys

from beamvec.emulator.window import SlidingWindowQuota

#: (requests a second of one job, of the other), each pair at most 0.98 of 10 a second.
PAIRS = [(4.9, 4.9), (5.88, 3.92), (5.0, 4.8), (5.2, 4.6), (5.4, 4.4), (5.3, 3.9), (4.5, 4.5)]


def run(rates: tuple[float, float], window_s: float, limit: int, seconds: float, seed: int,
        jitter_s: float = 0.003) -> tuple[float, float]:
    """(accepted as a fraction of the limit, refused as a fraction of those sent)."""
    rnd = random.Random(seed)
    arrivals = []
    for rate in rates:
        t = rnd.random() / rate
        while t < seconds:
            arrivals.append(t + rnd.expovariate(1.0 / jitter_s))
            t += 1.0 / rate
    arrivals.sort()
    quota = SlidingWindowQuota(window_s, limit, None)
    accepted = sum(1 for t in arrivals if quota.try_acquire(t, 0)[0])
    return accepted / (limit / window_s * seconds), 1.0 - accepted / len(arrivals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"Two clients paced evenly, {args.seconds:g} s, {args.seeds} random phases each; "
          "quota 10 requests a second metered over each window.\n")
    print("| requests a second (job 1 + job 2) | of the limit sent | "
          "1-s window: accepted / refused | 6-s window | 60-s window |")
    print("| --- | ---: | --- | --- | --- |")
    for pair in PAIRS:
        cells = []
        for window_s in (1.0, 6.0, 60.0):
            runs = [run(pair, window_s, round(10 * window_s), args.seconds, seed) for seed in range(args.seeds)]
            accepted = sum(a for a, _ in runs) / len(runs)
            refused = sum(r for _, r in runs) / len(runs)
            cells.append(f"{accepted:.2f} / {refused:.1%}")
        print(f"| {pair[0]:g} + {pair[1]:g} | {sum(pair) / 10:.2f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
