"""Prepare: turn what a reader found into a record ready to embed, or a dead letter.

Validation, light normalization, truncation, the content hash of the exact
text that is sent, and its token count. Pure functions; no Beam.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from beamvec import records as r
from beamvec.records import DeadLetter, RawRecord, ReadError, Record

NORMALIZATIONS = ("none", "strip", "nfc", "collapse")
LONG_TEXT_POLICIES = ("truncate", "dead-letter")

_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class PrepareConfig:
    normalization: str = "nfc"
    on_long_text: str = "truncate"
    max_text_tokens: int = 2048


def normalize(text: str, mode: str) -> str:
    """none: as read; strip: trim ends; nfc: Unicode NFC and trim (default);
    collapse: nfc and every run of whitespace becomes one space."""
    if mode == "none":
        return text
    if mode == "strip":
        return text.strip()
    text = unicodedata.normalize("NFC", text).strip()
    if mode == "collapse":
        text = _WHITESPACE.sub(" ", text)
    return text


def uncounted(text: str) -> int:
    """A ``count_tokens`` for callers that need a record's fate and content
    hash, not its token figure (the reuse join's hashing, the order sample):
    the count enters neither."""
    return 0


def _excerpt(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def prepare(
    raw: RawRecord | ReadError,
    config: PrepareConfig,
    count_tokens: Callable[[str], int],
    truncate: Callable[[str, int], str],
) -> Record | DeadLetter:
    """One raw record (or read error) in, one record or one dead letter out.

    A text the reader ``cut`` (too long to hold) is flagged truncated, or
    dead-lettered as ``text_too_long`` under ``on_long_text=dead-letter``.
    A text is over the limit when ``truncate`` (the backend's safe cut) keeps
    less than all of it; ``count_tokens`` (its unbiased count) is the token
    figure recorded, for pacing and plans.
    """
    if isinstance(raw, ReadError):
        return DeadLetter(raw.id, raw.position, raw.reason, raw.detail or raw.reason, raw.raw)
    text = raw.text
    if raw.cut and config.on_long_text == "dead-letter" and isinstance(text, str):
        return DeadLetter(
            raw.id, raw.position, r.TEXT_TOO_LONG,
            f"longer than the {len(text)} characters the reader keeps of one text, "
            f"far over the backend's {config.max_text_tokens} tokens",
            _excerpt(text),
        )
    if text is None:
        return DeadLetter(raw.id, raw.position, r.MISSING_TEXT, "no text field", "")
    if not isinstance(text, str):
        return DeadLetter(
            raw.id, raw.position, r.NON_STRING_TEXT,
            f"text is {type(text).__name__}, not a string", _excerpt(repr(text)),
        )
    text = normalize(text, config.normalization)
    if not text.strip():
        return DeadLetter(raw.id, raw.position, r.EMPTY_TEXT, "text is empty or whitespace", "")
    if r.has_surrogates(text):
        return DeadLetter(
            raw.id, raw.position, r.INVALID_UTF8, "text holds unpaired surrogates",
            _excerpt(repr(text)),
        )
    truncated = raw.cut
    kept = truncate(text, config.max_text_tokens)
    if kept != text:  # over the limit by the backend's safe count, in any script
        if config.on_long_text == "dead-letter":
            return DeadLetter(
                raw.id, raw.position, r.TEXT_TOO_LONG,
                f"too long: about {count_tokens(text):,} tokens, and the backend takes "
                f"{config.max_text_tokens:,} (only its first {len(kept):,} of {len(text):,} "
                "characters surely fit); --on-long-text truncate keeps those",
                _excerpt(text),
            )
        text = kept
        truncated = True
    tokens = min(count_tokens(text), config.max_text_tokens)
    return Record(
        id=str(raw.id),
        text=text,
        # A title is embedded with its text (RETRIEVAL_DOCUMENT): the same text
        # under two titles is two inputs, and must never share a vector.
        content_hash=r.content_hash(text if raw.title is None else f"{raw.title}\x1f{text}"),
        tokens=tokens,
        truncated=truncated,
        position=raw.position,
        metadata=raw.metadata,
        title=raw.title,
    )

