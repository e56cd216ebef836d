"""What is retryable, how long to wait, and when to give up, built on tenacity.

The SDKs we call either do not retry (google-genai, by default) or retry
blindly with fixed waits. Here every request gets tenacity's machinery with
three decisions of our own:

* ``is_retryable``: transient faults (408, 429, 5xx, timeouts, broken
  connections) are retried; 400/401/403/404 never are, so the caller can bisect
  a bad batch or stop the run on bad credentials at once.
* ``wait_full_jitter_or_hint``: exponential backoff with full jitter, unless the
  server said how long to wait (RetryInfo / Retry-After), which is honoured.
* a per-batch deadline, measured on an injectable clock, so a batch never holds
  a worker for longer than the policy allows.

``embed_with_bisection`` finds the few texts an API rejects with 400 inside an
otherwise good batch, so only they are dead-lettered.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timezone
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

from beamvec.backends.base import BackendError

T = TypeVar("T")
R = TypeVar("R")

#: Statuses that mean "the same request may succeed later".
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Statuses that mean "this request will never succeed": retrying only burns quota.
NEVER_RETRY_STATUSES = frozenset({400, 401, 403, 404})

try:  # google-genai talks HTTP through httpx; it is an optional dependency.
    import httpx

    _HTTPX_TIMEOUTS: tuple[type[BaseException], ...] = (httpx.TimeoutException,)
    _HTTPX_TRANSPORT: tuple[type[BaseException], ...] = (httpx.TransportError,)
    # A wrong URL scheme is a configuration fault, not a transient one.
    _HTTPX_NEVER: tuple[type[BaseException], ...] = (httpx.UnsupportedProtocol,)
except ImportError:  # pragma: no cover - depends on the installed extras
    _HTTPX_TIMEOUTS = _HTTPX_TRANSPORT = _HTTPX_NEVER = ()


# -- classification -----------------------------------------------------------


def error_status(exc: BaseException) -> int | str | None:
    """The status to count an error under: the HTTP status of a BackendError,
    ``"timeout"`` or ``"connection"`` for network faults, else None."""
    if isinstance(exc, BackendError) and exc.status is not None:
        return exc.status
    if isinstance(exc, (TimeoutError, *_HTTPX_TIMEOUTS)):
        return "timeout"
    if isinstance(exc, (ConnectionError, *_HTTPX_TRANSPORT)):
        return "connection"
    return None


def is_retryable(exc: BaseException) -> bool:
    """Whether the same request may succeed if sent again later.

    The status table is authoritative where it speaks (a 400 is never retried,
    whatever the backend's flag says, so that it can be bisected); otherwise
    the backend's ``retryable`` flag decides. Timeouts and broken connections
    are retried."""
    if isinstance(exc, BackendError):
        if exc.status in NEVER_RETRY_STATUSES:
            return False
        return exc.retryable or exc.status in RETRYABLE_STATUSES
    if _HTTPX_NEVER and isinstance(exc, _HTTPX_NEVER):
        return False
    return isinstance(exc, (TimeoutError, ConnectionError, *_HTTPX_TIMEOUTS, *_HTTPX_TRANSPORT))


# -- server hints -------------------------------------------------------------


def _finite_non_negative(value: float) -> float | None:
    if math.isnan(value) or math.isinf(value):
        return None
    return max(0.0, value)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` header, or None.

    Accepts delta-seconds (``"120"``; a decimal is tolerated) and an HTTP-date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``), measured from ``now`` (epoch
    seconds, default the current time). A date in the past means 0."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        return _finite_non_negative(float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:  # pragma: no cover - older Pythons returned None
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        when = when.replace(tzinfo=timezone.utc)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _parse_duration(value: Any) -> float | None:
    """A protobuf Duration in JSON form: ``"1.5s"`` or ``{"seconds": 1, "nanos": 5e8}``."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("s"):
            text = text[:-1]
        try:
            return _finite_non_negative(float(text))
        except ValueError:
            return None
    if isinstance(value, dict):
        try:
            seconds = float(value.get("seconds", 0) or 0)
            nanos = float(value.get("nanos", 0) or 0)
        except (TypeError, ValueError):
            return None
        return _finite_non_negative(seconds + nanos / 1e9)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _finite_non_negative(float(value))
    return None


def parse_retry_info(error_json: Any) -> float | None:
    """Seconds to wait from a Google API error body's ``google.rpc.RetryInfo``.

    Accepts ``{"error": {..., "details": [...]}}``, the inner ``error`` object,
    or a one-element list of either (some Google APIs wrap errors in a list).
    Returns None when there is no usable ``retryDelay``."""
    if isinstance(error_json, list):
        error_json = error_json[0] if error_json else None
    if not isinstance(error_json, dict):
        return None
    error = error_json.get("error", error_json)
    if not isinstance(error, dict):
        return None
    details = error.get("details")
    if not isinstance(details, list):
        return None
    for detail in details:
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type", ""))
        if kind.endswith("google.rpc.RetryInfo") and "retryDelay" in detail:
            return _parse_duration(detail["retryDelay"])
    return None


def retry_after_of(exc: BaseException | None) -> float | None:
    """The server's hint carried by an exception (``retry_after``), if usable."""
    hint = getattr(exc, "retry_after", None)
    if isinstance(hint, int | float) and not isinstance(hint, bool):
        return _finite_non_negative(float(hint))
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


class RetriesExhausted(Exception):
    """A retryable error persisted until attempts or the deadline ran out.

    The message holds only the status and the last exception's text (which
    backends keep free of secrets)."""

    def __init__(
        self, last_exception: BaseException, attempts: int, status: int | str | None
    ) -> None:
        super().__init__(last_exception, attempts, status)
        self.last_exception = last_exception
        self.attempts = attempts
        self.status = status

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
        **kwargs: Any,
    ) -> R:
        """``fn(*args, **kwargs)`` with retries.

        A non-retryable error is raised unchanged after one attempt (so a 400
        can be bisected and a 401 can stop the run); a retryable one that
        persists becomes ``RetriesExhausted``. ``on_retry(exc, attempt, wait)``
        is called before each sleep, for counting retries by status."""
        retrying = self.retrying(on_retry=on_retry, sleep=sleep, clock=clock, rng=rng)
        return retrying(fn, *args, **kwargs)


# -- bisection of bad requests --------------------------------------------------


def embed_with_bisection(
    items: Sequence[T],
    call: Callable[[list[T]], R],
    is_bad_request: Callable[[BaseException], bool],
) -> tuple[list[tuple[list[T], R]], list[tuple[T, BaseException]]]:
    """Call on the whole batch; on a bad request, split it in halves until the
    offending items stand alone.

    One bad text must not cost its whole batch: with k bad items among n this
    takes about ``2k·log2(n/k)`` extra calls. Returns the successful sub-batches
    with their results, in input order, and the single items that were still
    rejected, with their errors. Any other error propagates unchanged."""
    done: list[tuple[list[T], R]] = []
    failed: list[tuple[T, BaseException]] = []

    def run(part: list[T]) -> None:
        if not part:
            return
        try:
            result = call(part)
        except Exception as exc:
            if not is_bad_request(exc):
                raise
            if len(part) == 1:
                failed.append((part[0], exc))
                return
            middle = len(part) // 2
            run(part[:middle])
            run(part[middle:])
            return
        done.append((part, result))

    run(list(items))
    return done, failed
