"""Google's error answers: the JSON shape ``{"error": {code, message, status,
details}}`` and the canned ones the emulator sends (keys, quota, overload).

The 429 follows the ``retry_hint`` setting. The Gemini API words its hint in
whole seconds, cut down, with the exact figure only in the message
(``"Please retry in 58.934310785s."`` with ``"retryDelay": "58s"``, as quoted in
googleapis/python-genai#1875 and #2114); Vertex AI often sends no hint at all
("Resource exhausted. Please try again later.").
"""

from __future__ import annotations

import math
from typing import Any

from beamvec.emulator.config import EmulatorConfig
from beamvec.emulator.schema import unknown_fields_message


class ApiError(Exception):
    """An error answer: HTTP code, canonical status, message, details, headers."""

    def __init__(
        self,
        code: int,
        status: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code} {status}: {message}")
        self.code = code
        self.status = status
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def invalid(message: str) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", message)


def unknown_fields(unknown: list[tuple[str, str]]) -> ApiError:
    message, violations = unknown_fields_message(unknown)
    return ApiError(
        400,
        "INVALID_ARGUMENT",
        message,
        [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations}],
    )


def too_long(tokens: int, limit: int) -> ApiError:
    return invalid(
        f"The input token count ({tokens}) exceeds the maximum number of tokens allowed ({limit})."
    )


_SERVICE = {"gemini": "generativelanguage.googleapis.com", "vertex": "aiplatform.googleapis.com"}


def missing_key(api: str) -> ApiError:
    if api == "vertex":
        return ApiError(
            401,
            "UNAUTHENTICATED",
            "Request is missing required authentication credential. Expected OAuth 2 access "
            "token, login cookie or other valid authentication credential.",
        )
    return ApiError(
        403,
        "PERMISSION_DENIED",
        "Method doesn't allow unregistered callers (callers without established identity). "
        "Please use API key or other form of API consumer identity to call this API.",
    )


def bad_key(api: str) -> ApiError:
    """Google answers a wrong API key with 400, not 401/403."""
    message = "API key not valid. Please pass a valid API key."
    return ApiError(
        400,
        "INVALID_ARGUMENT",
        message,
        [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": _SERVICE[api]},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": message,
            },
        ],
    )


def bad_token() -> ApiError:
    return ApiError(
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
        "cookie or other valid authentication credential.",
    )


def quota_exceeded(api: str, limit: str, retry_s: float, config: EmulatorConfig) -> ApiError:
    """429 RESOURCE_EXHAUSTED, with the hint ``config.retry_hint`` asks for."""
    if config.retry_hint == "none":
        return ApiError(
            429,
            "RESOURCE_EXHAUSTED",
            "Resource exhausted. Please try again later. Please refer to "
            "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details.",
        )
    metric = "requests" if limit == "requests" else "input_token_count"
    value = config.rpm if limit == "requests" else config.tpm
    exact = config.retry_hint == "exact"
    delay = f"{retry_s:.3f}s" if exact else f"{math.floor(retry_s)}s"
    return ApiError(
        429,
        "RESOURCE_EXHAUSTED",
        f"You exceeded your current quota ({value} {limit} per {config.window_s:g}s), please "
        "check your plan and billing details. For more information on this error, head to: "
        f"https://ai.google.dev/gemini-api/docs/rate-limits. Please retry in {retry_s:.9f}s.",
        [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": f"{_SERVICE[api]}/embed_content_{metric}",
                        "quotaId": f"EmbedContent{metric.title().replace('_', '')}PerWindow",
                        "quotaValue": str(value),
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
        ],
        headers={"Retry-After": str(max(1, math.ceil(retry_s)))} if exact else {},
    )


def server_error(code: int) -> ApiError:
    if code == 503:
        return ApiError(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
    return ApiError(500, "INTERNAL", "An internal error has occurred. Please retry or report.")
