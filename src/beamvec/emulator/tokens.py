"""The emulator's tokenizer: tokens counted per script, from published rules of thumb.

Google meters quotas and limits with its own SentencePiece tokenizer, which
beamvec cannot run; the emulator stands in with these rules:

- Latin-script words: "a token is about 4 characters" and "100 tokens are
  about 60-80 English words" (ai.google.dev/gemini-api/docs/tokens). Both
  count spaces and punctuation: a vocabulary of 256k pieces holds most English
  words whole, so a word costs ceil(len / 6) ("the" and "wisely" 1 token,
  "tokenizer" 2), punctuation one each; on prose that is 4-4.5 characters and
  about 75 words per 100 tokens, inside both published figures.
- Han, Hiragana, Katakana and Hangul: one token a character (SentencePiece
  vocabularies hold CJK mostly as single characters).
- Cyrillic, Greek, Armenian, Georgian, Hebrew, Arabic: about 3 characters a token;
  Devanagari, Bengali and the other Indic scripts, Thai: about 2 (denser than
  English in most multilingual vocabularies).
- Digits: one token each (Gemma's tokenizer splits numbers into digits;
  Gemma report, 2024).
- Punctuation, symbols and emoji: one token per code point (so a ZWJ emoji
  sequence costs one per component and joiner).
- Whitespace: free (it rides on the next word).
"""

from __future__ import annotations

import math
import re

#: (group name, characters a token; 0 means one token per character)
_CLASSES: tuple[tuple[str, str, int], ...] = (
    ("space", r"\s+", -1),
    ("cjk", r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003134f]", 0),
    ("digit", r"[0-9]", 0),
    ("latin", r"[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff\u0300-\u036f']+", 6),
    ("alpha3", r"[\u0370-\u03ff\u0400-\u052f\u0530-\u058f\u10a0-\u10ff\u0590-\u05ff\u0600-\u06ff\u0750-\u077f]+", 3),
    ("alpha2", r"[\u0900-\u0dff\u0e00-\u0e7f]+", 2),
    ("other", r".", 0),
)
_PATTERN = re.compile("|".join(f"(?P<{name}>{rx})" for name, rx, _ in _CLASSES), re.DOTALL)
_PER_TOKEN = {name: n for name, _, n in _CLASSES}


def _cost(kind: str, length: int) -> int:
    per = _PER_TOKEN[kind]
    if per < 0:
        return 0
    if per == 0:
        return length
    return math.ceil(length / per)


def count_tokens(text: str) -> int:
    """How many tokens the emulator meters and limits for ``text``."""
    total = 0
    for m in _PATTERN.finditer(text):
        kind = m.lastgroup or "other"
        total += _cost(kind, m.end() - m.start())
    return total


def truncate(text: str, max_tokens: int) -> str:
    """The longest prefix of ``text`` that counts at most ``max_tokens``, without
    the whitespace the cut left at its end."""
    total = 0
    for m in _PATTERN.finditer(text):
        kind = m.lastgroup or "other"
        cost = _cost(kind, m.end() - m.start())
        if total + cost > max_tokens:
            room = max_tokens - total
            per = _PER_TOKEN[kind]
            return text[: m.start() + room * max(per, 1)].rstrip()
        total += cost
    return text
