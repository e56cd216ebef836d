"""Quota: buckets never exceed their rate, AIMD cuts and recovers, shares add
up, and concurrent callers never double-book. All on simulated time."""

from __future__ import annotations

import heapq
import itertools
import math
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest

from beamvec.quota import (
    AdaptiveLimiter,
    AimdController,
    AimdSettings,
    Cut,
    Limiter,
    QuotaSettings,
    ScaleSettings,
    TokenBucket,
    TokenScale,
    pace,
)
from quota_sim import FakeClock, Outcome, simulate


def max_in_window(
    times: list[float], amounts: list[float] | None = None, window: float = 60.0
) -> float:
    """The largest total of ``amounts`` sent within any half-open ``window``."""
    order = sorted(range(len(times)), key=times.__getitem__)
    ts = [times[i] for i in order]
    xs = [1.0] * len(ts) if amounts is None else [amounts[i] for i in order]
    best = total = 0.0
    lo = 0
    for hi, t in enumerate(ts):
        total += xs[hi]
        while ts[lo] <= t - window:
            total -= xs[lo]
            lo += 1
        best = max(best, total)
    return best


# -- token bucket -------------------------------------------------------------------


def test_bucket_allows_its_burst_then_paces() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=2.0, capacity=3.0, clock=clock)
    waits = [bucket.reserve() for _ in range(7)]
    # 3 at once, then one every 0.5 s, booked in order
    assert waits == pytest.approx([0, 0, 0, 0.5, 1.0, 1.5, 2.0])
    assert bucket.available() == pytest.approx(-4.0)


def test_bucket_oversized_amount_waits_but_never_deadlocks() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=10.0, capacity=5.0, clock=clock)
    assert bucket.reserve(25.0) == pytest.approx(2.0)  # 20 tokens short at 10/s
    assert not bucket.try_acquire(1.0)
    clock.now += 2.0
    assert bucket.available() == pytest.approx(0.0)
    assert bucket.reserve(1.0) == pytest.approx(0.1)
    # an oversized amount is admitted once the bucket could have covered it:
    # full, and refilled for the excess (3 tokens = 0.3 s) on top
    fresh = TokenBucket(rate_per_s=10.0, capacity=5.0, clock=clock)
    assert fresh.try_acquire(8.0) is False
    assert fresh.reserve(8.0) == pytest.approx(0.3)
    clock.now += 100.0
    assert fresh.try_acquire(8.0) is True
    assert not fresh.try_acquire(0.5)


def test_bucket_try_acquire_books_only_on_success() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=1.0, capacity=2.0, clock=clock)
    assert bucket.try_acquire()
    assert bucket.try_acquire()
    assert not bucket.try_acquire()
    assert not bucket.try_acquire()
    clock.now += 1.0
    assert bucket.try_acquire()
    assert not bucket.try_acquire()


def test_bucket_set_rate_keeps_the_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=4.0, capacity=1.0, clock=clock)
    bucket.reserve(1.0)
    bucket.reserve(1.0)  # 1 token in debt: free again in 0.25 s at 4/s
    bucket.set_rate(1.0)
    assert bucket.available() == pytest.approx(-1.0)
    assert bucket.reserve(1.0) == pytest.approx(2.0)  # repay 1, then 1 more, at 1/s


def test_bucket_faster_rate_never_squeezes_between_booked_sends() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=1.0, capacity=1.0, clock=clock)
    assert [bucket.reserve() for _ in range(3)] == pytest.approx([0.0, 1.0, 2.0])
    bucket.set_rate(10.0)
    # the send booked at +2 s stands; the faster rate applies after it
    assert bucket.reserve() == pytest.approx(2.1)


def test_bucket_larger_capacity_is_earned_not_granted() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=1.0, capacity=2.0, clock=clock)
    clock.now += 10.0
    bucket.set_rate(2.0, capacity=6.0)
    assert bucket.available() == pytest.approx(2.0)
    clock.now += 2.0
    assert bucket.available() == pytest.approx(6.0)


@pytest.mark.parametrize(("rate", "capacity"), [(1.0, 1.0), (10.0, 10.0), (0.3, 2.0), (50.0, 3.0)])
def test_bucket_bound_holds_in_every_window(rate: float, capacity: float) -> None:
    """Bursty callers with idle gaps: sent ≤ capacity + rate·T in any window T."""
    clock = FakeClock()
    bucket = TokenBucket(rate, capacity, clock)
    rng = random.Random(int(rate * 100))
    sends: list[float] = []
    for _ in range(3000):
        if rng.random() < 0.05:
            clock.now += rng.uniform(0, 20 / rate)  # go idle, let it refill
        wait = bucket.reserve()
        clock.now += wait
        sends.append(clock.now)
    for window in (1.0, 5.0, 60.0):
        assert max_in_window(sends, window=window) <= capacity + rate * window + 1e-9


# -- limiter: staying under the quota ---------------------------------------------------


def run_saturated(
    limiter: AdaptiveLimiter, clock: FakeClock, n: int, tokens=lambda: 0.0
) -> tuple[list[float], list[float]]:
    """One caller sending as fast as the limiter allows; returns send times and token amounts."""
    sends, amounts = [], []
    for _ in range(n):
        amount = tokens()
        limiter.acquire(amount)
        sends.append(clock())
        amounts.append(amount)
    return sends, amounts


@pytest.mark.parametrize("rpm", [600.0, 60.0, 7.0, 3000.0])
def test_limiter_never_exceeds_rpm_in_any_60s_window(rpm: float) -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(rpm, clock=clock, sleep=clock.sleep)
    sends, _ = run_saturated(limiter, clock, int(rpm * 5))
    assert max_in_window(sends) <= rpm
    # and it does not leave much of the quota unused
    assert max_in_window(sends) >= math.floor(rpm * 0.97)
    assert limiter.stats().requests == len(sends)
    assert limiter.waited_seconds == pytest.approx(clock.now - 1000.0)


def test_limiter_burst_is_one_request() -> None:
    """A server may meter over 1 s, so a fresh worker sends one request
    at once, then evenly spaced ones (was: one second's worth at once)."""
    clock = FakeClock()
    limiter = AdaptiveLimiter(600, clock=clock, sleep=clock.sleep)
    waits = [limiter.reserve() for _ in range(30)]
    assert sum(1 for w in waits if w == 0) == 1
    assert max_in_window([1000.0 + w for w in waits], window=1.0) <= 10


def test_limiter_with_idle_gaps_and_bursts_stays_under_rpm() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(120, clock=clock, sleep=clock.sleep)
    rng = random.Random(11)
    sends = []
    for _ in range(2000):
        if rng.random() < 0.02:
            clock.now += rng.uniform(1, 90)
        limiter.acquire()
        sends.append(clock())
    assert max_in_window(sends) <= 120


def test_limiter_tokens_per_minute_hold_with_uneven_and_oversized_requests() -> None:
    clock = FakeClock()
    tpm = 60_000.0
    limiter = AdaptiveLimiter(None, tpm, clock=clock, sleep=clock.sleep)
    rng = random.Random(5)
    # 1 s of rate is 1,000 tokens: most requests fit the burst, some are far larger
    sizes = [rng.choice([10, 200, 900]) for _ in range(300)] + [5_000, 20_000] + [300] * 300
    it = iter(sizes)
    sends, amounts = run_saturated(limiter, clock, len(sizes), tokens=lambda: next(it))
    assert max_in_window(sends, amounts) <= tpm
    assert limiter.stats().tokens == sum(sizes)


