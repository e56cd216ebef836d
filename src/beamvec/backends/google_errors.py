"""What a Google API error means: the one place that reads statuses and error bodies.

google-genai raises ``errors.APIError`` (HTTP code, canonical status, message,
the JSON body as ``details``) and lets httpx/httpx2 and google-auth errors
through. This module turns each into a ``BackendError`` whose ``kind`` says
what to do with the request, with the server's wait hint:

* 408, 409, 425, 429 and 5xx (but 501): transient, retried with backoff.
* 400, 413, 422: bad input, bisected so only the culprit texts are
  dead-lettered; except a 400 whose ErrorInfo reason says the API key is bad
  (Google answers a bad key with 400 INVALID_ARGUMENT): systemic. A 400 about
  a text's length ("input token count … exceeds the maximum number of tokens")
  is ``TextTooLong``, carrying the index of the text when the message names it
  (``requests[i]``, ``instances[i]``), so that text alone is dead-lettered and
  the rest resent at once, with no bisection.
* 401, 403, 404, 501 and any other status: systemic, the run stops.
* timeouts and broken connections: transient; a bad URL (unsupported
  scheme) and google-auth failures: systemic; a 200 whose body does not
  parse into embeddings: transient (a malformed answer, asked again).

Hints: the body's ``google.rpc.RetryInfo.retryDelay``, else the ``Retry-After``
header (seconds or an HTTP-date). The Gemini API words retryDelay in whole
seconds rounded down ("58s" for 58.93 s) and the message to the nanosecond
("Please retry in 58.930000000s."): the message's figure is taken when it
agrees with the delay; a whole-second delay alone is ``hint_floor`` (at least
that long). A 429 says which quota it hit (``quota``): its QuotaFailure
metric (``…input_token_count``, ``…requests``), else the message's words. No other module looks at a status to
decide anything; retry, bisection, the embedder, the preflight and the CLI
read ``kind``.
"""

from __future__ import annotations

import email.utils
import functools
import importlib
import json
import math
import re
import time
from collections.abc import Callable
from datetime import timezone
from typing import Any

from beamvec.errors import BackendError, ErrorKind

TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})
BAD_INPUT_STATUSES = frozenset({400, 413, 422})
#: ErrorInfo reasons Google sends with HTTP 400 when the API key is bad.
BAD_KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_NOT_FOUND"})
#: ErrorInfo reasons of a rate limit, whatever the status (older APIs use 403).
RATE_LIMIT_REASONS = frozenset({"RATE_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"})

#: Keys shorter than this are not scrubbed by value (masking every "k" of a
#: message helps nobody); real Google API keys are 39 characters.
MIN_SCRUBBED_KEY = 8
#: How Google words a 400 about an input's length (Gemini API and Vertex).
_TOO_LONG = re.compile(
    r"token count|exceeds the maximum number of tokens|supports up to \d+ tokens|too long",
    re.IGNORECASE,
)
_NAMED_ITEM = re.compile(r"\b(?:requests|instances|contents)\[(\d+)\]")
_RETRY_IN = re.compile(r"retry in (\d+(?:\.\d+)?)\s*s\b", re.IGNORECASE)
_TOKENS_WORD = re.compile(r"\btokens?\b", re.IGNORECASE)
_REQUESTS_WORD = re.compile(r"\brequests?\b", re.IGNORECASE)
_KEY_IN_URL = re.compile(r"([?&]key=)[^&\s'\"]+")
MAX_MESSAGE = 400


# -- the status table -----------------------------------------------------------


def kind_of_status(code: int, reasons: frozenset[str] | set[str] = frozenset()) -> ErrorKind:
    """What an HTTP status (with the body's ErrorInfo reasons) means for the request."""
    if reasons & RATE_LIMIT_REASONS:
        return ErrorKind.TRANSIENT
    if code in BAD_INPUT_STATUSES:
        return ErrorKind.SYSTEMIC if reasons & BAD_KEY_REASONS else ErrorKind.BAD_INPUT
    if code in TRANSIENT_STATUSES or (500 <= code <= 599 and code != 501):
        return ErrorKind.TRANSIENT
    return ErrorKind.SYSTEMIC


# -- server hints -------------------------------------------------------------


