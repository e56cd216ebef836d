"""Request files and result lines of the Gemini Batch API for embeddings: pure functions.

A batch input file is JSONL, one ``{"key": ..., "request": EmbedContentRequest}``
per line; a result file has one ``{"key": ..., "response": {"embedding":
{"values": [...]}}}`` or ``{"key": ..., "error": Status}`` per request, in no
promised order (emulator/batch.py says how these shapes were verified). Keys
are the texts' content hashes, so a text repeated in a run is sent once and
every vector lands on the right records whatever the order of the lines.

Vectors get the checks of the online path (one finite, non-zero vector of the
configured size per key) and, below the model's native size, the same L2
normalization (``backends.base.l2_normalize``).
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from beamvec.backends.base import TASK_TYPES, l2_normalize
from beamvec.backends.genai import DEFAULT_MODEL, model_id, native_dimension
from beamvec.backends.prompts import PromptFormat, prompt_format
from beamvec.records import content_hash

#: Well under the published limits (2 GB a file, 20 GB a project).
MAX_REQUESTS_PER_FILE = 50_000
MAX_FILE_BYTES = 100 << 20
#: google.rpc.Code values a line may carry that a later job will not cure.
_PERMANENT_CODES = frozenset({3, 5, 7, 9, 11, 12, 16})  # INVALID_ARGUMENT, NOT_FOUND, ...


@dataclass(frozen=True)
class BatchSpec:
    """What shapes every request of a run: model, task type, output size."""

    model: str = DEFAULT_MODEL
    task_type: str | None = None
    output_dimensionality: int | None = None

    def __post_init__(self) -> None:
        if self.task_type is not None and self.task_type not in TASK_TYPES:
            raise ValueError(f"unknown task type {self.task_type!r}")
        native = native_dimension(self.model)
        if native is None and self.output_dimensionality is None:
            raise ValueError(
                f"the native size of {self.model!r} is unknown; set output_dimensionality"
            )
        if self.output_dimensionality is not None and not (
            1 <= self.output_dimensionality <= (native or self.output_dimensionality)
        ):
            raise ValueError(f"{self.model} returns 1..{native} dimensions")

    @property
    def dimension(self) -> int:
        return int(self.output_dimensionality or native_dimension(self.model))  # type: ignore[arg-type]

    @property
    def renormalized(self) -> bool:
        """The API only normalizes native-size vectors; smaller ones we normalize."""
        return self.dimension != native_dimension(self.model)

    @property
    def model_id(self) -> str:
        return model_id(self.model)

    @functools.cached_property
    def prompt(self) -> PromptFormat | None:
        """gemini-embedding-2's task, written into each text (as online)."""
        return prompt_format(self.model, self.task_type)


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """One text to embed, under its key (the text's content hash)."""

    key: str
    text: str
    title: str | None = None


@dataclass(frozen=True)
class LineError:
    """A request the service (or our checks) answered without a usable vector."""

    key: str
    message: str
    code: int | None = None  # google.rpc.Code when the service sent one
    retryable: bool = True


@dataclass(frozen=True)
class RequestFile:
    """One input file: its JSONL bytes and the keys it holds, in order."""

    keys: tuple[str, ...]
    data: bytes


def request_key(text: str, title: str | None, spec: BatchSpec) -> str:
    """The key of a text: its content hash, or of title and text when the title
    is sent (RETRIEVAL_DOCUMENT), since the title changes the vector."""
    if title and spec.task_type == "RETRIEVAL_DOCUMENT":
        return content_hash(f"{title}\x00{text}")
    return content_hash(text)


def request_line(request: BatchRequest, spec: BatchSpec) -> str:
    """One JSONL line. Titles go only with RETRIEVAL_DOCUMENT, as online; a
    model that takes its task in the text (gemini-embedding-2) gets the text
    with its prompt and neither task type nor title, as online."""
    prompt = spec.prompt
    text = request.text if prompt is None else prompt.apply(request.text, request.title)
    body: dict[str, object] = {"content": {"parts": [{"text": text}]}}
    if prompt is None and spec.task_type:
        body["taskType"] = spec.task_type
    if prompt is None and request.title and spec.task_type == "RETRIEVAL_DOCUMENT":
        body["title"] = request.title
    if spec.output_dimensionality is not None:
        body["outputDimensionality"] = spec.output_dimensionality
    return json.dumps({"key": request.key, "request": body}, ensure_ascii=False)