def test_limiter_applies_both_limits() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(600, 120_000, clock=clock, sleep=clock.sleep)
    rng = random.Random(8)
    sends, amounts = run_saturated(limiter, clock, 3000, tokens=lambda: rng.choice([10, 100, 1000]))
    assert max_in_window(sends) <= 600
    assert max_in_window(sends, amounts) <= 120_000


def test_unlimited_limiter_never_waits() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(None, None, clock=clock, sleep=clock.sleep)
    assert all(limiter.acquire(10_000) == 0 for _ in range(1000))
    assert limiter.current_rpm is None


def simulate_workers(
    limiters: list[AdaptiveLimiter],
    clock: FakeClock,
    seconds: float,
    slots: int,
    latency: float,
    seed: int,
) -> list[float]:
    """Discrete-event simulation: each worker has ``slots`` request threads that
    book, wait, send, then wait for the response. Returns all send times."""
    rng = random.Random(seed)
    events = [
        (clock.now + rng.uniform(0, 1), w, s) for w in range(len(limiters)) for s in range(slots)
    ]
    heapq.heapify(events)
    sends = []
    end = clock.now + seconds
    while events:
        t, w, s = heapq.heappop(events)
        if t > end:
            break
        clock.now = t
        send = t + limiters[w].reserve()
        sends.append(send)
        heapq.heappush(events, (send + latency * rng.uniform(0.5, 1.5), w, s))
    return sends


def test_two_workers_at_half_share_stay_under_rpm_together() -> None:
    clock = FakeClock()
    rpm = 600.0
    workers = [AdaptiveLimiter(rpm, share=0.5, elastic=False, clock=clock, sleep=clock.sleep) for _ in range(2)]
    sends = simulate_workers(workers, clock, seconds=600, slots=8, latency=0.2, seed=1)
    assert max_in_window(sends) <= rpm
    assert max_in_window(sends) >= 0.95 * rpm  # and they use it


def test_many_workers_with_concurrency_stay_under_rpm() -> None:
    clock = FakeClock()
    rpm, n = 1000.0, 7
    workers = [
        AdaptiveLimiter(rpm, share=1 / n, elastic=False, clock=clock, sleep=clock.sleep) for _ in range(n)
    ]
    sends = simulate_workers(workers, clock, seconds=400, slots=5, latency=1.5, seed=2)
    assert max_in_window(sends) <= rpm


@pytest.mark.parametrize("seed", range(25))
def test_random_workloads_with_adaptation_stay_under_quota(seed: int) -> None:
    """Several workers, several request threads each, long latencies and idle
    spells, uneven token counts, 429s and recoveries: the quota holds in every
    60 s window. (Regression: a recovering rate once let new requests jump
    ahead of sends already booked.)"""
    rng = random.Random(seed)
    clock = FakeClock()
    rpm = rng.choice([10.0, 60.0, 600.0, 1500.0])
    tpm = rng.choice([None, 5_000.0, 60_000.0, 1e6])
    n = rng.choice([w for w in (1, 2, 3, 5) if rpm / w >= 2])
    workers = [
        AdaptiveLimiter(rpm, tpm, share=1 / n, elastic=False, clock=clock, sleep=clock.sleep)
        for _ in range(n)
    ]
    events = [
        (clock.now + rng.uniform(0, 2), w, s) for w in range(n) for s in range(rng.randint(1, 6))
    ]
    heapq.heapify(events)
    sends, amounts = [], []
    end = clock.now + 300
    while events:
        t, w, s = heapq.heappop(events)
        if t > end:
            break
        clock.now = t
        # no single request above half a worker's token share: that could not be paced
        amount = min(rng.choice([1, 50, 500, 3000, 20000]), tpm / n / 2) if tpm else 0.0
        send = t + workers[w].reserve(amount)
        sends.append(send)
        amounts.append(amount)
        r = rng.random()
        if r < 0.1:
            workers[w].on_throttled(rng.choice([None, 2.0]))
        elif r < 0.9:
            workers[w].on_success()
        idle = rng.uniform(0, 60) if rng.random() < 0.01 else 0.0
        heapq.heappush(events, (send + rng.uniform(0.05, 3) + idle, w, s))
    assert max_in_window(sends) <= rpm
    if tpm:
        assert max_in_window(sends, amounts) <= tpm


# -- limiter: adapting to 429s ---------------------------------------------------------------


def test_under_cuts_the_window_bound_still_holds() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(600, clock=clock, sleep=clock.sleep)
    rng = random.Random(3)
    sends = []
    for _ in range(6000):
        limiter.acquire()
        sends.append(clock())
        if rng.random() < 0.01:
            limiter.on_throttled()
        else:
            limiter.on_success()
    assert limiter.cuts > 0
    assert max_in_window(sends) <= 600


def test_retry_after_holds_new_requests() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(600, clock=clock, sleep=clock.sleep)
    limiter.on_throttled(retry_after=10.0)
    assert limiter.acquire() == pytest.approx(10.0)
    limiter.on_throttled(retry_after=10_000.0)  # capped: never stall a worker for hours
    assert limiter.reserve() <= 60.0 + 1.0


# -- concurrency -----------------------------------------------------------------------------------


def test_concurrent_reservations_never_double_book() -> None:
    """With time frozen, N threads' bookings must form exactly the sequential
    schedule: a lost update would show as two callers given the same slot."""
    clock = FakeClock()
    limiter = AdaptiveLimiter(600, clock=clock, sleep=clock.sleep)
    threads, per_thread = 8, 250
    waits: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def worker() -> None:
        barrier.wait()
        mine = [limiter.reserve(0) for _ in range(per_thread)]
        with lock:
            waits.extend(mine)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()

    sequential = AdaptiveLimiter(600, clock=FakeClock(), sleep=lambda s: None)
    expected = [sequential.reserve(0) for _ in range(threads * per_thread)]
    assert sorted(waits) == pytest.approx(expected)
    assert limiter.stats().requests == threads * per_thread


def test_acquire_from_threads_accounts_every_wait() -> None:
    clock = FakeClock()
    slept: list[float] = []
    slept_lock = threading.Lock()

    def sleep(seconds: float) -> None:
        with slept_lock:
            slept.append(seconds)

    limiter = AdaptiveLimiter(6000, 1_000_000, clock=clock, sleep=sleep)
    returned: list[float] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(200):
            w = limiter.acquire(rng.randint(1, 500))
            with slept_lock:
                returned.append(w)
            if rng.random() < 0.1:
                limiter.on_throttled()
            else:
                limiter.on_success()
            clock.sleep(0.001)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    stats = limiter.stats()
    assert stats.requests == 1200
    assert stats.waited_s == pytest.approx(sum(returned))
    assert sum(slept) == pytest.approx(sum(w for w in returned if w > 0))
    assert 0.05 <= stats.fraction <= 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rpm": 0},
        {"rpm": -1},
        {"rpm": 60, "tpm": 0},
        {"rpm": 60, "share": 0},
        {"rpm": float("nan")},
        {"rpm": 60, "late_slack_s": -0.001},
    ],
)
def test_limiter_rejects_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AdaptiveLimiter(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"edge_cut": 0.0}, {"decrease": 1.0}, {"min_fraction": 0.0}, {"recovery_s": 0.0},
     {"measure_slack": 1.0}, {"measure_slack": -0.1}],
)
def test_aimd_settings_reject_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AimdSettings(**kwargs)


