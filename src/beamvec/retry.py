"""What is retried, how long we wait, and when we give up, built on tenacity.

The SDKs we call either do not retry (google-genai, by default) or retry
blindly with fixed waits. Here every request gets tenacity's machinery with
three decisions of our own:

* ``is_retryable``: exactly the errors whose backend said ``TRANSIENT`` (and
  plain ``TimeoutError``/``ConnectionError``). What a status means is the
  backend's business (``ErrorKind``); this module never looks at one, so a
  bad input can be bisected and bad credentials stop the run at once.
* ``wait_full_jitter_or_hint``: exponential backoff with full jitter, unless the
  server said how long to wait (``retry_after``), which is honoured.
* a per-batch deadline, measured on an injectable clock, so a batch never holds
  a worker for longer than the policy allows.

Which texts of a batch were bad is found by ``beamvec.embed.bisection``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from beamvec.errors import BackendError, ErrorKind

R = TypeVar("R")


# -- classification -----------------------------------------------------------


def error_status(exc: BaseException) -> int | str | None:
    """The status to count an error under (stats only, never a decision): the
    HTTP status of a BackendError, ``"timeout"`` or ``"connection"`` for plain
    network faults, else None."""
    if isinstance(exc, BackendError) and exc.status is not None:
        return exc.status
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionError):
        return "connection"
    return None


def is_retryable(exc: BaseException) -> bool:
    """Whether the same request may succeed if sent again later: the backend
    said so (``ErrorKind.TRANSIENT``), or it is a plain timeout or broken
    connection."""
    if isinstance(exc, BackendError):
        return exc.kind is ErrorKind.TRANSIENT
    return isinstance(exc, (TimeoutError, ConnectionError))


def is_bad_input(exc: BaseException) -> bool:
    """Whether the backend refused this request's texts: bisect to find them."""
    return isinstance(exc, BackendError) and exc.kind is ErrorKind.BAD_INPUT


def retry_after_of(exc: BaseException | None) -> float | None:
    """The server's hint carried by an exception (``retry_after``), if usable."""
    hint = getattr(exc, "retry_after", None)
    if isinstance(hint, int | float) and not isinstance(hint, bool) and math.isfinite(hint):
        return max(0.0, float(hint))
    return None


# -- deadline, wait and stop strategies ---------------------------------------


class Deadline:
    """A time budget on an injectable clock (tenacity's own timing is always
    ``time.monotonic``, which tests cannot move)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.start = clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        return max(0.0, self.seconds - self.elapsed())


def _last_exception(retry_state: RetryCallState) -> BaseException | None:
    outcome = retry_state.outcome
    if outcome is None or not outcome.failed:
        return None
    return outcome.exception()


class wait_full_jitter_or_hint(wait_base):  # noqa: N801 - tenacity's naming
    """Full-jitter exponential backoff, or the server's hint when it gave one.

    Full jitter (``uniform(0, min(cap, base * 2**n))``) spreads concurrent
    retries so they do not return in lock step. When the last error carries
    ``retry_after`` the server knows better than any guess: wait that long plus
    a little jitter (so many requests told "1.5 s" do not all return at once).
    Either way the wait never runs past the remaining deadline."""

    def __init__(
        self,
        base: float = 1.0,
        cap: float = 60.0,
        remaining: Callable[[], float] | None = None,
        hint_jitter: float = 0.1,
        max_hint_jitter: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.envelope = wait_exponential(multiplier=base, max=cap)
        self.remaining = remaining
        self.hint_jitter = hint_jitter
        self.max_hint_jitter = max_hint_jitter
        self.rng = rng or random.Random()

    def __call__(self, retry_state: RetryCallState) -> float:
        hint = retry_after_of(_last_exception(retry_state))
        if hint is not None:
            jitter = min(self.max_hint_jitter, self.hint_jitter * hint + 0.05)
            wait = hint + self.rng.uniform(0.0, jitter)
        else:
            wait = self.rng.uniform(0.0, self.envelope(retry_state))
        if self.remaining is not None:
            wait = min(wait, self.remaining())
        return max(0.0, wait)


class stop_at_deadline(stop_base):  # noqa: N801 - tenacity's naming
    """Stop once the deadline has passed, or at once when the server's hint
    says the request cannot succeed before the deadline (retrying earlier
    would only spend a request to learn the same thing)."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        remaining = self.deadline.remaining()
        if remaining <= 0.0:
            return True
        hint = retry_after_of(_last_exception(retry_state))
        return hint is not None and hint > remaining


