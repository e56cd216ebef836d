"""Retry decisions: what is retried, how long we wait, when we give up, and
how a bad batch is bisected. Fake clock and sleep: no test waits."""

from __future__ import annotations

import pickle
import random
import sys
from email.utils import formatdate

import pytest
from tenacity import RetryCallState, Retrying

from beamvec.backends.google_errors import parse_retry_after, parse_retry_info
from beamvec.embed.bisection import embed_with_bisection
from beamvec.errors import BackendError, ErrorKind
from beamvec.retry import (
    Deadline,
    RetriesExhausted,
    RetryPolicy,
    error_status,
    is_bad_input,
    is_retryable,
    wait_full_jitter_or_hint,
)

TRANSIENT, BAD_INPUT, SYSTEMIC = ErrorKind.TRANSIENT, ErrorKind.BAD_INPUT, ErrorKind.SYSTEMIC


class FakeTime:
    """A clock that only moves when someone sleeps (or a test says so)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def err(
    status: int | None, kind: ErrorKind = TRANSIENT, retry_after: float | None = None
) -> BackendError:
    """A backend's error; the kind is what the backend decided (google_errors
    decides 400 -> BAD_INPUT, 401/403/404 -> SYSTEMIC, 408/429/5xx -> TRANSIENT)."""
    return BackendError(f"status {status}", kind=kind, status=status, retry_after=retry_after)


def state_after(exc: BaseException, attempt: int) -> RetryCallState:
    """A tenacity call state whose attempt ``attempt`` failed with ``exc``."""
    state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


# -- classification -------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (err(408), True),
        (err(429), True),
        (err(500), True),
        (err(502), True),
        (err(503), True),
        (err(504), True),
        # never retried: what the backend calls bad input or systemic
        (err(400, BAD_INPUT), False),
        (err(401, SYSTEMIC), False),
        (err(403, SYSTEMIC), False),
        (err(404, SYSTEMIC), False),
        # the kind decides, never the status
        (err(None, TRANSIENT), True),
        (err(None, SYSTEMIC), False),
        (err(409, TRANSIENT), True),
        (err(501, SYSTEMIC), False),
        (err(503, BAD_INPUT), False),
        (err(400, TRANSIENT), True),
        (TimeoutError("read timed out"), True),
        (ConnectionError("reset"), True),
        (ConnectionResetError("reset by peer"), True),
        (ConnectionRefusedError("refused"), True),
        (BrokenPipeError("pipe"), True),
        (ValueError("bad"), False),
        (KeyError("k"), False),
        (RuntimeError("boom"), False),
        (OSError("disk"), False),
    ],
    ids=repr,
)
def test_retryable_classification(exc: BaseException, expected: bool) -> None:
    assert is_retryable(exc) is expected


def test_httpx_errors_are_classified() -> None:
    """httpx errors are the backend's to classify (google_errors.from_exception);
    what it makes of them is retried, or not, by kind alone."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("google.genai")
    from beamvec.backends.google_errors import from_exception

    request = httpx.Request("POST", "https://example.invalid/")

    def mapped(exc: BaseException) -> BackendError:
        result = from_exception(exc, "gemini", 5.0, lambda m: m)
        assert result is not None
        return result

    assert is_retryable(mapped(httpx.ReadTimeout("slow", request=request)))
    assert is_retryable(mapped(httpx.ConnectError("refused", request=request)))
    assert is_retryable(mapped(httpx.RemoteProtocolError("closed", request=request)))
    assert not is_retryable(mapped(httpx.UnsupportedProtocol("ftp?", request=request)))
    assert "timed out" in str(mapped(httpx.ReadTimeout("slow", request=request)))
    assert "connection failed" in str(mapped(httpx.ConnectError("refused", request=request)))
    # never retried by retry.py on their own: only the backend knows what they mean
    assert not is_retryable(httpx.ReadTimeout("slow", request=request))


def test_error_status() -> None:
    assert error_status(err(429)) == 429
    assert error_status(TimeoutError()) == "timeout"
    assert error_status(ConnectionResetError()) == "connection"
    assert error_status(err(None, TRANSIENT)) is None
    assert error_status(ValueError()) is None


