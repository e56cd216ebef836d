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