# -- the policy ---------------------------------------------------------------


class RetriesExhausted(BackendError):
    """A retryable error persisted until attempts or the deadline ran out.

    Still a transient ``BackendError`` (a later pass may succeed), so a caller
    that looks again later (the Batch API's poll loop) reads ``retryable``
    alike for one failed call and for one that gave up. ``status`` is the
    status to count it under (``error_status``: an HTTP status, "timeout" or
    "connection"). The message holds only the status and the last exception's
    text (which backends keep free of secrets)."""

    def __init__(
        self, last_exception: BaseException, attempts: int, status: int | str | None
    ) -> None:
        super().__init__(
            str(last_exception), kind=ErrorKind.TRANSIENT, retry_after=retry_after_of(last_exception)
        )
        self.last_exception = last_exception
        self.attempts = attempts
        self.status = status  # type: ignore[assignment] - also "timeout" or "connection"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.last_exception, self.attempts, self.status))

    def __str__(self) -> str:
        return (
            f"gave up after {self.attempts} attempt(s), last status {self.status}: "
            f"{self.last_exception}"
        )


OnRetry = Callable[[BaseException, int, float], None]


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one request. Frozen and picklable: it travels with the
    pipeline to the workers.

    ``deadline`` bounds the time one call (one batch) may spend, waits
    included, so a stuck batch frees its worker instead of holding it."""

    max_attempts: int = 8
    base_delay: float = 1.0
    max_delay: float = 60.0
    deadline: float = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")
        if self.deadline <= 0:
            raise ValueError("deadline must be positive")

    def retrying(
        self,
        *,
        on_retry: OnRetry | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> Retrying:
        """A fresh tenacity ``Retrying`` for one call (the deadline starts now)."""
        deadline = Deadline(self.deadline, clock)

        def before_sleep(state: RetryCallState) -> None:
            exc = _last_exception(state)
            if on_retry is not None and exc is not None:
                wait = state.next_action.sleep if state.next_action else state.upcoming_sleep
                on_retry(exc, state.attempt_number, wait)

        def give_up(state: RetryCallState) -> Any:
            exc = _last_exception(state)
            if exc is None:  # pragma: no cover - we only retry on exceptions
                return state.outcome.result() if state.outcome else None
            raise RetriesExhausted(exc, state.attempt_number, error_status(exc)) from exc

        return Retrying(
            stop=stop_after_attempt(self.max_attempts) | stop_at_deadline(deadline),
            wait=wait_full_jitter_or_hint(
                self.base_delay, self.max_delay, remaining=deadline.remaining, rng=rng
            ),
            retry=retry_if_exception(is_retryable),
            before_sleep=before_sleep,
            retry_error_callback=give_up,
            sleep=sleep,
        )

    def call(
        self,
        fn: Callable[..., R],
        *args: Any,
        on_retry: OnRetry | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        recover: Callable[[], R | None] | None = None,
        **kwargs: Any,
    ) -> R:
        """``fn(*args, **kwargs)`` with retries.

        A non-retryable error is raised unchanged after one attempt (so a bad
        input can be bisected and bad credentials can stop the run); a retryable one that
        persists becomes ``RetriesExhausted``. ``on_retry(exc, attempt, wait)``
        is called before each sleep, for counting retries by status.
        ``recover()`` is asked before each retry: a call that did happen though
        its answer was lost (a job created) is found instead of made twice."""
        retrying = self.retrying(on_retry=on_retry, sleep=sleep, clock=clock, rng=rng)
        attempt = fn if recover is None else _recovering(fn, recover)
        return retrying(attempt, *args, **kwargs)


def _recovering(fn: Callable[..., R], recover: Callable[[], R | None]) -> Callable[..., R]:
    """``fn``, except that every attempt after the first returns what
    ``recover()`` finds, when it finds something."""
    attempts = 0

    def attempt(*args: Any, **kwargs: Any) -> R:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            found = recover()
            if found is not None:
                return found
        return fn(*args, **kwargs)

    return attempt