# -- server hints -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-3", 0.0),
        ("", None),
        ("   ", None),
        (None, None),
        ("soon", None),
        ("inf", None),
        ("nan", None),
    ],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after(
        "Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 5
    ) == pytest.approx(5)


GOOGLE_429 = {
    "error": {
        "code": 429,
        "message": "Resource has been exhausted (e.g. check quota).",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"},
        ],
    }
}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (GOOGLE_429, 1.5),
        (GOOGLE_429["error"], 1.5),
        ([GOOGLE_429], 1.5),
        (
            {
                "error": {
                    "details": [
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}
                    ]
                }
            },
            17.0,
        ),
        (
            {
                "error": {
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": {"seconds": 2, "nanos": 500000000},
                        }
                    ]
                }
            },
            2.5,
        ),
        ({"error": {"code": 429, "details": []}}, None),
        ({"error": {"code": 500, "message": "internal"}}, None),
        (
            {
                "error": {
                    "details": [
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "later"}
                    ]
                }
            },
            None,
        ),
        ({"error": "quota"}, None),
        ({"error": {"details": ["junk", 3]}}, None),
        ([], None),
        (None, None),
        ("not json", None),
    ],
)
def test_parse_retry_info(body: object, expected: float | None) -> None:
    assert parse_retry_info(body) == expected


# -- wait strategy --------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 12])
def test_full_jitter_stays_in_bounds_and_covers_the_range(attempt: int) -> None:
    base, cap = 1.0, 60.0
    wait = wait_full_jitter_or_hint(base, cap, rng=random.Random(attempt))
    bound = min(cap, base * 2 ** (attempt - 1))
    samples = [wait(state_after(err(503), attempt)) for _ in range(2000)]
    assert all(0.0 <= s <= bound for s in samples)
    # full jitter: the whole range is used, not just its top
    assert min(samples) < 0.05 * bound
    assert max(samples) > 0.95 * bound
    assert sum(samples) / len(samples) == pytest.approx(bound / 2, rel=0.1)


def test_wait_honours_the_server_hint_with_a_little_jitter() -> None:
    wait = wait_full_jitter_or_hint(1.0, 60.0, rng=random.Random(1))
    for hint in (0.0, 1.5, 7.0, 45.0, 120.0):  # a hint may exceed max_delay
        waits = [wait(state_after(err(429, retry_after=hint), 1)) for _ in range(500)]
        assert all(hint <= w <= hint + 1.0 for w in waits)
        assert len(set(waits)) > 1  # jittered, so concurrent retries spread out


def test_wait_never_runs_past_the_deadline() -> None:
    remaining = 2.0
    wait = wait_full_jitter_or_hint(1.0, 60.0, remaining=lambda: remaining, rng=random.Random(2))
    assert wait(state_after(err(429, retry_after=30.0), 1)) == 2.0
    assert all(wait(state_after(err(503), 10)) <= 2.0 for _ in range(200))


def test_deadline_uses_the_injected_clock() -> None:
    clock = FakeTime()
    deadline = Deadline(10.0, clock)
    clock.now = 4.0
    assert deadline.elapsed() == 4.0
    assert deadline.remaining() == 6.0
    clock.now = 11.0
    assert deadline.remaining() == 0.0


# -- the policy --------------------------------------------------------------------------


class Flaky:
    """Raises the given errors in turn, then returns ``result``."""

    def __init__(
        self,
        errors: list[BaseException],
        result: object = "ok",
        clock: FakeTime | None = None,
        cost: float = 0.0,
    ) -> None:
        self.errors = list(errors)
        self.result = result
        self.calls = 0
        self.clock = clock
        self.cost = cost

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        if self.clock is not None:
            self.clock.now += self.cost
        if self.errors:
            raise self.errors.pop(0)
        return (self.result, args, kwargs)


