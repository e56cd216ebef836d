"""The REST shapes of the Gemini API and Vertex AI embedding methods.

Pure functions: a path and a JSON body in, an ``EmbedRequest`` out (or an
``ApiError`` in Google's error shape); vectors in, the response body out.
Written from the REST references (ai.google.dev/api/embeddings,
ai.google.dev/api/tokens; Vertex AI ``PredictionService``):

Gemini API  ``POST /{v1|v1beta|v1alpha}/models/{m}:batchEmbedContents``
    ``{"requests": [{"model", "content": {"parts": [{"text"}]}, "taskType", "title",
    "outputDimensionality"}]}`` -> ``{"embeddings": [{"values"}]}``; ``:embedContent``
    takes one such request -> ``{"embedding": {"values"}}``; ``:countTokens``
    ``{"contents": [...]}`` -> ``{"totalTokens", "promptTokensDetails"}``.
Vertex AI   ``POST /{v1|v1beta1}/projects/{p}/locations/{l}/publishers/google/models/{m}:…``
    (express mode drops ``projects/{p}/locations/{l}/``)
    ``:predict`` ``{"instances": [{"content", "task_type", "title"}], "parameters":
    {"outputDimensionality", "autoTruncate"}}`` -> ``{"predictions": [{"embeddings":
    {"values", "statistics": {"token_count", "truncated"}}}], "metadata"}``;
    ``:embedContent`` ``{"content", "embedContentConfig": {"taskType", "title",
    "outputDimensionality", "autoTruncate"}}`` -> ``{"embedding": {"values"},
    "usageMetadata": {"promptTokenCount"}, "truncated"}``; ``:batchEmbedContents``
    takes ``{"requests": [...]}`` of those -> ``{"embeddings": [{"values"}], "usageMetadata"}``.

Every body is checked field by field first (schema.py): an unknown field is 400.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from beamvec.emulator import schema
from beamvec.emulator.errors import (  # noqa: F401 - batch.py reaches them here
    ApiError,
    bad_key,
    bad_token,
    invalid,
    missing_key,
    quota_exceeded,
    server_error,
    unknown_fields,
)
from beamvec.emulator.models import GEMINI, TASK_TYPES, ModelSpec, lookup

_GEMINI_PATH = re.compile(
    r"^/(v1|v1beta|v1alpha)/models/([^/:]+):(batchEmbedContents|embedContent|countTokens)$"
)
_VERTEX_PATH = re.compile(
    r"^/(v1|v1beta1)/(?:projects/([^/]+)/locations/([^/]+)/)?"
    r"publishers/google/models/([^/:]+):(predict|embedContent|batchEmbedContents|countTokens)$"
)


@dataclass(frozen=True)
class Route:
    api: str  # "gemini" | "vertex"
    version: str
    model: str
    method: str  # "batchEmbedContents" | "embedContent" | "predict" | "countTokens"
    project: str | None = None
    location: str | None = None

    @property
    def name(self) -> str:
        return f"{self.api}:{self.method}"


@dataclass
class EmbedItem:
    text: str
    task_type: str | None = None  # as sent (None: absent)
    title: str | None = None
    dimension: int | None = None  # requested output_dimensionality
    auto_truncate: bool = False
    tokens: int = 0
    truncated: bool = False


@dataclass
class EmbedRequest:
    route: Route
    spec: ModelSpec
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


def find_model(route: Route) -> ModelSpec:
    """The model the route names, if this endpoint serves it for this method;
    else Google's 404 (unknown or not on this API) or 400 (not this method)."""
    spec = lookup(route.model)
    if route.api == GEMINI:
        if spec is None or not spec.serves(route.api, route.method):
            raise ApiError(
                404,
                "NOT_FOUND",
                f"models/{route.model} is not found for API version {route.version}, or is not "
                f"supported for {route.method}. Call ListModels to see the list of available "
                "models and their supported methods.",
            )
        return spec
    if spec is None or not spec.vertex_methods:
        raise ApiError(
            404,
            "NOT_FOUND",
            f"Publisher Model `projects/{route.project}/locations/{route.location}/publishers/"
            f"google/models/{route.model}` was not found or your project does not have access to it.",
        )
    if route.method == "countTokens":  # googleapis/python-genai#1541
        raise invalid("Should provide instances for text model prediction.")
    if not spec.serves(route.api, route.method):
        raise invalid(f"Model {spec.name} does not support the {route.method} method.")
    return spec