def test_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
    with pytest.raises(ValueError):
        TokenBucket(1, 0)


# -- pacing, AIMD, discovery, unaware workers ---------------------------------------


def test_pacing_holds_one_request_of_burst_and_pays_for_it() -> None:
    p = pace(600.0, 60.0, fraction=1.0, margin=0.02, burst=1.0)
    assert p.capacity == 1.0
    assert p.rate_per_s == pytest.approx((588.0 - 1.0) / 60.0)
    # tokens: the bucket holds the largest request, paid for out of the window
    t = pace(60_000.0, 60.0, fraction=0.5, margin=0.0, burst=5_000.0)
    assert t.capacity == 5_000.0
    assert t.rate_per_s == pytest.approx(25_000.0 / 60.0)
    # a budget too small to pay for its burst still sends, at half its rate
    assert pace(1.0, 60.0, 1.0, 0.02, 1.0).rate_per_s == pytest.approx(1.0 / 120.0)


@pytest.mark.parametrize("burst", [1.0, 2.0])
def test_bucket_burst_never_exceeds_two_requests_after_idle(burst: float) -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(6000, burst_requests=burst, clock=clock, sleep=clock.sleep)
    rng = random.Random(4)
    for _ in range(50):
        clock.now += rng.uniform(0, 30)  # idle: the bucket refills as far as it can
        waits = [limiter.reserve() for _ in range(10)]
        assert sum(1 for w in waits if w == 0) <= burst


def test_an_edge_429_cuts_a_little_and_recovers_within_seconds() -> None:
    aimd = AimdController(AimdSettings(), now=0.0)
    assert aimd.on_throttled(100.0, asked_at=99.9) is Cut.EDGE
    assert 0.90 <= aimd.fraction <= 0.95  # 5-10 %, not half
    t = 100.0
    while aimd.fraction < 0.95:
        t += 0.1
        aimd.tick(t)
    assert t - 100.0 <= 3.0  # seconds, not 30


def test_an_edge_429_well_under_the_whole_quota_lowers_the_target_with_the_rate() -> None:
    """A worker at half of the whole quota shares it: the 429 says the
    workers' sum is too much, so it does not come back to where it was refused
    (a lone worker at the quota does: a late arrival was refused, not its rate)."""
    shared = AimdController(AimdSettings(), now=99.0, max_fraction=2.0, probe_scale=2.0)
    assert shared.on_throttled(100.0, asked_at=99.9) is Cut.EDGE
    assert shared.target <= 0.95
    for t in range(101, 110):  # recovered, and not yet probing
        shared.tick(float(t))
    assert shared.fraction == pytest.approx(0.95)
    alone = AimdController(AimdSettings(), now=99.0)
    alone.on_throttled(100.0, asked_at=99.9)
    alone.tick(109.0)
    assert alone.fraction == pytest.approx(0.99)


def test_after_a_deep_cut_probing_waits_out_the_server_window() -> None:
    """A congestion cut (or a settling on the accepted rate) leaves a hole in
    the server's window; probing waits as long as the window before it grows
    the target. An edge cut, or a window not known, waits the usual 10 s."""

    def probes_after(window_s: float, deep: bool) -> float:
        aimd = AimdController(AimdSettings(), now=0.0)
        aimd.window_s = window_s
        aimd.on_throttled(100.0, asked_at=99.0)
        if deep:
            aimd.on_throttled(101.0, asked_at=100.5)
            assert aimd.last_kind is Cut.CONGESTION
        cut, t = aimd.target, 101.0
        while aimd.target <= cut:
            t += 0.5
            aimd.tick(t)
        return t - 101.0

    assert probes_after(60.0, deep=True) == pytest.approx(60.5, abs=0.6)
    assert probes_after(0.0, deep=True) == pytest.approx(10.5, abs=0.6)
    assert probes_after(60.0, deep=False) <= 11.0  # the edge cut at 100 s: 10 s of quiet

    settled = AimdController(AimdSettings(), now=0.0)
    settled.window_s = 60.0
    assert settled.on_measured(0.5, now=100.0)  # the server accepted half: a deep cut too
    settled.tick(150.0)
    assert settled.target == pytest.approx(0.5)


def test_a_429_tells_the_limiter_how_long_the_server_window_is_at_least() -> None:
    """From an empty window, the first 429 comes when it is full and its hint
    runs until the first request leaves it: busy time plus hint. After minutes
    of steady sending the busy time says nothing, and twice the hint bounds
    it. Never longer than the quota's stated window."""
    clock = FakeClock()
    fresh = Limiter(600, clock=clock, sleep=clock.sleep)
    fresh.reserve()
    clock.now += 30.0
    fresh.on_throttled(30.0, booked=(clock.now, clock.now))
    assert fresh._aimd.window_s == pytest.approx(60.0)

    clock = FakeClock()
    steady = Limiter(600, clock=clock, sleep=clock.sleep)
    for _ in range(1200):  # two minutes at the quota
        clock.now += steady.reserve()
    steady.on_throttled(0.2, booked=(clock.now, clock.now))
    assert steady._aimd.window_s == pytest.approx(0.4)

    clock = FakeClock()
    stated = Limiter(100, window_s=10.0, clock=clock, sleep=clock.sleep)
    stated.reserve()
    clock.now += 9.0
    stated.on_throttled(9.0, booked=(clock.now, clock.now))
    assert stated._aimd.window_s == pytest.approx(10.0)


def test_429s_of_requests_booked_before_the_cut_are_the_same_event() -> None:
    aimd = AimdController(AimdSettings(), now=0.0)
    assert aimd.on_throttled(100.0, asked_at=99.0) is Cut.EDGE
    assert all(aimd.on_throttled(100.0 + i / 10, asked_at=99.5) is Cut.NONE for i in range(20))
    assert aimd.cuts == 1
    # without the booking time: those within cut_window of the last cut
    assert aimd.on_throttled(101.0, asked_at=100.5) is Cut.CONGESTION
    assert aimd.on_throttled(101.5) is Cut.NONE
    assert aimd.cuts == 2


def test_repeated_429s_halve_and_settle_there() -> None:
    aimd = AimdController(AimdSettings(), now=0.0)
    aimd.on_throttled(100.0, asked_at=99.0)
    aimd.tick(101.5)
    before = aimd.fraction
    assert aimd.on_throttled(101.5, asked_at=101.0) is Cut.CONGESTION
    assert aimd.fraction == pytest.approx(before * 0.5, rel=0.05)
    assert aimd.target == aimd.fraction
    for i in range(1, 50):  # the next 5 s: quiet, and no probing yet
        aimd.tick(101.5 + i / 10)
    assert aimd.fraction == pytest.approx(before * 0.5, rel=0.05)
    # a second congestion event halves again, down to the floor at most
    for i in range(20):
        aimd.on_throttled(110.0 + i, asked_at=109.9 + i)
    assert aimd.fraction == pytest.approx(0.05)