def _seconds(value: float) -> float | None:
    return max(0.0, value) if math.isfinite(value) else None


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
        return _seconds(float(text))
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
        text = value.strip().removesuffix("s")
        try:
            return _seconds(float(text))
        except ValueError:
            return None
    if isinstance(value, dict):
        try:
            seconds = float(value.get("seconds", 0) or 0)
            nanos = float(value.get("nanos", 0) or 0)
        except (TypeError, ValueError):
            return None
        return _seconds(seconds + nanos / 1e9)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _seconds(float(value))
    return None


def _error_details(body: Any) -> list[dict[str, Any]]:
    """The ``details`` list of a Google error body: ``{"error": {...}}``, the
    inner object, or a one-element list of either (some APIs wrap errors)."""
    if isinstance(body, list):
        body = body[0] if body else None
    if not isinstance(body, dict):
        return []
    error = body.get("error", body)
    details = error.get("details") if isinstance(error, dict) else None
    if not isinstance(details, list):
        return []
    return [d for d in details if isinstance(d, dict)]


def parse_retry_info(body: Any) -> float | None:
    """Seconds to wait from a Google error body's ``google.rpc.RetryInfo``, or None."""
    for detail in _error_details(body):
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo") and "retryDelay" in detail:
            return _parse_duration(detail["retryDelay"])
    return None


def quota_hit(body: Any, message: str) -> str | None:
    """Which quota a 429 says it hit: "tokens", "requests" or None (not said).
    Google names it in QuotaFailure violations (``…/embed_content_input_token_count``,
    ``…/generate_content_free_tier_requests``); else the message may say."""
    for detail in _error_details(body):
        if not str(detail.get("@type", "")).endswith("google.rpc.QuotaFailure"):
            continue
        for violation in detail.get("violations") or []:
            if not isinstance(violation, dict):
                continue
            names = f"{violation.get('quotaMetric', '')} {violation.get('quotaId', '')}".lower()
            if "token" in names:
                return "tokens"
            if "request" in names:
                return "requests"
    if _TOKENS_WORD.search(message):
        return "tokens"
    if _REQUESTS_WORD.search(message):
        return "requests"
    return None


def refined_hint(retry_info: float | None, message: str) -> tuple[float | None, bool]:
    """(seconds to wait, whether that is a whole-second floor) from RetryInfo's
    delay and the message's "Please retry in 58.93s.": the message's figure
    when the delay is missing or its whole seconds; a whole-second delay alone
    is a floor (Google rounds it down)."""
    said = _RETRY_IN.search(message)
    precise = _seconds(float(said.group(1))) if said else None
    if retry_info is None:
        return precise, False
    if precise is not None and retry_info <= precise < retry_info + 1.0:
        return precise, False
    return retry_info, retry_info == math.floor(retry_info)


def error_reasons(body: Any) -> frozenset[str]:
    """The ErrorInfo reasons in a Google error body."""
    return frozenset(
        str(d.get("reason"))
        for d in _error_details(body)
        if str(d.get("@type", "")).endswith("google.rpc.ErrorInfo")
    )


# -- secrets ------------------------------------------------------------------


def scrub(message: str, secret: str | None) -> str:
    """``message`` on one line, without the key, whatever path it took to get there.

    Every occurrence of the whole key is masked when the key is of a realistic
    length (``MIN_SCRUBBED_KEY``); ``key=`` URL parameters always are. The
    result is one line of at most ``MAX_MESSAGE`` characters."""
    if secret and len(secret) >= MIN_SCRUBBED_KEY:
        message = message.replace(secret, "***")
    message = _KEY_IN_URL.sub(r"\1***", message)
    message = " ".join(message.split())
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    return message


# -- exceptions to BackendError ---------------------------------------------------


def names_file(exc: BackendError, file_name: str | None) -> bool:
    """Whether a 403 or 404 is about ``file_name`` (``files/ID``): Google's
    Files API words a file it no longer has as "You do not have permission
    to access the File ID or it may not exist."; an error about the model or
    the key names no file."""
    return bool(file_name) and exc.status in (403, 404) and file_name.rsplit("/", 1)[-1] in str(exc)


class TextTooLong(BackendError):
    """A 400 about an input's length; ``culprit``: the index of the text in the
    request when the server named it, else None (then bisection finds it)."""

    def __init__(self, message: str, *, status: int | None = 400, culprit: int | None = None) -> None:
        super().__init__(message, kind=ErrorKind.BAD_INPUT, status=status)
        self.culprit = culprit

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_too_long, (str(self), self.status, self.culprit))


def _rebuild_too_long(message: str, status: int | None, culprit: int | None) -> TextTooLong:
    return TextTooLong(message, status=status, culprit=culprit)


