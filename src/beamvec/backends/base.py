"""The one interface every embedding backend implements.

In the spirit of Beam's ``ModelHandler``: a backend states its limits and
embeds a list of texts. Batching, quota, retry and dead letters live outside.
A backend object is cheap to build and to pickle; ``load()`` creates the
heavy parts (sessions, clients) on the worker, and they are never pickled.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from beamvec.backends import tokens
from beamvec.errors import SystemicError as SystemicError  # re-exported: backends raise it


class SendGate(Protocol):
    """What a backend calls around each request it sends (the embedder's pacing)."""

    def __call__(self) -> None:
        """Right before the request leaves: wait for its slot."""

    def left(self, at: float) -> None:
        """The request's last byte was written at ``at`` (``time.monotonic``):
        a request that left late pushes the ones after it back."""

#: What a preflight embeds when the run gives it no text of its own.
PREFLIGHT_TEXT = "beamvec preflight"

#: Task types the embedding APIs document, in their order.
TASK_TYPES = (
    "SEMANTIC_SIMILARITY",
    "CLASSIFICATION",
    "CLUSTERING",
    "RETRIEVAL_DOCUMENT",
    "RETRIEVAL_QUERY",
    "QUESTION_ANSWERING",
    "FACT_VERIFICATION",
    "CODE_RETRIEVAL_QUERY",
)


@dataclass(frozen=True)
class Limits:
    """What one request and one text may hold."""

    max_items: int  # texts per request
    max_request_tokens: int  # estimated tokens per request
    max_text_tokens: int  # tokens per text; longer texts are truncated or dead-lettered
    dimension: int  # length of the returned vectors


class Backend(ABC):
    """Embeds texts. Subclasses set ``name`` and implement the abstract methods."""

    name: str = "base"
    #: When the last preflight request was written (wall clock; None: not known).
    preflight_sent_at: float | None = None

    @property
    @abstractmethod
    def limits(self) -> Limits: ...

    @property
    @abstractmethod
    def model(self) -> str: ...

    @property
    def task_type(self) -> str | None:
        return None

    @property
    def normalized(self) -> bool:
        """Whether returned vectors have unit L2 norm."""
        return True

    def load(self) -> None:  # noqa: B027 - optional hook
        """Create sessions or clients. Called once per worker, in DoFn.setup."""

    def preflight(self, text: str | None = None, title: str | None = None) -> np.ndarray | None:
        """Check credentials, model and dimension before any quota is spent,
        by embedding ``text`` (a text the run needs, so that its vector is
        kept and nothing extra is billed) or a probe text when None.

        Returns the vector of ``text`` as ``embed`` would (None only when the
        backend refused that text itself; the run then sends it as usual).
        Raises SystemicError with one clear line."""
        self.load()
        vectors = self.embed([text or PREFLIGHT_TEXT], None if title is None else [title])
        return check_preflight_vector(self, vectors)

    def count_tokens(self, text: str) -> int:
        """The tokens the model will count for ``text``: exact where the backend
        has the tokenizer, else an unbiased estimate (``tokens.estimate``), since
        pacing and plans add these up and must not drift high or low."""
        return tokens.estimate(text, self.model)

    def server_tokens(self) -> int | None:
        """The tokens the service counted for this thread's last ``embed``,
        where it says (None: it does not, or the backend is local)."""
        return None

    def truncate(self, text: str, max_tokens: int) -> str:
        """``text`` itself when it fits ``max_tokens``, else its longest prefix
        that surely does (``tokens.cut``: by the safe upper bound, so the API
        never refuses it as too long). Prepare calls a text too long exactly
        when this returns something shorter."""
        return tokens.cut(text, max_tokens, self.model)

    @abstractmethod
    def embed(self, texts: Sequence[str], titles: Sequence[str | None] | None = None) -> np.ndarray:
        """One float32 row per text, in order. Raises BackendError."""

    def embed_paced(
        self, texts: Sequence[str], titles: Sequence[str | None] | None, gate: SendGate
    ) -> np.ndarray:
        """``embed``, calling ``gate()`` before each request it sends.

        Pacing is only as even as the moment requests leave: a network backend
        overrides this to call the gate after its client has built the request,
        so that the client's own work (and the threads it waits for) does not
        shift the send times the limiter spaced, and to report when each left.
        Here: once, before embedding, and the request leaves at once."""
        gate()
        gate.left(time.monotonic())
        return self.embed(texts, titles)

    def describe(self) -> dict[str, Any]:
        """What the Parquet footer and the manifest say about the vectors."""
        return {
            "backend": self.name,
            "model": self.model,
            "dimension": self.limits.dimension,
            "task_type": self.task_type,
            "normalized": self.normalized,
        }

    def __getstate__(self) -> dict[str, Any]:
        # Sessions and clients never cross to workers; load() rebuilds them.
        state = self.__dict__.copy()
        for key in getattr(self, "_unpicklable", ()):
            state[key] = None
        return state


def check_preflight_vector(backend: Backend, vectors: np.ndarray) -> np.ndarray:
    """The one row of a preflight answer, or SystemicError when it has the
    wrong size or is not finite."""
    dimension = backend.limits.dimension
    if vectors.ndim != 2 or vectors.shape != (1, dimension):
        raise SystemicError(
            f"{backend.name}: model {backend.model} returned vectors of shape "
            f"{tuple(vectors.shape)}, expected (1, {dimension})"
        )
    if not np.isfinite(vectors).all():
        raise SystemicError(f"{backend.name}: model {backend.model} returned non-finite values")
    return vectors[0]


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)
