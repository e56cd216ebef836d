"""Request bodies checked field by field, as Google's proto JSON parser does.

Google parses a REST body into the method's request proto: a field it does not
know is a 400 INVALID_ARGUMENT ``Invalid JSON payload received. Unknown name
"x" at 'requests[0]': Cannot find field.`` with a ``BadRequest`` field
violation, and either spelling of a field is accepted (``taskType`` or
``task_type``). The messages below are the ones of the REST references
(ai.google.dev/api/embeddings, ai.google.dev/api/tokens, and Vertex AI's
``PredictRequest`` / ``EmbedContentRequest``); a field whose value is not a
message (a string, a number, an opaque map) is a leaf.
"""

from __future__ import annotations

import re
from typing import Any

#: A message: its fields (camelCase) -> the child message, a list of it
#: (``[message]``), or None for a leaf.
Message = dict[str, Any]

PART: Message = dict.fromkeys(
    ["text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode", "codeExecutionResult", "thought", "thoughtSignature", "videoMetadata", "partMetadata", "mediaResolution"]
)
CONTENT: Message = {"parts": [PART], "role": None}

GEMINI_EMBED: Message = {
    "model": None,
    "content": CONTENT,
    "taskType": None,
    "title": None,
    "outputDimensionality": None,
}
GEMINI_BATCH: Message = {"requests": [GEMINI_EMBED]}
GEMINI_COUNT: Message = {"contents": [CONTENT], "generateContentRequest": None}

VERTEX_INSTANCE: Message = {"content": None, "taskType": None, "title": None, "mimeType": None}
VERTEX_PREDICT: Message = {
    "instances": [VERTEX_INSTANCE],
    "parameters": {"autoTruncate": None, "outputDimensionality": None},
    "labels": None,
}
VERTEX_EMBED_CONFIG: Message = {
    "taskType": None,
    "title": None,
    "outputDimensionality": None,
    "autoTruncate": None,
    "documentOcr": None,
    "audioTrackExtraction": None,
}
VERTEX_EMBED: Message = {
    "model": None,
    "content": CONTENT,
    "title": None,
    "taskType": None,
    "outputDimensionality": None,
    "autoTruncate": None,
    "embedContentConfig": VERTEX_EMBED_CONFIG,
}
VERTEX_BATCH: Message = {"requests": [VERTEX_EMBED]}

_CAMEL = re.compile(r"_([a-z0-9])")
_SNAKE = re.compile(r"(?<!^)([A-Z])")


def camel(name: str) -> str:
    return _CAMEL.sub(lambda m: m.group(1).upper(), name)


def snake(name: str) -> str:
    return _SNAKE.sub(lambda m: "_" + m.group(1).lower(), name)


def normalize(value: Any, message: Message, path: str = "") -> tuple[Any, list[tuple[str, str]]]:
    """``value`` with every field of ``message`` spelled in camelCase, and the
    unknown fields found on the way as (name, path) pairs."""
    if not isinstance(value, dict):
        return value, []
    out: dict[str, Any] = {}
    unknown: list[tuple[str, str]] = []
    for name, child in value.items():
        key = camel(name)
        if key not in message:
            unknown.append((name, path))
            continue
        spec = message[key]
        where = f"{path}.{snake(key)}" if path else snake(key)
        if isinstance(spec, list) and isinstance(child, list):
            items = []
            for i, item in enumerate(child):
                fixed, bad = normalize(item, spec[0], f"{where}[{i}]")
                items.append(fixed)
                unknown.extend(bad)
            out[key] = items
        elif isinstance(spec, dict):
            out[key], bad = normalize(child, spec, where)
            unknown.extend(bad)
        else:
            out[key] = child
    return out, unknown


def unknown_fields_message(unknown: list[tuple[str, str]]) -> tuple[str, list[dict[str, str]]]:
    """Google's message for unknown fields, and its BadRequest field violations."""
    lines = []
    violations = []
    for name, path in unknown:
        where = f" at '{path}'" if path else ""
        line = f'Invalid JSON payload received. Unknown name "{name}"{where}: Cannot find field.'
        lines.append(line)
        violations.append({"field": path, "description": line})
    return "\n".join(lines), violations
