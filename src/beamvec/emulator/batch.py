"""The Gemini API Batch mode for embeddings, served as google-genai 3.x calls it.

What was verified, and how:

* The SDK source (google-genai 3.6.1 in the venv): ``files.py`` (``upload``,
  ``download``, ``delete``, ``list``), ``_api_client.py`` (``_upload_fd``,
  ``download_file``), ``batches.py`` (``create_embeddings``, ``get``,
  ``cancel``, ``delete``, ``list`` and their ``_to_mldev``/``_from_mldev``
  converters) and ``_transformers.py`` (``t_job_state``,
  ``t_recv_batch_job_destination``, ``t_batch_job_name``). Every route below is
  exercised through the real SDK by tests/emulator/test_emulator_batch.py.
* The JSONL line formats, from Google's launch post for batch embeddings
  (input ``{"key": "request_1", "request": {"output_dimensionality": 512,
  "content": {"parts": [{"text": ...}]}}}``; the request is an
  ``EmbedContentRequest``, whose JSON takes snake_case or lowerCamelCase field
  names) and from public clients that parse real result files (one line per
  request: ``{"key": ..., "response": {"embedding": {"values": [...]}}}`` or
  ``{"key": ..., "error": {"code": ..., "message": ...}}``, a google.rpc.Status).
  The SDK's docstring says result lines follow the input order; the service
  promises no order, so the emulator shuffles them by default.

The protocol (``{v}`` is v1, v1beta or v1alpha):

``POST /upload/{v}/files`` with ``X-Goog-Upload-Protocol: resumable``,
    ``X-Goog-Upload-Command: start`` and ``X-Goog-Upload-Header-Content-Length``;
    body ``{"file": {...}}`` -> 200 with an ``X-Goog-Upload-URL`` header (the SDK
    keeps its path and query and swaps in its base_url's host).
``POST <upload url>`` with ``X-Goog-Upload-Command: upload`` or ``upload, finalize``
    and ``X-Goog-Upload-Offset`` -> ``X-Goog-Upload-Status: active | final``; the
    final answer's body is ``{"file": File}``.
``GET|DELETE /{v}/files/{id}``, ``GET /{v}/files`` -> ``{"files", "nextPageToken"}``,
    ``GET /{v}/files/{id}:download?alt=media`` -> the bytes (generated files only).
``POST /{v}/models/{m}:asyncBatchEmbedContent`` ``{"batch": {"displayName",
    "inputConfig": {"file_name": "files/x"} | {"requests": {"requests":
    [{"request": EmbedContentRequest, "metadata"}]}}}}`` -> an Operation
    ``{"name": "batches/id", "metadata": EmbedContentBatch}`` whose ``state`` is
    ``BATCH_STATE_PENDING|RUNNING|SUCCEEDED|FAILED|CANCELLED|EXPIRED`` and whose
    ``output`` is ``{"responsesFile": "files/..."}`` or ``{"inlinedResponses":
    {"inlinedResponses": [...]}}`` (in input order; the SDK renames it).
``GET /{v}/batches/{id}``, ``POST /{v}/batches/{id}:cancel``,
    ``DELETE /{v}/batches/{id}``, ``GET /{v}/batches`` -> ``{"operations"}``.

Files (uploads, stored and result files) are kept by ``batch_files``; jobs here.
A job is PENDING for its first third of ``batch_job_s``, RUNNING until the end,
then terminal; states advance when a job is looked at. Its outcome (FAILED for
the first ``batch_fail_first`` jobs, then by rate) and its failing lines are
drawn from a generator seeded by (seed, job number), so a run replays.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import numpy as np

from beamvec.emulator import protocol
from beamvec.emulator.batch_files import FileStore
from beamvec.emulator.batch_shapes import (
    STATES,
    TERMINAL,
    Answer,
    Job,
    error_answer,
    file_lines,
    json_answer,
    not_found,
    operation,
    parse_line,
    pick,
)
from beamvec.emulator.config import EmulatorConfig
from beamvec.emulator.limits import text_token_limit
from beamvec.emulator.stats import content_hash
from beamvec.emulator.tokens import count_tokens
from beamvec.emulator.vectors import Item

_V = r"(v1|v1beta|v1alpha)"
_UPLOAD = re.compile(rf"^/upload/{_V}/files$")
_FILES = re.compile(rf"^/{_V}/files$")
_FILE = re.compile(rf"^/{_V}/files/([a-z0-9-]+)(:download)?$")
_CREATE = re.compile(rf"^/{_V}/models/([^/:]+):asyncBatchEmbedContent$")
_BATCHES = re.compile(rf"^/{_V}/batches$")
_BATCH = re.compile(rf"^/{_V}/batches/([a-z0-9-]+)(:cancel)?$")
_LINE_INTERNAL = {"code": 13, "message": "Internal error encountered."}


class VectorSource(Protocol):
    def native(self, model: str, items: Sequence[Item]) -> np.ndarray: ...


class BatchService:
    """Jobs, files and upload sessions, behind one lock."""

    def __init__(self, vectors: Callable[[], VectorSource]) -> None:
        self._vectors = vectors
        self._lock = threading.Lock()
        self.files = FileStore()
        self._jobs: dict[str, Job] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the counters (jobs and files stay)."""
        with self._lock:
            self._created = 0
            self._rejected = 0
            self._missing_file = 0
            self.files.reset()
            self._lines_failed = 0
            self._tokens = 0
            self._billed: Counter[str] = Counter()
            self._submitted: Counter[str] = Counter()

    # -- dispatch ------------------------------------------------------------

    def handle(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes,
        config: EmulatorConfig,
    ) -> Answer | None:
        """The answer to a Batch API or Files API call, or None for other paths."""
        url = urlsplit(target)
        path, query = url.path, parse_qs(url.query)
        try:
            if method == "POST" and _UPLOAD.match(path):
                if "upload_id" in query:
                    with self._lock:
                        self.files.tick(config.batch_file_ttl_s, config.batch_clock_s)
                        return self.files.upload_chunk(query["upload_id"][0], headers, body)
                self._authorize(headers, query, config)
                with self._lock:
                    return self.files.upload_start(path, headers, body)
            routes = (_FILES, _FILE, _CREATE, _BATCHES, _BATCH)
            match = next((m for m in (r.match(path) for r in routes) if m), None)
            if match is None:
                return None
            self._authorize(headers, query, config)
            with self._lock:
                return self._route(method, match, query, body, config)
        except protocol.ApiError as exc:
            return error_answer(exc)

    def _route(
        self,
        method: str,
        m: re.Match[str],
        query: dict[str, list[str]],
        body: bytes,
        config: EmulatorConfig,
    ) -> Answer:
        self.files.tick(config.batch_file_ttl_s, config.batch_clock_s)
        now = time.monotonic()
        for job in self._jobs.values():
            self._advance(job, now, config)
        pattern = m.re
        if pattern is _FILES and method == "GET":
            return self._page(query, "files", self.files.resources())
        if pattern is _FILE:
            return self.files.answer(method, f"files/{m.group(2)}", bool(m.group(3)))
        if pattern is _CREATE and method == "POST":
            return self._create(m.group(2), body, config)
        if pattern is _BATCHES and method == "GET":
            live = [operation(j) for j in self._jobs.values() if not j.deleted]
            return self._page(query, "operations", live)
        if pattern is _BATCH:
            return self._batch(method, f"batches/{m.group(2)}", bool(m.group(3)))
        raise protocol.ApiError(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed here.")

    @staticmethod
    def _authorize(
        headers: Mapping[str, str], query: dict[str, list[str]], config: EmulatorConfig
    ) -> None:
        if config.api_key is None:
            return
        key = headers.get("x-goog-api-key") or query.get("key", [None])[0]
        if not key:
            raise protocol.missing_key("gemini")
        if key != config.api_key:
            raise protocol.bad_key("gemini")

    @staticmethod
    def _page(query: dict[str, list[str]], name: str, items: list[dict[str, Any]]) -> Answer:
        size = int(query.get("pageSize", ["50"])[0] or 50)
        start = int(query.get("pageToken", ["0"])[0] or 0)
        out: dict[str, Any] = {name: items[start : start + size]}
        if start + size < len(items):
            out["nextPageToken"] = str(start + size)
        return json_answer(200, out)

    # -- jobs ----------------------------------------------------------------

    def _create(self, model: str, raw: bytes, config: EmulatorConfig) -> Answer:
        spec = protocol.find_model(
            protocol.Route("gemini", "v1beta", model, "asyncBatchEmbedContent")
        )
        native, limit = spec.dimension, text_token_limit(spec, config)
        try:
            batch = (json.loads(raw or b"null") or {}).get("batch") or {}
            source = batch.get("inputConfig") or batch.get("input_config") or {}
        except (ValueError, AttributeError):
            raise protocol.invalid("Invalid JSON payload received.") from None
        file_name = pick(source, "fileName", "file_name")
        inlined = source.get("requests")
        if (file_name is None) == (inlined is None):
            raise protocol.invalid("* batch.input_config: exactly one of file_name and requests.")
        failure = None
        if file_name is not None:
            file = self.files.get(file_name)
            if file is None:  # never uploaded, deleted, or expired (48 h)
                self._missing_file += 1
                raise not_found(f"File {file_name}")
            lines, failure = file_lines(file.data, native, config, limit)
        else:
            raw_lines = inlined.get("requests") if isinstance(inlined, dict) else None
            if not isinstance(raw_lines, list) or not raw_lines:
                raise protocol.invalid("* batch.input_config.requests: requests must not be empty")
            lines = [
                parse_line(r.get("request"), r.get("metadata"), native, config, limit)
                for r in raw_lines
            ]
        active = sum(1 for j in self._jobs.values() if j.state not in TERMINAL)
        if config.batch_max_concurrent is not None and active >= config.batch_max_concurrent:
            self._rejected += 1
            raise protocol.ApiError(
                429,
                "RESOURCE_EXHAUSTED",
                f"You have reached the limit of {config.batch_max_concurrent} concurrent batch "
                "jobs. Please wait for a job to finish and retry.",
            )
        self._created += 1
        serial = self._created
        rng = random.Random(f"{config.seed}:{serial}:outcome")
        u = rng.random()
        if failure is None and serial <= config.batch_fail_first:
            failure = "The batch failed (injected: one of the first jobs)."
        elif failure is None and u < config.batch_fail_rate:
            failure = "The batch failed (injected failure)."
        outcome = "FAILED" if failure else "SUCCEEDED"
        if not failure and u < config.batch_fail_rate + config.batch_expire_rate:
            outcome = "EXPIRED"
        name = f"batches/{secrets.token_hex(8)}"
        job = Job(
            name,
            serial,
            model,
            str(batch.get("displayName") or name),
            {"fileName": file_name} if file_name else {"requests": {"count": len(lines)}},
            lines,
            file_name is None,
            outcome,
            failure,
            time.time(),
            time.monotonic(),
        )
        self._jobs[name] = job
        self._submitted.update(content_hash(line.text) for line in lines if line.error is None)
        return json_answer(200, operation(job))

    def _batch(self, method: str, name: str, cancel: bool) -> Answer:
        job = self._jobs.get(name)
        if job is None or job.deleted:
            raise not_found(f"Batch {name}")
        if method == "GET" and not cancel:
            return json_answer(200, operation(job))
        if method == "POST" and cancel or method == "DELETE" and not cancel:
            if job.state not in TERMINAL:
                job.state, job.ended, job.lines = "CANCELLED", time.time(), []
            if method == "DELETE":
                job.deleted, job.lines, job.output = True, [], None
            return json_answer(200, {})
        raise protocol.ApiError(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed here.")

    def _advance(self, job: Job, now: float, config: EmulatorConfig) -> None:
        if job.state in TERMINAL:
            return
        elapsed = now - job.created_mono
        if elapsed < config.batch_job_s:
            job.state = "RUNNING" if elapsed >= config.batch_job_s / 3 else "PENDING"
            return
        job.ended = time.time()
        job.state = job.outcome
        if job.outcome == "SUCCEEDED":
            self._finish(job, config)
        job.lines = []

    def _finish(self, job: Job, config: EmulatorConfig) -> None:
        """Embed every line, draw line errors, bill, and write the output."""
        rng = random.Random(f"{config.seed}:{job.serial}:lines")
        errors: list[dict[str, Any] | None] = [
            line.error or (_LINE_INTERNAL if rng.random() < config.batch_line_error_rate else None)
            for line in job.lines
        ]
        good = [i for i, e in enumerate(errors) if e is None]
        items = [Item(job.lines[i].text, job.lines[i].task_type, job.lines[i].title) for i in good]
        full = self._vectors().native(job.model, items) if items else None
        values: dict[int, str] = {}
        for row, i in enumerate(good):
            line = job.lines[i]
            vec = full[row, : line.dimension or full.shape[1]]  # type: ignore[index]
            values[i] = "[" + ",".join(["%.9g" % x for x in vec.tolist()]) + "]"  # noqa: UP031
            self._billed[content_hash(line.text)] += 1
            self._tokens += count_tokens(line.text)
        job.ok, job.failed = len(good), len(errors) - len(good)
        self._lines_failed += job.failed
        order = list(range(len(job.lines)))
        if config.batch_shuffle and not job.inlined:
            rng.shuffle(order)
        rendered = []
        for i in order:
            head = {"key": job.lines[i].key} if not job.inlined else {}
            if job.inlined and job.lines[i].key is not None:
                head = {"metadata": job.lines[i].key}
            if errors[i] is not None:
                rendered.append(json.dumps({**head, "error": errors[i]}, separators=(",", ":")))
            else:
                prefix = json.dumps(head, separators=(",", ":"))[:-1]
                sep = "," if head else ""
                rendered.append(
                    f'{prefix}{sep}"response":{{"embedding":{{"values":{values[i]}}}}}}}'
                )
        if job.inlined:
            body = "[" + ",".join(rendered) + "]"
            job.output = {"inlinedResponses": {"inlinedResponses": json.loads(body)}}
            return
        name = f"files/batch-{job.name.split('/')[1]}"
        self.files.add_result(name, ("\n".join(rendered) + "\n").encode())
        job.output = {"responsesFile": name}

    # -- stats ---------------------------------------------------------------

    def snapshot(self, config: EmulatorConfig, with_texts: bool = True) -> dict[str, Any]:
        with self._lock:
            self.files.tick(config.batch_file_ttl_s, config.batch_clock_s)
            now = time.monotonic()
            for job in self._jobs.values():
                self._advance(job, now, config)
            states = Counter(j.state for j in self._jobs.values())
            counts = self._billed
            out: dict[str, Any] = {
                "jobs": {
                    "created": self._created,
                    "by_state": {s: states[s] for s in STATES if states[s]},
                    "active": states["PENDING"] + states["RUNNING"],
                    "rejected_concurrency": self._rejected,
                    "rejected_missing_file": self._missing_file,
                    "deleted": sum(1 for j in self._jobs.values() if j.deleted),
                },
                "files": self.files.stats(),
                "texts_billed": sum(counts.values()),
                "tokens_billed": self._tokens,
                "lines_failed": self._lines_failed,
                "texts": {
                    "distinct": len(counts),
                    "max_count": max(counts.values(), default=0),
                    "billed_more_than_once": sum(1 for c in counts.values() if c > 1),
                    "submitted": sum(self._submitted.values()),
                    "submitted_more_than_once": sum(1 for c in self._submitted.values() if c > 1),
                },
            }
            if with_texts:
                out["text_counts"] = dict(counts)
            return out
