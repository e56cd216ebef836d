"""The REST shapes of the Gemini API and Vertex AI embedding methods.

Pure functions: a path and a JSON body in, an ``EmbedRequest`` out (or an
``ApiError`` in Google's error shape); vectors in, the response body out.
The shapes are the ones google-genai 3.4 sends and parses:

Gemini API  ``POST /{v1|v1beta|v1alpha}/models/{m}:batchEmbedContents``
    ``{"requests": [{"model": "models/m", "content": {"parts": [{"text"}]},
    "taskType", "title", "outputDimensionality"}]}`` -> ``{"embeddings": [{"values"}]}``;
    ``:embedContent`` takes one such request and answers ``{"embedding": {"values"}}``.
Vertex AI   ``POST /{v1|v1beta1}/projects/{p}/locations/{l}/publishers/google/models/{m}:…``
    (express mode drops ``projects/{p}/locations/{l}/``)
    ``:predict`` (one instance for gemini models) ``{"instances": [{"content", "task_type", "title"}], "parameters":
    {"outputDimensionality", "autoTruncate"}}`` -> ``{"predictions": [{"embeddings":
    {"values", "statistics": {"token_count", "truncated"}}}], "metadata"}``;
    ``:batchEmbedContents`` ``{"requests": [{"content", "embedContentConfig": {"taskType",
    "title", "outputDimensionality", "autoTruncate"}}]}`` -> ``{"embeddings": [{"values"}]}``;
    ``:embedContent`` ``{"content", "embedContentConfig"}`` -> ``{"embedding": {"values"},
    "usageMetadata": {"promptTokenCount"}, "truncated"}``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from beamvec.backends.genai import TASK_TYPES, native_dimension
from beamvec.emulator.config import EmulatorConfig

_GEMINI_PATH = re.compile(
    r"^/(v1|v1beta|v1alpha)/models/([^/:]+):(batchEmbedContents|embedContent)$"
)
_VERTEX_PATH = re.compile(
    r"^/(v1|v1beta1)/(?:projects/([^/]+)/locations/([^/]+)/)?"
    r"publishers/google/models/([^/:]+):(predict|embedContent|batchEmbedContents)$"
)
ACCEPTED_TASK_TYPES = frozenset(TASK_TYPES) | {"TASK_TYPE_UNSPECIFIED"}


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


@dataclass(frozen=True)
class Route:
    api: str  # "gemini" | "vertex"
    version: str
    model: str
    method: str  # "batchEmbedContents" | "embedContent" | "predict"
    project: str | None = None
    location: str | None = None

    @property
    def name(self) -> str:
        return f"{self.api}:{self.method}"


@dataclass
class EmbedItem:
    text: str
    task_type: str | None = None
    title: str | None = None
    dimension: int | None = None  # requested output_dimensionality
    tokens: int = 0
    truncated: bool = False


@dataclass
class EmbedRequest:
    route: Route
    items: list[EmbedItem] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(i.tokens for i in self.items)


def parse_route(path: str) -> Route:
    """The route of a POST path, or 404 in Google's words."""
    m = _GEMINI_PATH.match(path)
    if m:
        return Route("gemini", m.group(1), m.group(2), m.group(3))
    m = _VERTEX_PATH.match(path)
    if m:
        return Route("vertex", m.group(1), m.group(4), m.group(5), m.group(2), m.group(3))
    raise ApiError(404, "NOT_FOUND", f"The requested URL {path} was not found on this server.")


def check_model(route: Route) -> int:
    """The model's native size, or 404 as the real services word it."""
    native = native_dimension(route.model)
    if native is not None:
        return native
    if route.api == "gemini":
        message = (
            f"models/{route.model} is not found for API version {route.version}, or is not "
            f"supported for {route.method}. Call ListModels to see the list of available "
            "models and their supported methods."
        )
    else:
        message = (
            f"Publisher Model `projects/{route.project}/locations/{route.location}/publishers/"
            f"google/models/{route.model}` was not found or your project does not have access to it."
        )
    raise ApiError(404, "NOT_FOUND", message)


def _text_of(content: Any, where: str) -> str:
    if not isinstance(content, dict):
        raise invalid(f"* {where}.content: content is required")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise invalid(f"* {where}.content.parts: contents.parts must not be empty.")
    texts = []
    for part in parts:
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            raise invalid(f"* {where}.content.parts: only text parts are supported here")
        texts.append(part["text"])
    return "\n".join(texts)