def test_quiet_probes_above_the_share_up_to_the_whole_quota() -> None:
    aimd = AimdController(AimdSettings(), now=0.0, max_fraction=2.0, probe_scale=2.0)
    aimd.tick(9.0)
    assert aimd.fraction == 1.0  # not before probe_after_s of quiet
    fractions = []
    for t in range(10, 200):
        aimd.tick(float(t))
        fractions.append(aimd.fraction)
    assert fractions == sorted(fractions)
    assert fractions[-1] == 2.0
    strict = AimdController(AimdSettings(), now=0.0, max_fraction=1.0)
    strict.tick(500.0)
    assert strict.fraction == 1.0


@pytest.mark.parametrize("window", [60.0, 6.0, 1.0])
def test_one_told_worker_fills_any_window_without_429s(window: float) -> None:
    clock = FakeClock()
    limiter = Limiter(600, clock=clock, sleep=clock.sleep)
    out = simulate([limiter], clock, server_limit=int(600 * window / 60), window_s=window, seconds=120)
    assert out.rejected == 0
    assert out.rate(1000.0, 1120.0) >= 0.95 * 10


@pytest.mark.parametrize("window", [60.0, 6.0, 1.0])
def test_discovery_converges_near_the_server_limit(window: float) -> None:
    clock = FakeClock()
    limiter = Limiter(None, discover=True, clock=clock, sleep=clock.sleep)
    assert limiter.reserve() == 0 and limiter.current_rpm is None  # unpaced at first
    clock = FakeClock()
    limiter = Limiter(None, discover=True, clock=clock, sleep=clock.sleep)
    out = simulate([limiter], clock, server_limit=int(600 * window / 60), window_s=window, seconds=150)
    assert limiter.current_rpm is not None
    assert 0.9 * 600 <= limiter.current_rpm <= 1.1 * 600
    assert out.throttled_fraction() < 0.05
    assert 0.9 * 10 <= out.rate(1090.0, 1150.0) <= 10.0


@pytest.mark.parametrize(("window", "seed", "bound"), [(6.0, 1, 0.9), (1.0, 2, 0.9), (6.0, 3, 0.9)])
def test_two_unaware_workers_converge_to_the_shared_quota(window: float, seed: int, bound: float) -> None:
    """Two jobs each told the whole quota, not of each other. At a one-second
    window each overshoot of probing costs a 429 event at once: over seeds
    1-10, 0.90-0.95 of the quota since an edge 429 under the whole quota
    lowers the target with the rate (0.86-0.90 when it came back at once)."""
    clock = FakeClock()
    workers = [Limiter(600, clock=clock, sleep=clock.sleep) for _ in range(2)]
    out = simulate(workers, clock, server_limit=int(600 * window / 60), window_s=window,
                   seconds=180, seed=seed)
    assert out.rate(1060.0, 1180.0) >= bound * 10  # combined, after the first minute
    assert out.throttled_fraction() < 0.03
    assert min(out.by_worker.values()) >= 0.35 * len(out.accepted)  # and roughly fairly


def test_a_worker_left_alone_grows_into_the_unused_share() -> None:
    clock = FakeClock()
    workers = [Limiter(600, share=0.5, clock=clock, sleep=clock.sleep) for _ in range(2)]
    out = simulate(workers, clock, server_limit=60, window_s=6.0, seconds=200, busy_until=[1e9, 30.0])
    assert out.rate(1000.0, 1030.0) >= 0.95 * 10  # both busy: the told shares fill the quota
    # one alone: within 45 s it took the other's share (probing that doubled
    # its speed every 30 s took 80 s; the cube of the quiet time, 25-45 s)
    assert out.rate(1075.0, 1120.0) >= 0.95 * 10
    assert out.rate(1150.0, 1200.0) >= 0.95 * 10
    assert out.throttled_fraction() < 0.02


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_unaware_jobs_at_a_60_s_window_do_not_overshoot_every_minute(seed: int) -> None:
    """Two jobs each told the whole quota, started together, metered over
    60 s. Their first 429 shows the window is a minute long; after each deep
    cut they wait it out before probing. When they probed after 10 s they
    climbed into the hole the cut left in the window and back to the whole
    quota each, every minute: 0.95-0.98 of the quota and 1.2-3.1 % 429s over
    seeds 1-6 (now 0.98-0.99 and under 0.7 %)."""
    clock = FakeClock()
    workers = [Limiter(600, clock=clock, sleep=clock.sleep) for _ in range(2)]
    out = simulate(workers, clock, server_limit=600, window_s=60.0, seconds=4000, work=[3000, 3000], seed=seed)
    assert sorted(out.by_worker.values()) == [3000, 3000]
    assert 6000 / 10 / (max(out.finished.values()) - 1000.0) >= 0.97
    assert out.throttled_fraction() < 0.01


def _two_jobs_of_600_requests(window: float, seed: int, **start: Any) -> tuple[Outcome, float]:
    """Two jobs each told the whole quota (600 a minute, metered over
    ``window``), 600 requests each, all done: the outcome and the share of the
    quota they kept from the start to the last request."""
    clock = FakeClock()
    workers = [Limiter(600, clock=clock, sleep=clock.sleep) for _ in range(2)]
    out = simulate(workers, clock, server_limit=int(600 * window / 60), window_s=window,
                   seconds=400, work=[600, 600], seed=seed, **start)
    assert sorted(out.by_worker.values()) == [600, 600]
    return out, 1200 / 10 / (max(out.finished.values()) - 1000.0)


@pytest.mark.parametrize(("window", "seed", "bound"), [
    (6.0, 1, 0.88), (6.0, 2, 0.88), (6.0, 3, 0.88), (1.0, 1, 0.86), (1.0, 2, 0.86), (1.0, 3, 0.86),
])
def test_two_unaware_jobs_with_the_same_work_finish_together(window: float, seed: int, bound: float) -> None:
    """The benchmark's shape: two jobs each told the whole quota, 600
    requests each. Unfair shares leave one finishing alone at its small
    share; the whole run keeps the quota full only if they stay near equal."""
    out, filled = _two_jobs_of_600_requests(window, seed)
    assert filled >= bound
    assert out.throttled_fraction() < 0.03


@pytest.mark.parametrize(("window", "seed", "bound"), [
    (6.0, 1, 0.8), (6.0, 2, 0.8), (6.0, 3, 0.8), (1.0, 1, 0.72), (1.0, 2, 0.72), (1.0, 3, 0.72),
])
def test_two_unaware_jobs_starting_apart_and_ramping_up_still_share(window: float, seed: int, bound: float) -> None:
    """As a real start goes: the second job 1.5 s after the first, and each
    opening its request threads one by one over 3 s. The first takes more
    than its half before the second arrives and AIMD evens that out only
    slowly, so this is where most of the loss is now: over 20 seeds 0.88 of
    the quota at 6 s and 0.80 at 1 s (0.86 and 0.80 before an edge 429 under
    the whole quota lowered the target). A guard, not a target."""
    out, filled = _two_jobs_of_600_requests(window, seed, ramp=3.0, starts=[0.0, 1.5])
    assert filled >= bound
    assert out.throttled_fraction() < 0.03