def test_retries_then_succeeds_and_reports_each_retry() -> None:
    clock = FakeTime()
    seen: list[tuple[object, int, float]] = []
    fn = Flaky([err(503), TimeoutError("t"), ConnectionResetError("c")])
    out = RetryPolicy().call(
        fn,
        "a",
        k=1,
        sleep=clock.sleep,
        clock=clock,
        on_retry=lambda exc, attempt, wait: seen.append((error_status(exc), attempt, wait)),
    )
    assert out == ("ok", ("a",), {"k": 1})
    assert fn.calls == 4
    assert [(s, a) for s, a, _ in seen] == [(503, 1), ("timeout", 2), ("connection", 3)]
    assert [w for _, _, w in seen] == clock.sleeps


def test_exhaustion_raises_retries_exhausted_with_attempts_and_status() -> None:
    clock = FakeTime()
    retries: list[int] = []
    last = err(503)
    fn = Flaky([err(503) for _ in range(7)] + [last])
    policy = RetryPolicy(max_attempts=8, base_delay=1.0, max_delay=60.0, deadline=10_000)
    with pytest.raises(RetriesExhausted) as info:
        policy.call(fn, sleep=clock.sleep, clock=clock, on_retry=lambda e, a, w: retries.append(a))
    exc = info.value
    assert fn.calls == 8
    assert exc.attempts == 8
    assert exc.status == 503
    assert exc.last_exception is last
    assert exc.__cause__ is last
    assert retries == [1, 2, 3, 4, 5, 6, 7]
    assert len(clock.sleeps) == 7
    assert str(exc) == "gave up after 8 attempt(s), last status 503: status 503"
    # picklable, so it can cross a process boundary in a runner
    again = pickle.loads(pickle.dumps(RetriesExhausted(TimeoutError("slow"), 3, "timeout")))
    assert (again.attempts, again.status, str(again.last_exception)) == (3, "timeout", "slow")


def test_exhaustion_on_timeouts_reports_timeout_status() -> None:
    clock = FakeTime()
    fn = Flaky([TimeoutError("read") for _ in range(3)])
    with pytest.raises(RetriesExhausted) as info:
        RetryPolicy(max_attempts=3).call(fn, sleep=clock.sleep, clock=clock)
    assert (info.value.attempts, info.value.status) == (3, "timeout")


@pytest.mark.parametrize(
    ("status", "kind"), [(400, BAD_INPUT), (401, SYSTEMIC), (403, SYSTEMIC), (404, SYSTEMIC)]
)
def test_non_retryable_raises_the_original_error_after_one_attempt(
    status: int, kind: ErrorKind
) -> None:
    clock = FakeTime()
    original = err(status, kind)
    fn = Flaky([original])
    retries: list[int] = []
    with pytest.raises(BackendError) as info:
        RetryPolicy().call(
            fn, sleep=clock.sleep, clock=clock, on_retry=lambda e, a, w: retries.append(a)
        )
    assert info.value is original
    assert fn.calls == 1
    assert clock.sleeps == []
    assert retries == []


def test_unknown_exceptions_are_not_retried() -> None:
    clock = FakeTime()
    fn = Flaky([ValueError("bug")])
    with pytest.raises(ValueError, match="bug"):
        RetryPolicy().call(fn, sleep=clock.sleep, clock=clock)
    assert fn.calls == 1


def test_server_hint_is_waited_for() -> None:
    clock = FakeTime()
    fn = Flaky([err(429, retry_after=1.5), err(429, retry_after=20.0), err(503)])
    RetryPolicy(base_delay=0.01, max_delay=0.01).call(fn, sleep=clock.sleep, clock=clock)
    first, second, third = clock.sleeps
    assert 1.5 <= first <= 2.5
    assert 20.0 <= second <= 21.0  # above max_delay: the server knows best
    assert third <= 0.01


def test_deadline_stops_retrying() -> None:
    clock = FakeTime()
    fn = Flaky([err(503) for _ in range(1000)], clock=clock, cost=1.0)  # each attempt takes 1 s
    policy = RetryPolicy(max_attempts=1000, base_delay=4.0, max_delay=8.0, deadline=60.0)
    with pytest.raises(RetriesExhausted) as info:
        policy.call(fn, sleep=clock.sleep, clock=clock, rng=random.Random(3))
    assert info.value.attempts < 1000
    assert info.value.attempts == fn.calls
    # waits are capped by the remaining budget: at most one attempt runs past it
    assert 60.0 <= clock.now <= 61.0


