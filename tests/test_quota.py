"""Quota: buckets never exceed their rate, AIMD cuts and recovers, shares add
up, and concurrent callers never double-book. All on simulated time."""

from __future__ import annotations

import heapq
import math
import random
import threading

import pytest

from beamvec.quota import AdaptiveLimiter, TokenBucket, reset_shared_limiters, shared_limiter


class FakeClock:
    """Simulated time: moves only when a test (or a fake sleep) moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


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


def test_limiter_burst_is_small() -> None:
    """A fresh worker may not fire a minute's quota at once: about one second's worth."""
    clock = FakeClock()
    limiter = AdaptiveLimiter(600, clock=clock, sleep=clock.sleep)
    waits = [limiter.reserve() for _ in range(30)]
    assert sum(1 for w in waits if w == 0) == 10
    assert max_in_window([1000.0 + w for w in waits], window=1.0) <= 20


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
    workers = [AdaptiveLimiter(rpm, share=0.5, clock=clock, sleep=clock.sleep) for _ in range(2)]
    sends = simulate_workers(workers, clock, seconds=600, slots=8, latency=0.2, seed=1)
    assert max_in_window(sends) <= rpm
    assert max_in_window(sends) >= 0.95 * rpm  # and they use it


def test_many_workers_with_concurrency_stay_under_rpm() -> None:
    clock = FakeClock()
    rpm, n = 1000.0, 7
    workers = [AdaptiveLimiter(rpm, share=1 / n, clock=clock, sleep=clock.sleep) for _ in range(n)]
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
        AdaptiveLimiter(rpm, tpm, share=1 / n, clock=clock, sleep=clock.sleep) for _ in range(n)
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


def test_throttling_cuts_once_per_window_down_to_a_floor() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(600, clock=clock, sleep=clock.sleep)
    assert limiter.on_throttled()
    assert limiter.fraction == 0.5
    assert limiter.current_rpm == 300
    # a burst of 429s from requests already in flight is one congestion event
    assert not any(limiter.on_throttled() for _ in range(20))
    assert limiter.fraction == 0.5
    clock.now += 1.0
    assert limiter.on_throttled()
    assert limiter.fraction == 0.25
    for _ in range(20):
        clock.now += 1.0
        limiter.on_throttled()
    assert limiter.fraction == pytest.approx(0.05)
    stats = limiter.stats()
    assert stats.throttled == 42
    assert stats.cuts == 5  # 0.5, 0.25, 0.125, 0.0625, 0.05; then the floor holds
    assert stats.rpm == pytest.approx(30)


def test_recovery_is_additive_and_capped() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(600, clock=clock, sleep=clock.sleep, recovery_s=60.0)
    limiter.on_throttled()
    fractions = []
    for _ in range(40):
        clock.now += 1.0
        limiter.on_success()
        fractions.append(limiter.fraction)
    assert fractions[9] == pytest.approx(0.5 + 10 / 60)
    assert fractions[19] == pytest.approx(0.5 + 20 / 60)
    assert fractions[29] == pytest.approx(1.0)  # back to full in about 30 s
    assert max(fractions) == 1.0
    # from the floor, back to full within about a minute
    for _ in range(10):
        clock.now += 1.0
        limiter.on_throttled()
    assert limiter.fraction == pytest.approx(0.05)
    for _ in range(57):
        clock.now += 1.0
        limiter.on_success()
    assert limiter.fraction == pytest.approx(1.0)


def test_a_cut_slows_the_pacing() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(600, clock=clock, sleep=clock.sleep)
    before, _ = run_saturated(limiter, clock, 200)
    limiter.on_throttled()
    limiter.on_throttled()  # same window: no second cut
    after, _ = run_saturated(limiter, clock, 200)
    gap_before = (before[-1] - before[100]) / 99
    gap_after = (after[-1] - after[100]) / 99
    assert gap_after == pytest.approx(2 * gap_before, rel=0.01)


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


def test_shared_limiter_is_one_per_key_per_process() -> None:
    reset_shared_limiters()
    built: list[AdaptiveLimiter] = []

    def factory() -> AdaptiveLimiter:
        limiter = AdaptiveLimiter(60)
        built.append(limiter)
        return limiter

    got: list[AdaptiveLimiter] = []
    pool = [
        threading.Thread(target=lambda: got.append(shared_limiter("gemini:m", factory)))
        for _ in range(8)
    ]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert len(built) == 1
    assert all(x is built[0] for x in got)
    assert shared_limiter("vertex:m", factory) is not built[0]
    reset_shared_limiters()
    assert shared_limiter("gemini:m", factory) is not built[0]
    reset_shared_limiters()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rpm": 0},
        {"rpm": -1},
        {"rpm": 60, "tpm": 0},
        {"rpm": 60, "share": 0},
        {"rpm": float("nan")},
    ],
)
def test_limiter_rejects_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AdaptiveLimiter(**kwargs)


def test_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
    with pytest.raises(ValueError):
        TokenBucket(1, 0)