def test_acquire_waits_for_a_hold_that_began_while_it_slept() -> None:
    clock = FakeClock()
    limiter = Limiter(60, clock=clock, sleep=clock.sleep)
    limiter.reserve()
    first = limiter.reserve()  # booked 1 s ahead
    assert first == pytest.approx(1.0 / 0.97, rel=0.05)
    # another thread's 429 (booked after this booking) says: retry in 5 s
    limiter.on_throttled(5.0, booked=(clock.now + 0.01, clock.now + 0.01))
    clock.now += 0.02
    waited = limiter.acquire()
    assert waited >= 5.0 - 0.02


def test_a_booking_made_before_a_429_is_held_until_the_hint_is_over() -> None:
    """What acquire (and the simulation) ask before a booked request leaves."""
    clock = FakeClock()
    limiter = Limiter(600, clock=clock, sleep=clock.sleep)
    before = clock.now
    assert not limiter.held(before)  # no 429 yet
    clock.now += 0.1
    limiter.on_throttled(2.0, booked=(clock.now, clock.now))
    clock.now += 0.1
    assert limiter.held(before)  # booked before the cut: its slot is void
    assert not limiter.held(clock.now)  # booked after it: the hold is in its slot already
    clock.now += 2.0
    assert not limiter.held(before)  # the hold is over


def test_a_429_of_the_same_event_still_holds_what_was_booked_before_it() -> None:
    """A 429 of a request sent before the last cut reports that cut's event and
    cuts nothing, but its hint is the server's word: nothing accepted until
    then. A request booked after the cut and due inside that hint must book
    again; it used to leave into the hold and come back with a 429 of its
    own, which counted as congestion and halved the rate (in the simulation
    of two jobs starting slowly over a 6-s window, each job's second halving
    came this way)."""
    clock = FakeClock()
    limiter = Limiter(600, clock=clock, sleep=clock.sleep)
    cut_from = clock.now
    clock.now += 0.1
    limiter.on_throttled(0.1, booked=(clock.now, clock.now))  # the cut, a short hint
    clock.now += 0.2
    between = clock.now
    limiter.reserve()  # booked after the cut, before the next 429
    clock.now += 0.05
    assert not limiter.on_throttled(1.5, booked=(cut_from, cut_from))  # the same event: no cut
    assert limiter.held(between)  # but its hint holds the booking made before it
    assert not limiter.held(clock.now)  # bookings from now on are after the hold already
    clock.now += 1.5
    assert not limiter.held(between)  # the hold is over


def test_quota_settings_without_a_quota() -> None:
    assert QuotaSettings(None, None, discover=False).build() is None
    limiter = QuotaSettings(None, None).build()
    assert isinstance(limiter, Limiter) and limiter.discover
    assert all(limiter.acquire(10_000) == 0 for _ in range(100))


def test_a_429_while_short_of_work_does_not_pin_the_rate_to_the_work() -> None:
    """Asked for a third of its rate, the limiter never waits: a 429 then says
    nothing of the server's limit, and the rate is only cut a little."""
    clock = FakeClock()
    limiter = Limiter(600, clock=clock, sleep=clock.sleep)
    for _ in range(100):
        clock.now += 0.3
        assert limiter.acquire() == 0
        limiter.on_success()
    clock.now += 0.3
    limiter.acquire()
    limiter.on_throttled(0.5)
    for _ in range(10):
        clock.now += 0.3
        limiter.acquire()
        limiter.on_success()
    assert limiter.fraction >= 0.9


def test_a_ramp_up_before_saturation_is_not_mistaken_for_the_servers_limit() -> None:
    """Shards opening slowly, then the limiter saturated: an edge 429 measures
    only the saturated stretch, which ran at the full rate."""
    clock = FakeClock()
    limiter = Limiter(600, clock=clock, sleep=clock.sleep)
    for _ in range(20):  # 6 s of a trickle: never held by pacing
        clock.now += 0.3
        limiter.acquire()
        limiter.on_success()
    ask = clock.now
    booked = [(ask, ask + limiter.reserve()) for _ in range(40)]  # now saturated: 4 s queued
    for asked, at in booked[:-1]:
        clock.now = at + 0.2
        limiter.on_success(booked=(asked, at))
    limiter.on_throttled(0.05, booked=booked[-1])
    clock.now += 2.0
    limiter.reserve()  # measures
    assert limiter.fraction >= 0.9


def test_a_worker_accepted_at_its_own_pace_is_not_ratcheted_down() -> None:
    """Measured after a cut, a worker alone is accepted at about its own pace
    (less the margin): that is no reason to go lower. Others taking part of
    the quota show as clearly less, and the worker settles there."""
    aimd = AimdController(AimdSettings(), now=0.0)
    assert aimd.on_throttled(100.0, asked_at=99.0) is Cut.EDGE
    cut_to = aimd.fraction
    assert not aimd.on_measured(cut_to * 0.97, 100.5)
    assert aimd.fraction == cut_to
    assert aimd.on_measured(0.5, 100.6)
    assert aimd.fraction == pytest.approx(0.5)


def test_settling_on_a_measurement_is_a_cut_that_earlier_bookings_report() -> None:
    """A 429 of a request booked before the worker settled lower reports the
    window that settling answered, not new congestion: the rate is not halved."""
    aimd = AimdController(AimdSettings(), now=0.0)
    assert aimd.on_throttled(100.0, asked_at=99.0) is Cut.EDGE
    assert aimd.on_measured(0.5, 102.0)
    assert aimd.on_throttled(102.1, asked_at=101.9) is Cut.NONE
    assert aimd.fraction == pytest.approx(0.5)
    assert aimd.on_throttled(102.2, asked_at=102.1) is Cut.CONGESTION  # booked after it: a new event
    assert aimd.fraction == pytest.approx(0.25)


def test_an_edge_429_while_probing_brings_the_target_below_the_refused_rate() -> None:
    """Probing raises the target ahead of the rate (which follows at
    1 / recovery_s a second); a 429 on the way up says the rate reached was
    already too much, so the target comes down under it, not under itself."""
    aimd = AimdController(AimdSettings(recovery_s=200.0), now=0.0, max_fraction=2.0, probe_scale=2.0)
    for t in range(1, 60):
        aimd.tick(float(t))
    assert aimd.target > aimd.fraction + 0.05  # the target ran ahead
    refused_at = aimd.fraction
    assert aimd.on_throttled(60.5, asked_at=60.0) is Cut.EDGE
    assert aimd.target < refused_at
    assert aimd.fraction < aimd.target


# -- requests that leave late -----------------------------------------------------------


def _lateness_matters(limiter: Limiter, clock: FakeClock) -> None:
    """A 429 while paced (the short window's edge: from now on lateness
    matters), then 100 s, so the rate has recovered."""
    limiter.acquire()
    limiter.on_throttled(0.1)
    clock.now += 100.0


