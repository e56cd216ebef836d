"""Embedding backends behind one interface (base.Backend); built by name."""

from __future__ import annotations

from typing import Any

from beamvec.backends.base import Backend, BackendError, Limits, SystemicError

BACKENDS = ("local", "gemini", "vertex")

__all__ = ["BACKENDS", "Backend", "BackendError", "Limits", "SystemicError", "make_backend"]


def make_backend(name: str, **config: Any) -> Backend:
    """A backend by name, not yet loaded (cheap to build and to pickle)."""
    if name == "local":
        from beamvec.backends.local import LocalBackend

        return LocalBackend(**config)
    if name in ("gemini", "vertex"):
        from beamvec.backends.genai import GenaiBackend

        return GenaiBackend(mode=name, **config)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
