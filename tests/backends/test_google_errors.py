"""What Google's errors mean (google_errors: the one place that reads statuses),
and the key scrubber. Expected kinds are written from Google's published
error model (https://cloud.google.com/apis/design/errors): 429 RESOURCE_EXHAUSTED
and 503 UNAVAILABLE are retried, 400 INVALID_ARGUMENT is the request's fault,
401/403/404 are not fixed by retrying; a bad API key is a 400 with the
ErrorInfo reason API_KEY_INVALID."""

from __future__ import annotations

import pickle
import types

import pytest

from beamvec.backends.google_errors import (
    error_reasons,
    from_api_error,
    kind_of_status,
    scrub,
)
from beamvec.errors import BackendError, ErrorKind

T, B, S = ErrorKind.TRANSIENT, ErrorKind.BAD_INPUT, ErrorKind.SYSTEMIC


@pytest.mark.parametrize(
    ("code", "kind"),
    [(408, T), (429, T), (500, T), (502, T), (503, T), (504, T),
     (400, B), (401, S), (403, S), (404, S), (501, S)],
)
def test_status_table(code: int, kind: ErrorKind) -> None:
    assert kind_of_status(code) is kind


def _api_error(code, status, message, details=None, headers=None):
    return types.SimpleNamespace(
        code=code, status=status, message=message,
        details={"error": {"code": code, "details": details or []}},
        response=types.SimpleNamespace(headers=headers or {}),
    )


def test_a_bad_key_is_systemic_not_a_bad_text() -> None:
    info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
    exc = from_api_error(_api_error(400, "INVALID_ARGUMENT", "API key not valid", [info]), "gemini", str)
    assert exc.kind is S and exc.status == 401 and not exc.retryable
    assert error_reasons({"error": {"details": [info]}}) == {"API_KEY_INVALID"}
    plain = from_api_error(_api_error(400, "INVALID_ARGUMENT", "text too long"), "gemini", str)
    assert plain.kind is B and plain.status == 400


def test_a_429_carries_its_hint_and_says_it_is_a_throttle() -> None:
    retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.5s"}
    exc = from_api_error(_api_error(429, "RESOURCE_EXHAUSTED", "quota", [retry]), "gemini", str)
    assert (exc.kind, exc.retry_after, exc.throttled) == (T, 2.5, True)
    header = from_api_error(
        _api_error(503, "UNAVAILABLE", "later", [retry], {"retry-after": "7"}), "gemini", str
    )
    # both: RetryInfo's delay is the precise one (Retry-After is whole seconds)
    assert (header.kind, header.retry_after, header.throttled) == (T, 2.5, False)
    only_header = from_api_error(
        _api_error(503, "UNAVAILABLE", "later", [], {"retry-after": "7"}), "gemini", str
    )
    assert only_header.retry_after == 7.0
    again = pickle.loads(pickle.dumps(exc))
    assert (again.kind, again.status, again.retry_after, again.throttled) == (T, 429, 2.5, True)
    assert isinstance(again, BackendError)


def test_scrubber_masks_whole_realistic_keys_only() -> None:
    assert scrub("keep every k in this kind key", "k") == "keep every k in this kind key"
    key = "fakekey-FAKE-scrubber-0123456789abcdefg"  # 39 characters, as long as Google's keys
    message = f"API key not valid: {key}; retry with {key}\n  at ?key={key}&alt=json"
    cleaned = scrub(message, key)
    assert key not in cleaned and cleaned.count("***") == 3
    assert "\n" not in cleaned  # one line
    # only whole occurrences: a fragment of the key is not the key
    assert scrub("prefix fakekey-FAKE- of nothing", key) == "prefix fakekey-FAKE- of nothing"
    # a key= URL parameter is masked whatever its value
    assert scrub("GET /v1?key=short&x=1", None) == "GET /v1?key=***&x=1"