def _depart_late(
    limiter: Limiter, clock: FakeClock, lateness: Callable[[], float], count: int = 600
) -> tuple[list[float], list[float]]:
    """``count`` requests, each leaving ``lateness()`` after its slot and
    reported with ``on_left``: (their slots, when they left)."""
    slots, departures = [], []
    for _ in range(count):
        limiter.acquire()
        late = lateness()
        slots.append(clock.now)
        departures.append(clock.now + late)
        limiter.on_left(clock.now + late)
    return slots, departures


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_late_departures_never_squeeze_a_short_window(seed: int) -> None:
    """A request written 30-120 ms after its slot (its thread waited for the
    GIL) and its on-time successors would put 11 requests in a 1-s window of
    a 600-RPM quota. Reported with ``on_left``, lateness pushes the later
    slots back: every window holds its 10, and the delay is paid once."""
    rng = random.Random(seed)
    clock = FakeClock()
    limiter = Limiter(600, clock=clock, sleep=clock.sleep)
    _lateness_matters(limiter, clock)
    _, departures = _depart_late(
        limiter, clock, lambda: rng.uniform(0.03, 0.12) if rng.random() < 0.05 else rng.uniform(0.0, 0.003))
    assert max_in_window(departures, window=1.0) <= 10
    assert max_in_window(departures, window=60.0) <= 600
    # the pushes cost about the lateness (5 % of 600 requests × 75 ms ≈ 2.3 s), no more
    assert departures[-1] - departures[0] <= 599 / (600 * 0.98 / 60) + 0.05 * 600 * 0.12 + 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lateness_within_the_margins_slack_never_squeezes_a_one_second_window(seed: int) -> None:
    """The slack is what the 2 % margin absorbs in a one-second window (20 ms):
    requests each up to that late are not pushed, and still no 1-s window of
    a 600-RPM quota holds more than its 10."""
    rng = random.Random(seed)
    clock = FakeClock()
    limiter = Limiter(600, clock=clock, sleep=clock.sleep)
    assert limiter.late_slack_s == pytest.approx(0.02)
    _lateness_matters(limiter, clock)
    slots, departures = _depart_late(
        limiter, clock, lambda: rng.choice([0.0, limiter.late_slack_s]) * rng.uniform(0.9, 1.0))
    assert max_in_window(departures, window=1.0) <= 10
    assert max_in_window(departures, window=6.0) <= 60
    interval = 60 / (600 * 0.98 - 1)
    assert slots[-1] - slots[0] == pytest.approx(599 * interval)  # nothing was pushed


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_late_requests_cost_little_time_and_few_429s_at_a_one_second_window(seed: int) -> None:
    """Requests leaving 10 ms late on average (exponentially, some 50 ms and
    more), reported with ``on_left``, at a 1-s window: pushes beyond the 20 ms
    slack keep 429s to a few and the rate near the quota. Not pushing gave
    0.90-0.93 with 9-11 429s; pushing from 5 ms on, 0.92 with one."""
    clock = FakeClock()
    limiter = Limiter(600, clock=clock, sleep=clock.sleep)
    out = simulate([limiter], clock, server_limit=10, window_s=1.0, seconds=120, late=0.01, seed=seed)
    assert out.rate(1000.0, 1120.0) >= 0.95 * 10
    assert out.rejected <= 6


def test_a_late_request_pushes_back_the_requests_already_booked() -> None:
    """B booked its slot while A was still being written; A then leaves 50 ms
    late: B, asleep until its slot, waits the excess more when it wakes."""
    clock = FakeClock()
    asleep, wake = threading.Event(), threading.Event()

    def sleep(seconds: float) -> None:
        if threading.current_thread().name == "B" and not asleep.is_set():
            asleep.set()  # B sleeps until the test wakes it at its slot
            assert wake.wait(5)
            return
        clock.sleep(seconds)

    limiter = Limiter(600, clock=clock, sleep=sleep)
    _lateness_matters(limiter, clock)
    interval = 60 / (600 * 0.98 - 1)
    limiter.acquire()
    assert limiter.fraction == 1.0  # recovered
    a_slot = clock.now
    left_b: list[float] = []

    def b() -> None:
        limiter.acquire()
        left_b.append(clock.now)
        limiter.on_left(clock.now)  # on time (as pushed): no further push

    thread = threading.Thread(target=b, name="B")
    thread.start()
    assert asleep.wait(5)
    limiter.on_left(a_slot + 0.05)  # A leaves 50 ms after its slot
    clock.now = a_slot + interval  # B's slot
    wake.set()
    thread.join(5)
    assert left_b[0] == pytest.approx(a_slot + 0.05 - limiter.late_slack_s + interval)
    limiter.acquire()  # C, booked after the push
    assert clock.now == pytest.approx(left_b[0] + interval)


def test_lateness_moves_nothing_within_the_slack_or_before_any_429() -> None:
    """Before a 429 nothing says the server's window is short: over 60 s the
    margin absorbs any lateness, and pushing would only lose time."""
    clock = FakeClock()
    limiter = Limiter(600, clock=clock, sleep=clock.sleep)
    interval = 60 / (600 * 0.98 - 1)
    limiter.acquire()
    first = clock.now
    limiter.on_left(first + 0.1)  # late, but no 429 yet
    limiter.acquire()
    assert clock.now == pytest.approx(first + interval)
    limiter.on_throttled(0.1)
    clock.now += 100.0
    limiter.acquire()
    first = clock.now
    limiter.on_left(first + limiter.late_slack_s * 0.9)
    limiter.acquire()
    assert clock.now == pytest.approx(first + interval)
    limiter.on_left(clock.now + 0.1)  # after the 429 it does push
    late = clock.now
    limiter.acquire()
    assert clock.now == pytest.approx(late + 0.1 - limiter.late_slack_s + interval)


def _eleven_unpaced_the_last_refused(limiter: Limiter, clock: FakeClock) -> None:
    """Eleven requests booked 0.01 s apart (unpaced, they leave at once); the
    eleventh is refused 0.1 s later with "retry in 0.8 s", before any reply."""
    booked = []
    for _ in range(11):
        booked.append((clock.now, clock.now + limiter.reserve()))
        clock.now += 0.01
    clock.now += 0.1
    limiter.on_throttled(0.8, booked=booked[-1])


def _paced_and_accepted(limiter: Limiter, clock: FakeClock, requests: int) -> None:
    """``requests`` sent one after another as pacing lets them, each accepted."""
    for _ in range(requests):
        sent = clock.now + limiter.reserve()
        limiter.on_success(booked=(clock.now, sent))
        clock.now = sent


def test_discovery_paces_from_the_first_429_before_any_reply_is_in() -> None:
    """Unpaced, 10 requests leave within 0.1 s; the 11th is refused with
    "retry in 0.8 s" before any reply is in. The server took those 10 and
    takes more 0.8 s later: about 10 per 0.9 s. Requests booked during the
    hold leave at that pace, not in one burst when it ends."""
    clock = FakeClock()
    limiter = Limiter(None, discover=True, clock=clock, sleep=clock.sleep)
    _eleven_unpaced_the_last_refused(limiter, clock)
    assert limiter.current_rpm == pytest.approx(10 / (0.1 + 0.8) * 60, rel=0.01)
    waits = [limiter.reserve() for _ in range(5)]  # booked during the hold: spaced
    assert waits[0] == pytest.approx(0.8)
    assert all(b - a >= 0.09 for a, b in itertools.pairwise(waits))


