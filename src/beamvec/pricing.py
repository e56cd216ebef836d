"""The one price table beamvec estimates costs from.

ESTIMATES, not quotes. List prices in USD as published in 2026 (checked
then, from Google's Gemini API and Vertex AI pricing pages and the Gemini
Embedding launch note); they change, free tiers and committed-use discounts
are not modelled, and taxes are not included. Check the current pricing page
before you plan a budget on them. A model missing here gets no estimate
rather than a guess.

How each unit is counted:
- per token (gemini-embedding-001, gemini-embedding-2): the input tokens the
  API counts. beamvec does not have Google's tokenizer and estimates them per
  script (``backends.tokens.estimate``: about 4 characters a token in English,
  one a character in Chinese, Japanese and Korean), unbiased, so estimates err
  either way by the estimate's error, which ``plan`` states.
- per character (Vertex text-embedding-00x): Vertex counts characters of the
  input, whitespace excluded; callers pass that count.

Batch-mode prices apply to jobs submitted through the provider's batch API.
``beamvec run`` sends online requests (the standard price) unless
``--batch-api`` (Gemini API only) sends them as Batch API jobs (the batch
price); Vertex batch prediction is not supported, its price is for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

CHECKED = "as published 2026"
CURRENCY = "USD"


@dataclass(frozen=True)
class Price:
    models: tuple[str, ...]  # bare model ids; "<id>-..." variants match too
    backends: tuple[str, ...]  # beamvec backends that reach these models at this price
    unit: str  # "token" or "character"
    per: int  # the price is per this many units
    standard: float  # USD per `per` units, online requests
    batch: float | None  # USD per `per` units in batch mode; None: not listed
    source: str


PRICES: tuple[Price, ...] = (
    Price(
        models=("gemini-embedding-001",),
        backends=("gemini",),
        unit="token", per=1_000_000, standard=0.15, batch=0.075,
        source="Gemini API pricing: $0.15 / 1M input tokens, Batch API $0.075",
    ),
    Price(
        models=("gemini-embedding-001",),
        backends=("vertex",),
        unit="token", per=1_000_000, standard=0.15, batch=None,
        source="Vertex AI pricing: $0.15 / 1M input tokens",
    ),
    Price(
        models=("gemini-embedding-2",),
        backends=("gemini",),
        unit="token", per=1_000_000, standard=0.20, batch=0.10,
        source="Gemini API pricing: gemini-embedding-2 $0.20 / 1M text input tokens, Batch API $0.10",
    ),
    Price(
        models=("gemini-embedding-2",),
        backends=("vertex",),
        unit="token", per=1_000_000, standard=0.20, batch=None,
        source="Vertex AI pricing: gemini-embedding-2 $0.20 / 1M text input tokens",
    ),
    Price(
        models=("text-embedding-005", "text-embedding-004", "text-multilingual-embedding-002"),
        backends=("vertex",),
        unit="character", per=1_000, standard=0.000025, batch=0.00002,
        source="Vertex AI pricing: $0.000025 / 1k characters online, $0.00002 batch",
    ),
)


@dataclass(frozen=True)
class CostEstimate:
    backend: str
    model: str
    unit: str | None  # "token", "character", or None (free / unknown)
    units: int  # tokens or characters priced
    standard: float | None  # USD, online requests; None when the model is not in the table
    batch: float | None  # USD in batch mode; None when not listed
    basis: str  # one line: what the number rests on

    @property
    def known(self) -> bool:
        return self.standard is not None


def _bare(model: str) -> str:
    return model.rsplit("/", 1)[-1]


def price_for(backend: str, model: str) -> Price | None:
    """The table row for a backend and model, or None."""
    mid = _bare(model)
    for price in PRICES:
        if backend in price.backends and any(
            mid == name or mid.startswith(name + "-") or mid.startswith(name + "@")
            for name in price.models
        ):
            return price
    return None


def estimate_cost(backend: str, model: str, tokens: int, characters: int) -> CostEstimate:
    """Estimated cost of embedding ``tokens`` tokens / ``characters``
    non-whitespace characters with ``model`` on ``backend``."""
    if backend == "local":
        return CostEstimate(backend, model, None, 0, 0.0, 0.0, "local model: runs on your machine, no API charge")
    price = price_for(backend, model)
    if price is None:
        return CostEstimate(
            backend, model, None, 0, None, None,
            f"no price for {backend} {model} in beamvec.pricing; check the provider's pricing page",
        )
    units = tokens if price.unit == "token" else characters
    standard = units / price.per * price.standard
    batch = units / price.per * price.batch if price.batch is not None else None
    per = "1M tokens" if price.per == 1_000_000 else f"{price.per:,} characters"
    basis = f"{_rate(price.standard)} per {per}"
    if price.batch is not None:
        basis += f" (batch mode {_rate(price.batch)})"
    basis += f", {CHECKED}; an estimate, not a quote"
    return CostEstimate(backend, model, price.unit, units, standard, batch, basis)


def _rate(usd: float) -> str:
    """A list price as written on pricing pages: $0.15, $0.000025."""
    return "$" + (f"{usd:.8f}".rstrip("0").rstrip(".") if usd < 0.01 else f"{usd:g}")


def format_usd(value: float | None) -> str:
    if value is None:
        return "unknown"
    if value == 0:
        return "$0"
    if value < 0.01:
        return "< $0.01"
    return f"${value:,.2f}"
