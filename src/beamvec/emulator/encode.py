"""Vectors into JSON fast, and the malformed 200s a careless client would trust."""

from __future__ import annotations

import math
import re

# render() bodies hold no texts, only numbers, so this marker cannot collide.
_PLACEHOLDER = re.compile(r'"__beamvec_vector_(\d+)__"')


def placeholders(count: int) -> list[str]:
    return [f"__beamvec_vector_{i}__" for i in range(count)]


def _numbers(values: list[float]) -> str:
    """A JSON array with 9 significant digits: exact for float32, as the real API
    sends them, and about twice as fast to write and to parse as ``repr``."""
    text = ",".join(["%.9g" % x for x in values])  # noqa: UP031 - fastest formatter here
    if "n" in text:  # nan or inf from a malformed answer: JSON's spellings
        text = text.replace("-inf", "-Infinity").replace("inf", "Infinity").replace("nan", "NaN")
    return "[" + text + "]"


def fill_vectors(text: str, vectors: list[list[float]]) -> str:
    """Put the value arrays where render() left placeholders, in one pass."""
    return _PLACEHOLDER.sub(lambda m: _numbers(vectors[int(m.group(1))]), text)


def corrupt(vectors: list[list[float]], kind: str) -> list[list[float]]:
    """A 200 body a careless client would trust."""
    if kind == "missing" or not vectors:
        return vectors[:-1]
    if kind == "dimension":
        return [vectors[0][:-1], *vectors[1:]]
    first = list(vectors[0])
    first[len(first) // 2] = math.nan
    return [first, *vectors[1:]]