def test_a_preflight_that_opened_the_window_is_measured_and_waited_for() -> None:
    """The driver's preflight left 0.5 s before the first of ten unpaced
    requests; the eleventh is refused with "retry in 0.8 s". A hint longer
    than the gap means the preflight is still in the window, so it opened
    it: the server took 11 requests in 0.1 + 0.8 + 0.5 s, not 10 in 0.9 s
    (which overshoots by the gap, as two jobs at a 6-s window did: 1.13 of
    the quota between them). The hint is when the preflight's slot frees;
    ours free only the gap later, so the hold lasts that much longer."""
    clock = FakeClock()
    limiter = Limiter(None, discover=True, clock=clock, sleep=clock.sleep)
    limiter.sent_before(0.5)
    _eleven_unpaced_the_last_refused(limiter, clock)
    assert limiter.current_rpm == pytest.approx(11 / (0.1 + 0.8 + 0.5) * 60, rel=0.01)
    assert limiter.reserve() == pytest.approx(0.8 + 0.5)

    # A hint shorter than the gap: the preflight may have left the window
    # before the 429, and the measurement starts with our first request.
    clock = FakeClock()
    limiter = Limiter(None, discover=True, clock=clock, sleep=clock.sleep)
    limiter.sent_before(1.5)
    _eleven_unpaced_the_last_refused(limiter, clock)
    assert limiter.current_rpm == pytest.approx(10 / (0.1 + 0.8) * 60, rel=0.01)
    assert limiter.reserve() == pytest.approx(0.8)


def test_a_pace_that_counted_the_preflight_probes_up_to_the_pace_without_it() -> None:
    """A window that resets at its boundary may have counted the preflight
    in the window before: the estimate that counts it (11 per 1.4 s) is then
    low, and nothing corrects it, as a discovered pace never probed above
    what was measured (a fixed window with exact hints held 0.79 of the limit
    on one seed of the simulation, now 0.83). With no 429, the pace grows
    into what the server accepted counting only ours (10 per 0.9 s), and no
    further."""
    clock = FakeClock()
    limiter = Limiter(None, discover=True, clock=clock, sleep=clock.sleep)
    limiter.sent_before(0.5)
    _eleven_unpaced_the_last_refused(limiter, clock)
    low, high = 11 / (0.1 + 0.8 + 0.5) * 60, 10 / (0.1 + 0.8) * 60
    assert limiter.current_rpm == pytest.approx(low, rel=0.01)
    start = clock.now
    while clock.now < start + 90.0:
        _paced_and_accepted(limiter, clock, 10)
    assert limiter.current_rpm is not None and 1.2 * low < limiter.current_rpm <= high * 1.001


def test_a_told_worker_measures_from_the_preflight_that_opened_the_window() -> None:
    """Told 600 a minute, paced at 10 a second after the preflight 0.9 s
    before; the server took 31 requests (the preflight and 30 of ours) and
    refuses the next with a hint to 6 s after the preflight. It accepted 31
    per 6 s: the worker settles at 0.517 of its rate, where from its own
    first request (29 held ones over 3.0 - 0.1 + 2.1 s) it settled at 0.58."""
    clock = FakeClock()
    limiter = Limiter(600, clock=clock, sleep=clock.sleep)
    limiter.sent_before(0.9)
    start = clock.now
    _paced_and_accepted(limiter, clock, 30)
    clock.now = start + 3.0
    hint = start - 0.9 + 6.0 - clock.now
    limiter.on_throttled(hint, booked=(clock.now, clock.now))
    assert limiter.reserve() == pytest.approx(hint + 0.9)  # until our first request leaves
    clock.now = start + 6.5  # the hold is over, the replies are in
    limiter.reserve()
    assert limiter.fraction == pytest.approx(31 / 6.0 / 10, rel=0.01)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_unaware_jobs_after_their_preflights_at_a_6_s_window(seed: int) -> None:
    """The benchmark's two-jobs shape: each job's driver sent one request
    0.9 s before its worker started, 100 requests each. Unaware of the
    preflight, each measured the accepted rate over a window 0.9 s short:
    1.13 of the quota between them, then 429s until the overshoot was cut
    away, and more right after the first hold, which ended when the
    preflight's slot freed and not ours: 3.4-5.2 % 429s over seeds 1-10
    (now 1.5-2.0 %)."""
    clock = FakeClock()
    workers = [Limiter(600, clock=clock, sleep=clock.sleep) for _ in range(2)]
    out = simulate(workers, clock, server_limit=60, window_s=6.0, seconds=400, work=[100, 100],
                   seed=seed, ramp=0.3, starts=[0.0, 0.05], preflight=0.9)
    assert sorted(out.by_worker.values()) == [100, 100]
    assert 200 / 10 / (max(out.finished.values()) - 1000.0) >= 0.94
    assert out.throttled_fraction() < 0.025


def test_a_hold_longer_than_an_idle_gap_is_still_measured() -> None:
    """Two jobs at a 60-s window: the first 429 comes after 30 s at the
    whole quota each, with "retry in 30 s". The worker took 300 requests in
    that minute (half the quota). A request asked for during the hold is
    waiting, not idle: the busy period goes on, and when the hold is over
    the worker settles at half. When waiting counted as idle, the ask that
    came before the end of the hold started a new busy period, there was
    nothing to measure, and the worker kept 0.94 until its next 429s."""
    clock = FakeClock()
    limiter = Limiter(600, clock=clock, sleep=clock.sleep)
    start = clock.now
    _paced_and_accepted(limiter, clock, 300)
    limiter.on_throttled(start + 60.0 - clock.now, booked=(clock.now, clock.now))
    assert limiter.fraction > 0.9  # one 429: an edge cut
    clock.now = start + 59.5  # a thread asks again, before the hold is over
    limiter.reserve()
    clock.now = start + 60.5
    limiter.reserve()
    assert limiter.fraction == pytest.approx(0.5, rel=0.03)


# -- tokens-per-minute pacing and every 429 shape ----------------------------------------

#: Vertex's published quota for gemini-embedding-001, per region: 5 M input tokens a minute.
VERTEX_001_TPM = 5_000_000
#: A full request of 100 English texts of ~10 tokens each, as the server counts them.
COUNTED_PER_REQUEST = 1_000


def run_token_bound(
    kind: str, factor: float, told: bool, seed: int, *, rpm: float | None = None, server_rpm: int | None = None,
    reports: bool = False, window_s: float = 6.0, tpm: float = 600_000, seconds: float = 180.0,
) -> tuple[float, float, Limiter]:
    """One worker against a server metering ``tpm`` tokens a minute over
    ``window_s``; each request counts COUNTED_PER_REQUEST at the server and
    ``1 / factor`` of that in our estimate. Returns the server-counted token
    rate after the first minute as a fraction of the limit, the 429 share,
    and the limiter."""
    clock = FakeClock()
    limiter = Limiter(rpm, tpm if told else None, discover=not told, clock=clock, sleep=clock.sleep)
    out = simulate([limiter], clock, server_limit=server_rpm, server_tpm=tpm * window_s / 60, window_s=window_s,
                   seconds=seconds, window=kind, seed=seed, tokens=COUNTED_PER_REQUEST / factor,
                   count_factor=factor, reports_counts=reports)
    return out.token_rate(1060.0, 1000.0 + seconds) / (tpm / 60), out.throttled_fraction(), limiter


