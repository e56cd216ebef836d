"""The Batch API client masks the API key in Google's error text, as the
online path does: a refusal, a 5xx past its retries and a
failed job's message never carry the key, nor a ``key=`` URL parameter."""

from __future__ import annotations

import secrets
import types

import pytest

from beamvec.batchapi.client import BatchClient
from beamvec.errors import BackendError, ErrorKind
from beamvec.retry import RetryPolicy

genai_errors = pytest.importorskip("google.genai.errors")

KEY = "AIzaFAKE-" + secrets.token_hex(15)  # 39 characters, like a real Google API key


def _api_error(code: int, status: str) -> Exception:
    message = (f"request to https://generativelanguage.googleapis.com/v1beta/files?key={KEY}&alt=json "
               f"failed for key {KEY}")
    return genai_errors.APIError(code, {"error": {"code": code, "status": status, "message": message}})


class _Files:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def upload(self, **_: object) -> object:
        self.calls += 1
        raise self.error

    def list(self, **_: object) -> list[object]:
        return []


class _Batches:
    def get(self, name: str) -> object:
        error = types.SimpleNamespace(message=f"input file unreadable with key={KEY} ({KEY})")
        return types.SimpleNamespace(name=name, state="JOB_STATE_FAILED", dest=None, display_name="d",
                                     error=error)


def _client(error: Exception) -> tuple[BatchClient, _Files]:
    files = _Files(error)
    fake = types.SimpleNamespace(files=files, batches=_Batches())
    return BatchClient(fake, "models/x", retry=RetryPolicy(max_attempts=3), sleep=lambda _: None, secret=KEY), files


@pytest.mark.parametrize(("code", "status", "kind", "calls"), [
    (400, "INVALID_ARGUMENT", ErrorKind.BAD_INPUT, 1),
    (503, "UNAVAILABLE", ErrorKind.TRANSIENT, 3),  # retried, then given up
])
def test_a_refusal_carries_googles_text_without_the_key(code, status, kind, calls):
    client, files = _client(_api_error(code, status))
    with pytest.raises(BackendError) as raised:
        client.upload(b"{}\n", "beamvec-test")
    text = str(raised.value)
    assert KEY not in text and KEY[-12:] not in text
    assert "key=***" in text and "failed for key ***" in text  # the rest of Google's text stays
    assert raised.value.kind is kind and raised.value.status == code
    assert files.calls == calls


def test_a_failed_jobs_message_is_scrubbed():
    client, _ = _client(_api_error(400, "INVALID_ARGUMENT"))
    status = client.get("batches/1")
    assert status.state == "FAILED"
    assert status.error is not None and KEY not in status.error
    assert status.error == "input file unreadable with key=*** (***)"


def test_connect_hands_the_key_to_the_scrub():
    pytest.importorskip("google.genai")
    client = BatchClient.connect(KEY, "models/x", base_url="http://127.0.0.1:9")
    assert client._secret == KEY


def test_batch_and_online_calls_read_a_status_alike():
    """One classification of Google's errors. Google's published retry
    guidance (cloud.google.com/storage/docs/retry-strategy, AIP-194): 408, 429 and
    5xx are retried, and so are 409 ABORTED and 425; 501 NOT_IMPLEMENTED never is,
    nor a 400. Each status is asked of the Batch API client and of the online
    path's table, and both must agree with that list."""
    from beamvec.backends.google_errors import from_api_error

    retried = {408, 409, 425, 429, 500, 502, 503, 504, 505}
    for code in (400, 403, 404, 408, 409, 413, 422, 425, 429, 500, 501, 502, 503, 504, 505):
        client, files = _client(_api_error(code, "STATUS"))
        try:
            client.upload(b"{}\n", "beamvec-test")
        except BackendError as exc:
            batch_retried = exc.retryable
        online = from_api_error(_api_error(code, "STATUS"), "gemini", lambda text: text)
        assert batch_retried == online.retryable == (code in retried), code
        assert files.calls == (3 if code in retried else 1), code


def _throttled(retry_delay: str) -> Exception:
    """A 429 as the Gemini API words it: RetryInfo's whole-second delay and the
    message's precise figure (ai.google.dev/gemini-api/docs/rate-limits)."""
    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                      "message": "Resource has been exhausted. Please retry in 7.250000000s.",
                      "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                   "retryDelay": retry_delay}]}}
    return genai_errors.APIError(429, body)


def test_batch_calls_wait_the_servers_hint_and_give_up_like_online_calls():
    """One retry policy. A 429 that says "retry in 7.25 s" is waited
    for at least that long (not the 2-s backoff the policy starts with), and a
    429 that persists ends in the online path's RetriesExhausted, still a
    transient BackendError (the poll loop looks again next pass)."""
    from beamvec.retry import RetriesExhausted

    files = _Files(_throttled("7s"))
    slept: list[float] = []
    policy = RetryPolicy(max_attempts=4, base_delay=2.0, max_delay=120.0, deadline=900.0)
    client = BatchClient(types.SimpleNamespace(files=files, batches=_Batches()), "models/x",
                         retry=policy, sleep=slept.append, secret=KEY)
    with pytest.raises(RetriesExhausted) as raised:
        client.upload(b"{}\n", "beamvec-test")
    assert files.calls == 4 and len(slept) == 3
    assert all(7.25 <= wait <= 7.25 + 1.0 for wait in slept), slept
    gave_up = raised.value
    assert (gave_up.attempts, gave_up.status, gave_up.retryable) == (4, 429, True)
    assert isinstance(gave_up.last_exception, BackendError) and gave_up.last_exception.throttled
    assert KEY not in str(gave_up)


def test_a_create_whose_answer_was_lost_is_found_not_made_twice():
    """Before a retry the client asks for the job by display name: the service
    made the first create though its answer never arrived."""
    made = types.SimpleNamespace(name="batches/7", state="JOB_STATE_PENDING", dest=None,
                                 display_name="beamvec-job", error=None)

    class Batches:
        creates = 0
        listed: list[object] = []

        def create_embeddings(self, **_: object) -> object:
            self.creates += 1
            self.listed.append(made)  # it was made ...
            raise genai_errors.APIError(503, {"error": {"code": 503, "status": "UNAVAILABLE",
                                                        "message": "lost"}})  # ... yet not said

        def list(self, **_: object) -> list[object]:
            return list(self.listed)

    batches = Batches()
    client = BatchClient(types.SimpleNamespace(files=_Files(RuntimeError()), batches=batches),
                         "models/x", retry=RetryPolicy(max_attempts=5), sleep=lambda _: None)
    status = client.create("files/in", "beamvec-job")
    assert batches.creates == 1 and (status.name, status.state) == ("batches/7", "PENDING")
