"""What an ``embed_content`` answer is worth: its rows, or why it cannot be trusted.

A 200 is not proof of vectors: too few embeddings, a wrong size, NaNs or an
all-zero row would be written misaligned or meaningless, so each is a
transient ``malformed`` error (asked again, never written). Where the
answer carries the server's token counts (Vertex ``:predict``:
``statistics.token_count`` per instance) they are read here too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from beamvec.backends.google_errors import malformed


def checked_rows(embeddings: list[Any], expected: int, dimension: int, label: str) -> np.ndarray:
    """The ``expected`` rows of ``dimension`` floats of a response, or a
    transient BackendError saying what is wrong with it."""
    if len(embeddings) != expected:
        raise malformed(label, f"{len(embeddings)} embeddings for {expected} texts")
    rows = []
    for i, emb in enumerate(embeddings):
        values = getattr(emb, "values", None)
        if values is None or len(values) != dimension:
            got = "no values" if values is None else f"{len(values)} values"
            raise malformed(label, f"embedding {i} has {got}, expected {dimension}")
        rows.append(values)
    try:
        arr = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError):
        raise malformed(label, "non-numeric values") from None
    if not np.isfinite(arr).all():
        raise malformed(label, "non-finite values")
    if (np.abs(arr).max(axis=1) == 0).any():
        raise malformed(label, "an all-zero vector")
    return arr


def row_size(embeddings: list[Any]) -> int | None:
    """The size of the one embedding of a one-text answer (None: not one, or no values)."""
    values = getattr(embeddings[0], "values", None) if len(embeddings) == 1 else None
    return None if values is None else len(values)


def server_token_counts(embeddings: list[Any]) -> list[int | None]:
    """The server's count per embedding (``statistics.token_count``), None where absent."""
    return [getattr(getattr(e, "statistics", None), "token_count", None) for e in embeddings]