@pytest.mark.parametrize("kind", ["sliding", "fixed", "bucket"])
@pytest.mark.parametrize("factor", [0.75, 1.0, 3.0])
def test_a_told_tpm_holds_the_token_limit_as_the_server_counts_it(kind: str, factor: float) -> None:
    """An estimate a third too high (English against Google's
    tokenizer) filled 0.74 of the limit; one three times too low (CJK) met
    16 % 429s. The factor is probed down while the server answers and
    backed off at its 429s; under-counting is a rate the server refuses.
    Measured over seeds 0-2: 0.96-1.0 of the limit, 0.3-1.9 % 429s.

    A bucket server accepts at most its capacity (a window's worth) plus its
    refill over the 120 s measured: up to 1 + 6/120 of the limit."""
    ceiling = 1.0 + 6.0 / 120.0 if kind == "bucket" else 1.0
    for seed in range(3):
        fill, throttled, _ = run_token_bound(kind, factor, True, seed)
        assert 0.9 <= fill <= ceiling
        assert throttled < 0.02


def test_a_429_from_probing_the_token_scale_too_far_is_an_edge_not_congestion() -> None:
    """Our estimate over-counts by 8 % (English against the server's
    tokenizer) and the limit allows 14 requests a second: probing the factor
    down overshoots, and its first two 429s came within seconds of each
    other. Read as congestion they halved the rate (0.86 of the limit over
    150 s); they are the scale's edge: the factor backs off and the rate is
    trimmed, never halved."""
    for seed in range(3):
        clock = FakeClock()
        limiter = Limiter(None, 2_000_000, clock=clock, sleep=clock.sleep)
        out = simulate([limiter], clock, server_limit=None, server_tpm=200_000, window_s=6.0, seconds=150,
                       seed=seed, tokens=2_380 / 0.922, count_factor=0.922)
        assert out.token_rate(1010.0, 1150.0) / (2_000_000 / 60) >= 0.93
        assert out.throttled_fraction() < 0.01


@pytest.mark.parametrize("kind", ["sliding", "fixed", "bucket"])
def test_a_tpm_not_told_is_discovered_from_the_429s(kind: str) -> None:
    for seed in range(3):
        fill, throttled, _ = run_token_bound(kind, 3.0, False, seed)
        assert 0.9 <= fill <= 1.0
        assert throttled < 0.05


def test_429s_at_the_windows_edge_do_not_ratchet_the_token_factor_up() -> None:
    """Our estimate is exact and each request is a twenty-second of a 6-s
    window's tokens: a window counts requests whole, so pacing at the told
    rate meets an occasional 429 at its edge. Each one backed the factor off
    5 %, and it ratcheted up to 1.12 (0.947 of the limit). Backed off 1 %
    above where its probe began, it still climbed 1 % a cycle (1.03 after
    five minutes, 0.949 of the limit); at the full rate a 429 now backs it
    off to where the probe began, or 1 % above the factor that met it."""
    for seed in range(3):
        clock = FakeClock()
        limiter = Limiter(None, 1_000_000, clock=clock, sleep=clock.sleep)
        out = simulate([limiter], clock, server_limit=None, server_tpm=100_000, window_s=6.0, seconds=300,
                       seed=seed, tokens=4_460.0)
        assert limiter.stats().token_factor <= 1.015
        assert out.token_rate(1010.0, 1300.0) / (1_000_000 / 60) >= 0.955
        assert out.throttled_fraction() < 0.02


def test_a_told_tpm_beside_a_told_rpm_holds_both() -> None:
    """Token-bound under both limits (the RPM alone would allow twice the
    rate): the tokens are the limit that binds, the requests stay under theirs."""
    for seed in range(3):
        clock = FakeClock()
        limiter = Limiter(1200, 600_000, clock=clock, sleep=clock.sleep)
        out = simulate([limiter], clock, server_limit=120, server_tpm=60_000, window_s=6.0, seconds=180,
                       seed=seed, tokens=COUNTED_PER_REQUEST / 0.75, count_factor=0.75)
        assert 0.9 <= out.token_rate(1060.0, 1180.0) / 10_000 <= 1.0
        assert out.rate(1060.0, 1180.0) <= 20.0
        assert out.throttled_fraction() < 0.02


def test_reported_counts_set_the_factor_and_nothing_else_moves_it() -> None:
    clock = FakeClock()
    limiter = Limiter(None, VERTEX_001_TPM, clock=clock, sleep=clock.sleep)
    for _ in range(50):
        limiter.calibrate(4_000, 1_000)  # the server counted a quarter of our estimate
    assert limiter.stats().token_factor == pytest.approx(0.25)
    for seed in range(2):
        fill, throttled, lim = run_token_bound("sliding", 3.0, True, seed, reports=True)
        assert lim.stats().token_factor == pytest.approx(3.0)
        assert 0.95 <= fill <= 1.0 and throttled < 0.02


def test_the_factor_is_not_probed_without_answers_or_while_not_held_by_tokens() -> None:
    clock = FakeClock()
    scale = TokenScale(ScaleSettings(), clock())
    for _ in range(100):  # held by tokens, quiet, but nobody answered
        clock.now += 1.0
        scale.tick(clock(), token_bound=True)
    assert scale.factor == 1.0
    for _ in range(100):  # answered, but not held back by the token bucket
        clock.now += 1.0
        scale.on_success(clock())
        scale.tick(clock(), token_bound=False)
    assert scale.factor == 1.0
    for _ in range(30):
        clock.now += 1.0
        scale.on_success(clock())
        scale.tick(clock(), token_bound=True)
    assert 0.5 < scale.factor < 1.0
    before = scale.factor
    assert scale.on_throttled(clock(), token_bound=True)
    assert scale.factor == pytest.approx(before * 1.05)


@pytest.mark.parametrize("kind", ["sliding", "fixed", "bucket"])
@pytest.mark.parametrize("hint", ["exact", "seconds", "none"])
def test_requests_bound_every_window_kind_and_hint(kind: str, hint: str) -> None:
    """A window that resets at its boundary, a 429 without a hint
    and no --quota-rpm met 6.9 % 429s. Told: >= 0.95 of the limit, < 2 %
    429s; not told: >= 0.9, < 5 % (measured over seeds 0-2: told 0.98, 0 %;
    not told 0.91-0.99, 0.1-4 %)."""
    for seed in range(3):
        for told in (True, False):
            clock = FakeClock()
            limiter = Limiter(600 if told else None, discover=not told, clock=clock, sleep=clock.sleep)
            out = simulate([limiter], clock, server_limit=60, window_s=6.0, seconds=180, window=kind,
                           hint=hint, seed=seed)
            fill = out.rate(1060.0, 1180.0) / 10.0
            assert (0.95 if told else 0.9) <= fill <= 1.0
            assert out.throttled_fraction() < (0.02 if told else 0.05)
