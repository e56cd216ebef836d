"""The shapes of the Gemini Batch API for embeddings, for the emulator (batch.py).

Records (files, requests, jobs), the JSON of a File and of a batch Operation,
and the parsing of an input file's lines. batch.py's docstring says how the
shapes were verified.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from beamvec.emulator import protocol
from beamvec.emulator.config import EmulatorConfig
from beamvec.emulator.tokens import count_tokens

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"})
STATES = ("PENDING", "RUNNING", *sorted(TERMINAL))


@dataclass(frozen=True)
class Answer:
    """An HTTP answer for the server to write."""

    code: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json; charset=UTF-8"


def json_answer(code: int, body: Any, headers: Mapping[str, str] | None = None) -> Answer:
    return Answer(code, json.dumps(body, separators=(",", ":")).encode(), dict(headers or {}))


def error_answer(exc: protocol.ApiError) -> Answer:
    return json_answer(exc.code, exc.body(), exc.headers)


def not_found(what: str) -> protocol.ApiError:
    return protocol.ApiError(404, "NOT_FOUND", f"{what} not found.")


def rfc3339(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )


@dataclass
class StoredFile:
    name: str
    display_name: str | None
    mime_type: str
    data: bytes
    source: str  # "UPLOADED" | "GENERATED"
    created: float  # epoch seconds on the emulator's clock (wall clock + batch_clock_s)
    ttl_s: float = 48 * 3600.0  # Google keeps a file 48 h, then deletes it

    @property
    def expires(self) -> float:
        return self.created + self.ttl_s

    def resource(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "mimeType": self.mime_type,
            "sizeBytes": str(len(self.data)),
            "createTime": rfc3339(self.created),
            "updateTime": rfc3339(self.created),
            "expirationTime": rfc3339(self.expires),
            "state": "ACTIVE",
            "source": self.source,
        }
        if self.display_name:
            out["displayName"] = self.display_name
        return out


@dataclass
class Line:
    """One request of a job: its key (or inlined metadata), text and options."""

    key: Any
    text: str = ""
    task_type: str | None = None
    title: str | None = None
    dimension: int | None = None
    error: dict[str, Any] | None = None  # refused before embedding


@dataclass
class Job:
    name: str
    serial: int
    model: str
    display_name: str
    input_config: dict[str, Any]
    lines: list[Line]
    inlined: bool
    outcome: str  # drawn at creation: SUCCEEDED | FAILED | EXPIRED
    failure: str | None
    created: float
    created_mono: float
    state: str = "PENDING"
    ended: float | None = None
    output: dict[str, Any] | None = None
    ok: int = 0
    failed: int = 0
    deleted: bool = False


def pick(obj: Mapping[str, Any], camel: str, snake: str) -> Any:
    return obj.get(camel, obj.get(snake))


def operation(job: Job) -> dict[str, Any]:
    done = job.state in TERMINAL
    meta: dict[str, Any] = {
        "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.EmbedContentBatch",
        "name": job.name,
        "displayName": job.display_name,
        "model": f"models/{job.model}",
        "inputConfig": job.input_config,
        "createTime": rfc3339(job.created),
        "updateTime": rfc3339(job.ended or job.created),
        "batchStats": {
            "requestCount": str(job.ok + job.failed if done else len(job.lines)),
            "successfulRequestCount": str(job.ok),
            "failedRequestCount": str(job.failed),
            "pendingRequestCount": "0" if done else str(len(job.lines)),
        },
        "state": f"BATCH_STATE_{job.state}",
    }
    if job.ended is not None:
        meta["endTime"] = rfc3339(job.ended)
    if job.output is not None:
        meta["output"] = job.output
    op: dict[str, Any] = {"name": job.name, "metadata": meta}
    if done:
        op["done"] = True
        if job.state != "SUCCEEDED":
            message = job.failure or f"The batch is {job.state.lower()}."
            op["error"] = {"code": 13 if job.state == "FAILED" else 4, "message": message}
    return op


def file_lines(
    data: bytes, native: int, config: EmulatorConfig, max_tokens: int = 2048
) -> tuple[list[Line], str | None]:
    """The requests of an input file, or why the whole job fails."""
    lines: list[Line] = []
    for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            return [], f"Invalid JSON on line {number} of the input file."
        if not isinstance(obj, dict):
            return [], f"Line {number} of the input file is not a JSON object."
        lines.append(parse_line(obj.get("request"), obj.get("key"), native, config, max_tokens))
    if not lines:
        return [], "The input file holds no requests."
    return lines, None


def parse_line(
    request: Any, key: Any, native: int, config: EmulatorConfig, max_tokens: int = 2048
) -> Line:
    """One EmbedContentRequest, checked as the online method checks it; a bad
    request becomes a per-line INVALID_ARGUMENT error, as in a result file."""
    line = Line(key)
    try:
        if not isinstance(request, dict):
            raise protocol.invalid("request is required")
        line.text = protocol._text_of(request.get("content"), "request")
        line.task_type = protocol._task(pick(request, "taskType", "task_type"), "request.task_type")
        title = request.get("title")
        line.title = title if isinstance(title, str) and title else None
        line.dimension = protocol._dimension(
            pick(request, "outputDimensionality", "output_dimensionality"), native, "request"
        )
        if not line.text.strip():
            raise protocol.invalid("* request.content: The text content is empty.")
        tokens = count_tokens(line.text)
        if tokens > max_tokens:
            raise protocol.invalid(
                f"The input token count ({tokens}) exceeds the maximum number of tokens "
                f"allowed ({max_tokens})."
            )
    except protocol.ApiError as exc:
        line.error = {"code": 3, "message": exc.message}
    return line