def spooled_request_files(
    requests: Iterable[BatchRequest],
    spec: BatchSpec,
    max_requests: int = MAX_REQUESTS_PER_FILE,
    max_bytes: int = MAX_FILE_BYTES,
) -> Iterator[tuple[tuple[str, ...], BinaryIO]]:
    """The requests as input files of at most ``max_requests`` lines and
    ``max_bytes`` bytes each, written to temporary files on disk (an input file
    may be 100 MB): each file's keys and the file, read from its start and
    closed (removed) when the next is made. A key seen before is not sent again."""
    if max_requests < 1 or max_bytes < 1:
        raise ValueError("max_requests and max_bytes must be positive")
    keys: list[str] = []
    spool = tempfile.TemporaryFile(prefix="beamvec-requests-")  # noqa: SIM115 - closed below
    size = 0
    seen: set[str] = set()
    try:
        for request in requests:
            if request.key in seen:
                continue
            seen.add(request.key)
            line = (request_line(request, spec) + "\n").encode("utf-8", "surrogatepass")
            if keys and (len(keys) >= max_requests or size + len(line) > max_bytes):
                spool.seek(0)
                yield tuple(keys), spool
                spool.close()
                keys, size = [], 0
                spool = tempfile.TemporaryFile(prefix="beamvec-requests-")  # noqa: SIM115
            keys.append(request.key)
            spool.write(line)
            size += len(line)
        if keys:
            spool.seek(0)
            yield tuple(keys), spool
    finally:
        spool.close()


def request_files(
    requests: Iterable[BatchRequest],
    spec: BatchSpec,
    max_requests: int = MAX_REQUESTS_PER_FILE,
    max_bytes: int = MAX_FILE_BYTES,
) -> list[RequestFile]:
    """``spooled_request_files`` held in memory: for small runs and tests."""
    return [
        RequestFile(keys, spool.read())
        for keys, spool in spooled_request_files(requests, spec, max_requests, max_bytes)
    ]


def iter_results(
    lines: Iterable[str | bytes], spec: BatchSpec
) -> Iterator[tuple[str, np.ndarray | LineError]]:
    """Each readable line's key and its vector or error, as the lines come: a
    result file is read from a stream, never held (3,072 dims: ~60 KB a line)."""
    for raw in lines:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError:
            continue  # a line we cannot read names no key; its key is reported missing
        key = obj.get("key") if isinstance(obj, dict) else None
        if isinstance(key, str):
            yield key, _parse_line(key, obj, spec)


def parse_results(
    lines: Iterable[str | bytes], spec: BatchSpec, expected: Sequence[str] | None = None
) -> dict[str, np.ndarray | LineError]:
    """Vectors (float32, checked, normalized below native size) or errors by key.

    With ``expected``, a key the file does not answer becomes a retryable
    LineError, and keys the job never held are ignored."""
    wanted = set(expected) if expected is not None else None
    out: dict[str, np.ndarray | LineError] = {}
    for key, result in iter_results(lines, spec):
        if wanted is not None and key not in wanted:
            continue
        if key in out and not isinstance(out[key], LineError):
            continue  # a repeated answer: keep the first good one
        out[key] = result
    for key in expected or ():
        if key not in out:
            out[key] = missing_line(key)
    return out


def missing_line(key: str) -> LineError:
    return LineError(key, "the result file has no line for this request")


def _parse_line(key: str, obj: dict, spec: BatchSpec) -> np.ndarray | LineError:
    error = obj.get("error")
    if error is not None:
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else str(error)
        code = code if isinstance(code, int) else None
        return LineError(
            key, str(message or "error without a message"), code, code not in _PERMANENT_CODES
        )
    values = ((obj.get("response") or {}).get("embedding") or {}).get("values")
    if not isinstance(values, list):
        return LineError(key, "malformed result line: no embedding values")
    if len(values) != spec.dimension:
        return LineError(
            key, f"malformed result line: {len(values)} values, expected {spec.dimension}"
        )
    try:
        vec = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        return LineError(key, "malformed result line: non-numeric values")
    if not np.isfinite(vec).all():
        return LineError(key, "malformed result line: non-finite values")
    if not np.abs(vec).max() > 0:
        return LineError(key, "malformed result line: an all-zero vector")
    return l2_normalize(vec[None, :])[0] if spec.renormalized else vec
