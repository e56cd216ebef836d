"""What a 429 says about the quota it hit, as google_errors reads it (issue 30).

The bodies are Google's published shapes: the Gemini API's 429 names the quota
metric in a QuotaFailure (``…_input_token_count`` or ``…_requests``), words
its RetryInfo delay in whole seconds rounded down ("58s") and gives the wait
to the nanosecond in the message ("Please retry in 58.937785s."); Vertex
often sends "Resource exhausted" with no hint at all."""

from __future__ import annotations

import pickle
import types

from beamvec.backends.google_errors import from_api_error, quota_hit, refined_hint

TOKEN_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count"
REQUEST_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_requests"


def _gemini_429(metric: str, delay: str, said: str) -> types.SimpleNamespace:
    message = (f"You exceeded your current quota, please check your plan and billing details.\n"
               f"* Quota exceeded for metric: {metric}, limit: 250000\nPlease retry in {said}s.")
    details = [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
         "violations": [{"quotaMetric": metric, "quotaId": "PerMinute", "quotaValue": "250000"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
    ]
    return types.SimpleNamespace(code=429, status="RESOURCE_EXHAUSTED", message=message,
                                 details={"error": {"code": 429, "details": details}},
                                 response=types.SimpleNamespace(headers={}))


def test_a_gemini_429_names_its_quota_and_its_precise_wait() -> None:
    tokens = from_api_error(_gemini_429(TOKEN_METRIC, "58s", "58.937785"), "gemini", str)
    assert (tokens.throttled, tokens.quota, tokens.retry_after, tokens.hint_floor) == (True, "tokens", 58.937785, False)
    requests = from_api_error(_gemini_429(REQUEST_METRIC, "3s", "3.25"), "gemini", str)
    assert (requests.quota, requests.retry_after) == ("requests", 3.25)
    again = pickle.loads(pickle.dumps(tokens))
    assert (again.quota, again.retry_after, again.hint_floor) == ("tokens", 58.937785, False)


def test_a_whole_second_delay_alone_is_a_floor() -> None:
    assert refined_hint(58.0, "Resource exhausted.") == (58.0, True)
    assert refined_hint(0.0, "quota") == (0.0, True)  # "0s": less than a second
    assert refined_hint(2.5, "quota") == (2.5, False)
    # a message figure that disagrees with the delay is not the same wait
    assert refined_hint(3.0, "Please retry in 9.5s.") == (3.0, True)
    assert refined_hint(None, "Please retry in 9.5s.") == (9.5, False)
    assert refined_hint(None, "quota") == (None, False)


def test_vertex_resource_exhausted_says_neither_quota_nor_wait() -> None:
    vertex = types.SimpleNamespace(
        code=429, status="RESOURCE_EXHAUSTED", details={"error": {"code": 429}},
        message="Resource exhausted. Please try again later. Please refer to "
                "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details.",
        response=types.SimpleNamespace(headers={}))
    exc = from_api_error(vertex, "vertex", str)
    assert (exc.throttled, exc.quota, exc.retry_after, exc.hint_floor) == (True, None, None, False)
    assert quota_hit(None, "You exceeded your quota (1000 tokens per 60s)") == "tokens"
    assert quota_hit(None, "Quota exceeded for requests per minute") == "requests"


def test_only_a_429_says_which_quota() -> None:
    unavailable = types.SimpleNamespace(code=503, status="UNAVAILABLE", message="too many tokens in flight",
                                        details={}, response=types.SimpleNamespace(headers={}))
    exc = from_api_error(unavailable, "gemini", str)
    assert (exc.throttled, exc.quota, exc.hint_floor) == (False, None, False)