def test_a_hint_beyond_the_deadline_stops_at_once() -> None:
    clock = FakeTime()
    fn = Flaky([err(429, retry_after=3600.0)])
    with pytest.raises(RetriesExhausted) as info:
        RetryPolicy(deadline=600.0).call(fn, sleep=clock.sleep, clock=clock)
    assert info.value.attempts == 1
    assert info.value.status == 429
    assert clock.sleeps == []


def test_policy_is_frozen_picklable_and_validated() -> None:
    policy = RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=5.0, deadline=30.0)
    assert pickle.loads(pickle.dumps(policy)) == policy
    with pytest.raises(AttributeError):
        policy.max_attempts = 4  # type: ignore[misc]
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(deadline=0)
    assert RetryPolicy() == RetryPolicy(
        max_attempts=8, base_delay=1.0, max_delay=60.0, deadline=600.0
    )


# -- bisection --------------------------------------------------------------------------


def is_400(exc: BaseException) -> bool:
    return is_bad_input(exc)


def test_bisection_finds_exactly_the_bad_items() -> None:
    items = list(range(100))
    bad = {7, 42, 93}
    calls: list[list[int]] = []

    def call(part: list[int]) -> list[int]:
        calls.append(part)
        if bad & set(part):
            raise err(400, BAD_INPUT)
        return [x * 10 for x in part]

    done, failed = embed_with_bisection(items, call, is_400)
    assert [item for item, _ in failed] == sorted(bad)
    assert all(is_400(exc) for _, exc in failed)
    good = [x for part, _ in done for x in part]
    assert good == [x for x in items if x not in bad]  # all others, in order
    for part, result in done:
        assert result == [x * 10 for x in part]
    assert len(calls) <= 2 * len(bad) * 7 + 1  # about 2k·log2(n) calls, not n


def test_bisection_of_a_good_batch_is_one_call() -> None:
    done, failed = embed_with_bisection([1, 2, 3], lambda part: sum(part), is_400)
    assert done == [([1, 2, 3], 6)]
    assert failed == []
    assert embed_with_bisection([], lambda part: 1 / 0, is_400) == ([], [])


def test_bisection_all_bad() -> None:
    done, failed = embed_with_bisection(
        list("abcde"), lambda part: (_ for _ in ()).throw(err(400, BAD_INPUT)), is_400
    )
    assert done == []
    assert [item for item, _ in failed] == list("abcde")


def test_bisection_lets_other_errors_through() -> None:
    def call(part: list[int]) -> None:
        if len(part) < 4:
            raise err(401, SYSTEMIC)
        raise err(400, BAD_INPUT)

    with pytest.raises(BackendError) as info:
        embed_with_bisection(list(range(8)), call, is_400)
    assert info.value.status == 401


def test_bisection_with_retries_inside_each_call() -> None:
    """The caller's call retries transient faults; bisection only sees 400s."""
    clock = FakeTime()
    policy = RetryPolicy()
    rng = random.Random(5)

    def request(part: list[int]) -> list[int]:
        if rng.random() < 0.3:
            raise err(503)
        if 13 in part:
            raise err(400, BAD_INPUT)
        return part

    done, failed = embed_with_bisection(
        list(range(40)),
        lambda part: policy.call(request, part, sleep=clock.sleep, clock=clock),
        is_400,
    )
    assert [item for item, _ in failed] == [13]
    assert [x for part, _ in done for x in part] == [x for x in range(40) if x != 13]


def test_recursion_depth_is_logarithmic() -> None:
    n = 50_000
    assert n > sys.getrecursionlimit()
    done, failed = embed_with_bisection(
        list(range(n)),
        lambda part: (_ for _ in ()).throw(err(400, BAD_INPUT)) if n - 1 in part else len(part),
        is_400,
    )
    assert [item for item, _ in failed] == [n - 1]
    assert sum(result for _, result in done) == n - 1
