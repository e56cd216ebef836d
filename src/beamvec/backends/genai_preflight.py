"""The preflight call of a Google backend, and the one line that says what is wrong.

Before any quota is spent, one text is embedded with the run's retry
machinery: a malformed answer or a transient fault is asked again; only a
wrong dimension on every attempt is blamed on the model. A refusal becomes a
``SystemicError`` naming what to check (credentials, ``--model``,
``--output-dimensionality``, ``--api-base-url``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from beamvec.backends.base import PREFLIGHT_TEXT, l2_normalize
from beamvec.backends.genai_response import checked_rows, row_size
from beamvec.backends.prompts import PromptFormat
from beamvec.errors import BackendError, ErrorKind, SystemicError
from beamvec.retry import RetriesExhausted, RetryPolicy


class PreflightBackend(Protocol):
    """What the preflight reads of ``genai.GenaiBackend``."""

    PREFLIGHT_ATTEMPTS: int
    PREFLIGHT_MAX_WAIT_S: float
    mode: str
    timeout_s: float
    output_dimensionality: int | None
    vertex_auth: str
    project: str | None
    api_key_env: Sequence[str]
    preflight_sent_at: float | None

    @property
    def model(self) -> str: ...
    @property
    def task_type(self) -> str | None: ...
    @property
    def dimension(self) -> int: ...
    @property
    def renormalized(self) -> bool: ...
    @property
    def prompt(self) -> PromptFormat | None: ...
    def load(self) -> None: ...
    def send(self, texts: list[str], title: str | None) -> list[Any]: ...
    def preflight(self, text: str | None = None, title: str | None = None) -> np.ndarray | None: ...


class SentClock:
    """The preflight's send gate: it waits for nothing, and notes (wall clock)
    when the request's last byte was written. That, not when the call began,
    is when the server's window takes it in: building the client and the
    request took 0.4 to 0.65 s before it in real runs, and a window measured
    from the earlier time read 0.9 of a sliding window's limit (meter.py)."""

    def __init__(self, backend: PreflightBackend) -> None:
        self.backend = backend

    def __call__(self) -> None:
        """Nothing to wait for."""

    def left(self, at: float) -> None:
        self.backend.preflight_sent_at = time.time() - (time.monotonic() - at)


def preflight(backend: PreflightBackend, text: str | None, title: str | None) -> np.ndarray | None:
    """``backend.preflight``: the vector of ``text`` (or of a probe text), or
    None when the API refused ``text`` itself as bad input (a probe then decides)."""
    backend.load()
    dims: list[int | None] = []
    attempts, max_wait = backend.PREFLIGHT_ATTEMPTS, backend.PREFLIGHT_MAX_WAIT_S
    policy = RetryPolicy(
        max_attempts=attempts,
        base_delay=0.5,
        max_delay=max_wait,
        deadline=max(max_wait, backend.timeout_s) * attempts,
    )
    try:
        return policy.call(_once, backend, text or PREFLIGHT_TEXT, title, dims)
    except RetriesExhausted as exc:
        raise _unanswered(backend, exc, dims) from None
    except BackendError as exc:
        if exc.kind is ErrorKind.BAD_INPUT and text:
            backend.preflight(None)  # the text was refused, not the call: a probe decides
            return None
        raise refused(backend, exc) from None


def _once(backend: PreflightBackend, text: str, title: str | None, dims: list[int | None]) -> np.ndarray:
    """One attempt; notes the dimension it got (None: the right one), for the verdict."""
    send_title = title if backend.task_type == "RETRIEVAL_DOCUMENT" else None
    prompt = backend.prompt
    if prompt is not None:
        text, send_title = prompt.apply(text, send_title), None
    embeddings = backend.send([text], send_title)
    got = row_size(embeddings)
    dims.append(None if got == backend.dimension else got)
    row = checked_rows(embeddings, 1, backend.dimension, backend.mode)  # malformed: retried
    return (l2_normalize(row) if backend.renormalized else row)[0]


def _unanswered(backend: PreflightBackend, exc: RetriesExhausted, dims: list[int | None]) -> SystemicError:
    """Retries ran out: the model's fault when every answer had one wrong size."""
    if len(dims) == exc.attempts and len(set(dims)) == 1 and None not in dims:
        return SystemicError(
            f"{backend.mode}: model {backend.model} returned {dims[0]}-dim vectors on "
            f"{exc.attempts} attempts, expected {backend.dimension} "
            f"(output_dimensionality={backend.output_dimensionality}); check --model and "
            "--output-dimensionality"
        )
    return SystemicError(
        f"{backend.mode}: the API did not answer the preflight call after "
        f"{exc.attempts} attempts: {exc.last_exception}; check --api-base-url and the "
        "service status, then rerun"
    )


def refused(backend: PreflightBackend, exc: BackendError) -> SystemicError:
    """A refused preflight as one line naming what to check."""
    mode, code = backend.mode, exc.status
    detail = str(exc).removeprefix(f"{mode}: ")
    if code in (401, 403):
        if mode == "vertex" and backend.vertex_auth != "api_key":
            hint = (
                "check Application Default Credentials (gcloud auth application-default "
                f"login), the project ({backend.project or 'from the environment'}) and that "
                "the Vertex AI API is enabled"
            )
            return SystemicError(f"vertex: the credentials were rejected ({detail}) — {hint}")
        return SystemicError(
            f"{mode}: the API key was rejected ({detail}) — check "
            f"{' / '.join(backend.api_key_env)} or --api-key-file"
        )
    if code == 404:
        return SystemicError(f"{mode}: model {backend.model!r} was not found ({detail}) — check --model")
    return SystemicError(f"{mode}: the preflight call failed: {detail}")
