"""The one interface every embedding backend implements.

In the spirit of Beam's ``ModelHandler``: a backend states its limits and
embeds a list of texts. Batching, quota, retry and dead letters live outside.
A backend object is cheap to build and to pickle; ``load()`` creates the
heavy parts (sessions, clients) on the worker, and they are never pickled.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from beamvec.errors import SystemicError

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


class BackendError(Exception):
    """An error from a backend call.

    ``retryable`` says whether the same request may succeed later;
    ``status`` is the HTTP-like status when there is one. Messages must never
    carry secrets.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields: rebuild through a helper so it survives pickling
        # (Beam ships worker errors back to the driver pickled).
        return (_rebuild_backend_error, (str(self), self.retryable, self.status, self.retry_after))


def _rebuild_backend_error(
    message: str, retryable: bool, status: int | None, retry_after: float | None
) -> BackendError:
    return BackendError(message, retryable=retryable, status=status, retry_after=retry_after)


class Backend(ABC):
    """Embeds texts. Subclasses set ``name`` and implement the abstract methods."""

    name: str = "base"

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

    def preflight(self) -> None:  # noqa: B027 - optional hook
        """Check credentials, model and dimension before any quota is spent.

        Raises SystemicError with one clear line."""

    def count_tokens(self, text: str) -> int:
        """Token count (or a safe over-estimate) of ``text``."""
        return estimate_tokens(text)

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` within ``max_tokens``."""
        return text[: max_tokens * CHARS_PER_TOKEN_LOW]

    @abstractmethod
    def embed(self, texts: Sequence[str], titles: Sequence[str | None] | None = None) -> np.ndarray:
        """One float32 row per text, in order. Raises BackendError."""

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


#: Conservative characters-per-token for estimates on APIs whose tokenizer we
#: do not have: 3 for truncation (so a cut text fits), 4 for cost estimates.
CHARS_PER_TOKEN_LOW = 3


def estimate_tokens(text: str) -> int:
    """A safe over-estimate of the tokens of ``text`` for API backends."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN_LOW))


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)
