"""Tokens as Google counts them, without Google's tokenizer: per script, per model.

We do not have the tokenizer of the Gemini embedding models, and one fixed
ratio is wrong by a factor of four between English and Chinese. So each
character is weighed by its script, with two weights:

* ``estimate`` — the expected count, unbiased: what pacing (tokens per
  minute), request packing and ``plan`` use.
* ``upper_bound`` — a safe count for cutting: a text whose upper bound fits
  the model's limit is not refused as too long. ``cut`` keeps the longest
  prefix whose upper bound fits.

What the weights rest on (published facts; where nothing is published the
figure is our assumption and says so):

* Google, "Understand and count tokens" (ai.google.dev/gemini-api/docs/tokens):
  "a token is equivalent to about 4 characters for Gemini models. 100 tokens
  are equal to about 60-80 English words." -> Latin script, spaces and ASCII
  punctuation at 4 characters a token; upper bound 3 (what beamvec used for
  every script before, with a 33 % margin over Google's average).
* Chinese, Japanese and Korean: about one token per character (issue #30;
  Google's Vertex pricing counts CJK characters one by one as well). Upper
  bound 1.25 a character.
* Digits: the Gemini tokenizer splits numbers into single digits (Gemini
  technical report, 2023: "splits digits"), one token each, both weights.
* Cyrillic, Greek, Arabic, Hebrew (assumption): alphabetic scripts the
  256k-entry vocabulary covers less densely than English: 3 characters a
  token, upper bound 2.
* Indic and South-East Asian scripts (assumption): many combining marks,
  2.5 characters a token, upper bound one token a character.
* Emoji and everything outside the Basic Multilingual Plane: 2 tokens each;
  upper bound 4, the UTF-8 bytes a byte-fallback tokenizer can spend on one.
* Symbols, dingbats and any other character: 1 token; upper bound 3 (its
  UTF-8 bytes).

The models: gemini-embedding-001, gemini-embedding-2 and the Vertex
``text-*`` models share these weights (Google publishes no separate figure
for the older models' tokenizer). Their input limits are in ``MAX_TEXT_TOKENS``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

#: Input tokens a text may hold, per model id (a key covers ``<id>-…`` and
#: ``<id>@…`` variants). Google: gemini-embedding-001 and the text-embedding /
#: text-multilingual-embedding models take 2,048 tokens; gemini-embedding-2
#: takes 8,192 (ai.google.dev/gemini-api/docs/embeddings, model table;
#: cloud.google.com/vertex-ai/generative-ai/docs/embeddings/get-text-embeddings).
MAX_TEXT_TOKENS: dict[str, int] = {
    "gemini-embedding-001": 2048,
    "gemini-embedding-2": 8192,
    "text-embedding-004": 2048,
    "text-embedding-005": 2048,
    "text-multilingual-embedding-002": 2048,
}
#: A model missing from the table gets the smallest published limit.
DEFAULT_MAX_TEXT_TOKENS = 2048


@dataclass(frozen=True)
class Script:
    """A class of characters and its two weights, in tokens per character."""

    name: str
    pattern: re.Pattern[str]
    estimate: float
    upper: float


def _chars(ranges: str) -> re.Pattern[str]:
    return re.compile(f"[{ranges}]")


#: The classes, tested in this order; a character in none of them is ``OTHER``.
SCRIPTS: tuple[Script, ...] = (
    Script("digits", _chars("0-9"), 1.0, 1.0),
    Script("newline", _chars("\n"), 1.0, 1.0),
    Script("latin", _chars(
        "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff"  # letters
        " \t\r\u00a0!-/:-@\\[-`{-~"  # spaces, ASCII punctuation
    ), 1 / 4, 1 / 3),
    Script("cjk", _chars(
        "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # Han
        "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f"  # kana
        "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f"  # Hangul
        "\u3000-\u303f\uff01-\uff65"  # CJK and full-width punctuation
    ), 1.0, 1.25),
    Script("cyrillic-greek-semitic", _chars(
        "\u0370-\u058f"  # Greek, Cyrillic, Armenian
        "\u0590-\u07bf\u0860-\u08ff\ufb1d-\ufdff\ufe70-\ufefe"  # Hebrew, Arabic, Syriac, Thaana
    ), 1 / 3, 1 / 2),
    Script("indic-sea", _chars("\u0900-\u0fff\u1000-\u109f"), 1 / 2.5, 1.0),
    Script("astral", _chars("\U00010000-\U0010ffff"), 2.0, 4.0),
)
OTHER_ESTIMATE = 1.0
OTHER_UPPER = 3.0


def _model_id(model: str) -> str:
    return model.rsplit("/", 1)[-1]


def max_text_tokens(model: str) -> int:
    """The input tokens one text may hold for ``model`` (Google's published limit)."""
    mid = _model_id(model)
    for name, limit in MAX_TEXT_TOKENS.items():
        if mid == name or mid.startswith((name + "-", name + "@")):
            return limit
    return DEFAULT_MAX_TEXT_TOKENS


def _weighed(text: str, upper: bool) -> float:
    """Σ weight × characters over the scripts (each a C-speed regex pass)."""
    total = 0.0
    counted = 0
    for script in SCRIPTS:
        n = len(script.pattern.findall(text)) if text else 0
        counted += n
        total += n * (script.upper if upper else script.estimate)
    return total + (len(text) - counted) * (OTHER_UPPER if upper else OTHER_ESTIMATE)


def estimate(text: str, model: str = "gemini-embedding-001") -> int:
    """The expected token count of ``text`` (unbiased: for pacing and ``plan``).

    ``model`` selects the weights; all Google models share them today."""
    del model  # one tokenizer family; the parameter keeps callers per-model
    return max(1, round(_weighed(text, upper=False))) if text else 0


def upper_bound(text: str, model: str = "gemini-embedding-001") -> int:
    """A count the server's should not exceed (for cutting; see module doc)."""
    del model
    return math.ceil(_weighed(text, upper=True)) if text else 0


def cut(text: str, max_tokens: int, model: str = "gemini-embedding-001") -> str:
    """The longest prefix of ``text`` whose ``upper_bound`` is at most ``max_tokens``.

    ``text`` itself when it fits. The weights are additive, so the bound of a
    prefix grows with its length and a binary search finds the cut."""
    if upper_bound(text, model) <= max_tokens:
        return text
    low, high = 0, len(text)  # upper_bound(text[:low]) fits; text[:high] does not
    while high - low > 1:
        middle = (low + high) // 2
        if upper_bound(text[:middle], model) <= max_tokens:
            low = middle
        else:
            high = middle
    return text[:low]