def _task(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if value not in ACCEPTED_TASK_TYPES:
        raise invalid(f"Invalid value at '{where}' (TaskType), \"{value}\"")
    return None if value == "TASK_TYPE_UNSPECIFIED" else str(value)


def _dimension(value: Any, native: int, where: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= native:
        raise invalid(
            f"* {where}: output_dimensionality must be between 1 and {native}, got {value}"
        )
    return value


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_body(route: Route, body: Any, native: int) -> tuple[EmbedRequest, bool]:
    """The texts of a request body, and whether it asked for auto-truncation."""
    if not isinstance(body, dict):
        raise invalid("Invalid JSON payload received.")
    req = EmbedRequest(route)
    auto_truncate = False
    if route.api == "gemini":
        if route.method == "embedContent":
            raw = [body]
        else:
            raw = body.get("requests")
            if not isinstance(raw, list) or not raw:
                raise invalid("* BatchEmbedContentsRequest.requests: requests must not be empty")
        for i, r in enumerate(raw):
            where = f"requests[{i}]"
            if not isinstance(r, dict):
                raise invalid(f"* {where}: must be an object")
            model = r.get("model")
            if model is not None and model.rsplit("/", 1)[-1] != route.model:
                raise invalid(
                    f"* BatchEmbedContentsRequest.{where}.model: model in the request "
                    f"({model}) does not match the model in the URL (models/{route.model})"
                )
            req.items.append(
                EmbedItem(
                    text=_text_of(r.get("content"), where),
                    task_type=_task(r.get("taskType"), f"{where}.task_type"),
                    title=_str(r.get("title")),
                    dimension=_dimension(r.get("outputDimensionality"), native, where),
                )
            )
        return req, False
    if route.method == "predict":
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            raise invalid("instances must be a non-empty list")
        params = body.get("parameters") or {}
        dim = _dimension(params.get("outputDimensionality"), native, "parameters")
        auto_truncate = bool(params.get("autoTruncate", True))  # Vertex defaults to true
        for i, inst in enumerate(instances):
            if not isinstance(inst, dict) or not isinstance(inst.get("content"), str):
                raise invalid(f"instances[{i}].content must be a string")
            req.items.append(
                EmbedItem(
                    text=inst["content"],
                    task_type=_task(inst.get("task_type"), f"instances[{i}].task_type"),
                    title=_str(inst.get("title")),
                    dimension=dim,
                )
            )
        return req, auto_truncate
    raw = [body] if route.method == "embedContent" else body.get("requests")
    if not isinstance(raw, list) or not raw:
        raise invalid("requests must not be empty")
    truncates = []
    for i, r in enumerate(raw):
        where = f"requests[{i}]"
        if not isinstance(r, dict):
            raise invalid(f"* {where}: must be an object")
        cfg = r.get("embedContentConfig") or {}
        truncates.append(bool(cfg.get("autoTruncate", True)))
        req.items.append(
            EmbedItem(
                text=_text_of(r.get("content"), where),
                task_type=_task(cfg.get("taskType"), f"{where}.task_type"),
                title=_str(cfg.get("title")),
                dimension=_dimension(cfg.get("outputDimensionality"), native, where),
            )
        )
    return req, all(truncates)


def apply_limits(req: EmbedRequest, auto_truncate: bool, config: EmulatorConfig) -> None:
    """Count tokens, truncate or refuse over-long texts, and refuse over-full
    requests (400 INVALID_ARGUMENT, as the real services do)."""
    per_text = config.max_text_tokens
    cpt = config.chars_per_token
    max_items = config.gemini_max_items if req.route.api == "gemini" else config.vertex_max_items
    if req.route.method == "predict" and "gemini" in req.route.model:
        # Vertex docs ("Get text embeddings"): gemini-embedding-001 supports one
        # instance per request on :predict (google-genai 2.x sends it there).
        max_items = 1
    if len(req.items) > max_items:
        if req.route.api == "gemini":
            raise invalid(
                f"* BatchEmbedContentsRequest.requests: at most {max_items} requests can be in one batch"
            )
        raise invalid(
            f"The number of instances ({len(req.items)}) exceeds the limit of {max_items}."
        )
    for i, item in enumerate(req.items):
        if not item.text.strip():
            raise invalid(f"* requests[{i}].content: The text content is empty.")
        tokens = math.ceil(len(item.text) / cpt)
        if tokens > per_text:
            if not auto_truncate:
                raise invalid(
                    f"The input token count ({tokens}) of requests[{i}] exceeds the maximum "
                    f"number of tokens allowed ({per_text})."
                )
            item.text = item.text[: per_text * cpt]
            item.truncated = True
            tokens = per_text
        item.tokens = tokens
    if req.route.api == "vertex" and req.tokens > config.vertex_max_request_tokens:
        raise invalid(
            f"Unable to submit request because the input token count is {req.tokens} but the "
            f"model supports up to {config.vertex_max_request_tokens}. Reduce the input token "
            "count and try again."
        )


def render(req: EmbedRequest, vectors: Sequence[Any]) -> dict[str, Any]:
    """The 200 body for ``vectors`` (one per item; may be fewer when malformed).
    A vector may be a list of floats or a placeholder the server fills in."""
    route = req.route
    if route.api == "vertex" and route.method == "predict":
        return {
            "predictions": [
                {
                    "embeddings": {
                        "values": v,
                        "statistics": {"token_count": item.tokens, "truncated": item.truncated},
                    }
                }
                for v, item in zip(vectors, req.items, strict=False)  # fewer when malformed
            ],
            "metadata": {"billableCharacterCount": sum(len(i.text) for i in req.items)},
        }
    if route.method == "embedContent":
        body: dict[str, Any] = {"embedding": {"values": vectors[0]}} if vectors else {}
        if route.api == "vertex":
            body["usageMetadata"] = {"promptTokenCount": req.tokens}
            body["truncated"] = any(i.truncated for i in req.items)
        return body
    body = {"embeddings": [{"values": v} for v in vectors]}
    if route.api == "vertex":
        body["usageMetadata"] = {"promptTokenCount": req.tokens}
    return body


# -- canned errors -------------------------------------------------------------

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
    """429 with RetryInfo in the body and Retry-After (whole seconds) in the headers."""
    metric = "requests" if limit == "requests" else "input_token_count"
    value = config.rpm if limit == "requests" else config.tpm
    return ApiError(
        429,
        "RESOURCE_EXHAUSTED",
        f"You exceeded your current quota ({value} {limit} per {config.window_s:g}s). "
        f"Please retry in {retry_s:.3f}s.",
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
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_s:.3f}s"},
        ],
        headers={"Retry-After": str(max(1, math.ceil(retry_s)))},
    )


def server_error(code: int) -> ApiError:
    if code == 503:
        return ApiError(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
    return ApiError(500, "INTERNAL", "An internal error has occurred. Please retry or report.")