def too_long(code: int, message: str, label: str, clean: Callable[[str], str]) -> TextTooLong | None:
    """A TextTooLong for a 400 whose message is about length, else None."""
    if code != 400 or not _TOO_LONG.search(message):
        return None
    named = _NAMED_ITEM.search(message)
    return TextTooLong(
        clean(f"{label}: text too long: {message}"), culprit=int(named.group(1)) if named else None
    )



def malformed(label: str, what: str) -> BackendError:
    """A 200 that cannot be trusted: asked again, never written misaligned."""
    return BackendError(f"{label}: malformed response: {what}", kind=ErrorKind.TRANSIENT)


def from_api_error(exc: Any, label: str, clean: Callable[[str], str]) -> BackendError:
    """A google-genai ``APIError`` as a BackendError with its kind and hint."""
    code = int(exc.code or 0)
    message = str(exc.message or "")
    headers = getattr(getattr(exc, "response", None), "headers", None)
    # RetryInfo's retryDelay carries milliseconds; Retry-After only whole seconds,
    # which at a 1-s metering window would hold a whole window for nothing.
    retry_after, floor = refined_hint(parse_retry_info(exc.details), message)
    if retry_after is None:
        retry_after = parse_retry_after(headers.get("retry-after") if headers else None)
    reasons = error_reasons(exc.details)
    throttled = code == 429 or bool(reasons & RATE_LIMIT_REASONS)
    kind = kind_of_status(code, reasons)
    if kind is ErrorKind.BAD_INPUT:
        length = too_long(code, message, label, clean)
        if length is not None:
            return length
    status = code or None
    if code == 400 and kind is ErrorKind.SYSTEMIC:
        status = 401  # a bad key: counted and reported as the authentication failure it is
    text = f"{label}: HTTP {code} {exc.status or ''}: {message}".rstrip(": ")
    return BackendError(
        clean(text),
        kind=kind,
        status=status,
        retry_after=retry_after,
        throttled=throttled,
        quota=quota_hit(exc.details, message) if throttled else None,
        hint_floor=floor and throttled,
    )


def from_exception(
    exc: BaseException, label: str, timeout_s: float, clean: Callable[[str], str]
) -> BackendError | None:
    """A BackendError for what the SDK, the network or google-auth raised;
    None for anything not recognised (a bug should stay loud)."""
    import pydantic
    from google.genai import errors

    timeouts, transport, unsupported = http_exception_types()
    if isinstance(exc, errors.APIError):
        return from_api_error(exc, label, clean)
    if isinstance(exc, (*timeouts, TimeoutError)):
        return BackendError(
            f"{label}: request timed out after {timeout_s:g}s ({type(exc).__name__})",
            kind=ErrorKind.TRANSIENT,
        )
    if isinstance(exc, unsupported):
        return BackendError(clean(f"{label}: bad API URL: {exc}"), kind=ErrorKind.SYSTEMIC)
    if isinstance(exc, (*transport, ConnectionError)):
        return BackendError(
            clean(f"{label}: connection failed ({type(exc).__name__}: {exc})"),
            kind=ErrorKind.TRANSIENT,
        )
    if isinstance(exc, (json.JSONDecodeError, pydantic.ValidationError)):
        # A 200 whose body does not parse into embeddings is a broken response.
        return malformed(label, clean(f"{type(exc).__name__}: {exc}")[:200])
    try:
        from google.auth import exceptions as auth_exceptions
    except ImportError:  # pragma: no cover - google-auth comes with google-genai
        return None
    if isinstance(exc, auth_exceptions.GoogleAuthError):
        return BackendError(
            clean(f"{label}: credentials failed ({type(exc).__name__}: {exc})"),
            kind=ErrorKind.SYSTEMIC,
            status=401,
        )
    return None


@functools.lru_cache(maxsize=1)
def http_exception_types() -> tuple[tuple[type[BaseException], ...], ...]:
    """(timeouts, transport errors, bad URL) of httpx2 (google-genai's default
    transport since 3.x) and of httpx (2.x's transport; 3.x with
    ``GOOGLE_GENAI_HTTP_CLIENT=httpx``)."""
    timeouts: list[type[BaseException]] = []
    transport: list[type[BaseException]] = []
    unsupported: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        timeouts.append(module.TimeoutException)
        transport.append(module.TransportError)
        unsupported.append(module.UnsupportedProtocol)
    return tuple(timeouts), tuple(transport), tuple(unsupported)
