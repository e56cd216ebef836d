"""The vectors the emulator returns, reproducible by tests.

``hash`` vectors: for each (model, task type, title, text) a native-size unit
vector drawn from a generator seeded with sha256 of those fields; a model that
takes no task type (gemini-embedding-2: the task goes in the text) ignores the
task type and the title, so its vector depends on the text alone. A smaller
``output_dimensionality`` returns the PREFIX of that vector, not normalized,
as the real API does for Matryoshka outputs (the backend normalizes).

``local`` vectors: the MiniLM ONNX model (local_model.py; 384-d, unit length), padded
with zeros to the model's native size, so cosine similarity is the local
model's for any output size of 384 or more. Semantic search demos work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from beamvec.emulator.local_model import MiniLM
from beamvec.emulator.models import lookup, model_id


def native_dimension(model: str) -> int | None:
    spec = lookup(model)
    return spec.dimension if spec else None


def effective(model: str, task_type: str | None, title: str | None) -> tuple[str | None, str | None]:
    """The task type and title that shape a model's vectors: none for a model
    that takes no task type, and TASK_TYPE_UNSPECIFIED is no task type."""
    spec = lookup(model)
    if spec is not None and not spec.honours_task_type:
        return None, None
    return (None if task_type == "TASK_TYPE_UNSPECIFIED" else task_type), title


def _seed(model: str, task_type: str | None, title: str | None, text: str) -> int:
    task_type, title = effective(model, task_type, title)
    spec = lookup(model)
    fields = [spec.name if spec else model_id(model), task_type or ""]
    if title:
        fields.append(title)
    fields.append(text)
    digest = hashlib.sha256("|".join(fields).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "little")


def full_vector(
    model: str, task_type: str | None, text: str, title: str | None = None
) -> np.ndarray:
    """The native-size unit vector of a text (float32)."""
    native = native_dimension(model)
    if native is None:
        raise ValueError(f"unknown model {model!r}")
    rng = np.random.default_rng(_seed(model, task_type, title, text))
    vec = rng.standard_normal(native, dtype=np.float32).astype(np.float64)
    return (vec / np.linalg.norm(vec)).astype(np.float32)


def expected_vector(
    model: str, task_type: str | None, dimension: int, text: str, title: str | None = None
) -> np.ndarray:
    """What the emulator (hash mode) returns for ``text``: the first
    ``dimension`` values of the native unit vector, not renormalized."""
    return full_vector(model, task_type, text, title)[:dimension].copy()


@dataclass(frozen=True)
class Item:
    """One text to embed, with what shapes its vector."""

    text: str
    task_type: str | None = None
    title: str | None = None


class HashVectors:
    """Deterministic pseudo-random vectors; no model, no cost."""

    def native(self, model: str, items: Sequence[Item]) -> np.ndarray:
        native = native_dimension(model)
        out = np.empty((len(items), native or 0), dtype=np.float32)
        for row, item in enumerate(items):
            out[row] = full_vector(model, item.task_type, item.text, item.title)
        return out


class LocalVectors:
    """The MiniLM ONNX model, loaded on first use."""

    def __init__(self) -> None:
        self._model = MiniLM()

    def native(self, model: str, items: Sequence[Item]) -> np.ndarray:
        native = native_dimension(model) or 0
        titles = [effective(model, i.task_type, i.title)[1] for i in items]
        texts = [f"{t}\n{i.text}" if t else i.text for i, t in zip(items, titles, strict=True)]
        local = np.asarray(self._model.embed(texts), dtype=np.float32)
        out = np.zeros((len(items), max(native, local.shape[1])), dtype=np.float32)
        out[:, : local.shape[1]] = local
        return out[:, :native] if native else out


def make_vectors(mode: str) -> HashVectors | LocalVectors:
    if mode == "hash":
        return HashVectors()
    if mode == "local":
        return LocalVectors()
    raise ValueError(f"vectors must be 'hash' or 'local', not {mode!r}")