def check_model(route: Route) -> int:
    """The native size of the model the route names (or Google's error)."""
    return find_model(route).dimension


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
    if value not in TASK_TYPES:
        raise invalid(f"Invalid value at '{where}' (TaskType), \"{value}\"")
    return str(value)


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


def _strict(body: Any, message: schema.Message) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("Invalid JSON payload received.")
    fixed, unknown = schema.normalize(body, message)
    if unknown:
        raise unknown_fields(unknown)
    return fixed


def _items(raw: Any, where: str) -> list[Any]:
    if not isinstance(raw, list) or not raw:
        raise invalid(f"* {where}: {where} must not be empty")
    return raw


def _gemini_item(r: Any, where: str, route: Route, native: int) -> EmbedItem:
    if not isinstance(r, dict):
        raise invalid(f"* {where}: must be an object")
    model = r.get("model")
    if model is not None and str(model).rsplit("/", 1)[-1] != route.model:
        raise invalid(
            f"* BatchEmbedContentsRequest.{where}.model: model in the request "
            f"({model}) does not match the model in the URL (models/{route.model})"
        )
    return EmbedItem(
        text=_text_of(r.get("content"), where),
        task_type=_task(r.get("taskType"), f"{where}.task_type"),
        title=_str(r.get("title")),
        dimension=_dimension(r.get("outputDimensionality"), native, where),
    )


def _vertex_item(r: Any, where: str, native: int) -> EmbedItem:
    if not isinstance(r, dict):
        raise invalid(f"* {where}: must be an object")
    cfg = {k: v for k, v in r.items() if k not in ("content", "embedContentConfig", "model")}
    cfg.update(r.get("embedContentConfig") or {})
    return EmbedItem(
        text=_text_of(r.get("content"), where),
        task_type=_task(cfg.get("taskType"), f"{where}.task_type"),
        title=_str(cfg.get("title")),
        dimension=_dimension(cfg.get("outputDimensionality"), native, where),
        auto_truncate=bool(cfg.get("autoTruncate", True)),  # Vertex defaults to true
    )


def parse_body(route: Route, body: Any, spec: ModelSpec) -> EmbedRequest:
    """The texts of an embedding request body, checked as Google checks them."""
    req = EmbedRequest(route, spec)
    native = spec.dimension
    if route.api == GEMINI:
        if route.method == "embedContent":
            raw = [_strict(body, schema.GEMINI_EMBED)]
        else:
            raw = _items(_strict(body, schema.GEMINI_BATCH).get("requests"), "requests")
        req.items = [_gemini_item(r, f"requests[{i}]", route, native) for i, r in enumerate(raw)]
        return req
    if route.method == "predict":
        fixed = _strict(body, schema.VERTEX_PREDICT)
        instances = _items(fixed.get("instances"), "instances")
        params = fixed.get("parameters") or {}
        dim = _dimension(params.get("outputDimensionality"), native, "parameters")
        auto = bool(params.get("autoTruncate", True))  # Vertex defaults to true
        for i, inst in enumerate(instances):
            if not isinstance(inst, dict) or not isinstance(inst.get("content"), str):
                raise invalid(f"instances[{i}].content must be a string")
            task = _task(inst.get("taskType"), f"instances[{i}].task_type")
            req.items.append(EmbedItem(inst["content"], task, _str(inst.get("title")), dim, auto))
        return req
    if route.method == "embedContent":
        raw = [_strict(body, schema.VERTEX_EMBED)]
    else:
        raw = _items(_strict(body, schema.VERTEX_BATCH).get("requests"), "requests")
    req.items = [_vertex_item(r, f"requests[{i}]", native) for i, r in enumerate(raw)]
    return req


def parse_count(body: Any) -> list[str]:
    """The texts of a Gemini API ``:countTokens`` body (one per content)."""
    fixed = _strict(body, schema.GEMINI_COUNT)
    contents = _items(fixed.get("contents"), "contents")
    return [_text_of(c, f"contents[{i}]") for i, c in enumerate(contents)]


def render_count(tokens: int) -> dict[str, Any]:
    return {
        "totalTokens": tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": tokens}],
    }


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
