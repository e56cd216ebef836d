"""Embedding backends behind one interface (base.Backend); built by name."""

from __future__ import annotations

from typing import Any

from beamvec.backends.base import Backend, Limits
from beamvec.errors import BackendError, SystemicError, UsageError

BACKENDS = ("local", "gemini", "vertex")

__all__ = ["BACKENDS", "Backend", "BackendError", "Limits", "SystemicError", "make_backend"]


def make_backend(name: str, **config: Any) -> Backend:
    """A backend by name, not yet loaded (cheap to build and to pickle).

    A configuration the backend refuses (ValueError) is the user's to fix:
    UsageError. Backends are imported here, lazily, because each pulls in an
    optional heavy dependency (onnxruntime, google-genai)."""
    try:
        if name == "local":
            from beamvec.backends.local import LocalBackend

            return LocalBackend(**config)
        if name in ("gemini", "vertex"):
            from beamvec.backends.genai import GenaiBackend

            return GenaiBackend(mode=name, **config)
    except ValueError as exc:
        raise UsageError(f"--backend {name}: {exc}") from None
    raise UsageError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def backend_from_options(bv: Any, project: str | None = None, processes: int = 1) -> Backend:
    """The backend the flags (a BeamvecOptions view) ask for, not yet loaded;
    ``processes``: worker processes sharing this machine's cores."""
    if bv.backend == "local":
        if bv.model or bv.task_type or bv.output_dimensionality:
            raise UsageError(
                "--model, --task-type and --output-dimensionality apply to the gemini and "
                "vertex backends; the local backend takes --local-model-dir"
            )
        return make_backend(
            "local", model_dir=bv.local_model_dir, threads=bv.local_threads or None, processes=processes
        )
    config: dict[str, Any] = {
        "model": bv.model or "gemini-embedding-001",
        "task_type": bv.task_type,
        "output_dimensionality": bv.output_dimensionality,
        "api_key_file": bv.api_key_file,
        "api_key_secret": bv.api_key_secret,
        "api_base_url": bv.api_base_url,
        "api_version": bv.api_version,
        "timeout_s": bv.request_timeout,
    }
    if bv.backend == "vertex":
        if not project and bv.vertex_auth != "api_key":
            raise UsageError("--backend vertex needs --project (and --location)")
        config.update(project=project, location=bv.location, vertex_auth=bv.vertex_auth)
    return make_backend(bv.backend, **config)
