"""The emulator's own table of Google's embedding models: which API and which
methods serve each, sizes, limits and prices, as Google publishes them.

Written from Google's pages, not from beamvec's client:

- Gemini API models and methods: https://ai.google.dev/gemini-api/docs/embeddings
  and https://ai.google.dev/api/embeddings (``batchEmbedContents``: at most 100
  requests a batch); prices: https://ai.google.dev/gemini-api/docs/pricing
- Vertex AI: https://cloud.google.com/vertex-ai/generative-ai/docs/embeddings/get-text-embeddings
  (``:predict`` takes 250 texts and 20,000 tokens a request for text-* models,
  one instance for gemini-embedding-001; 2,048 tokens a text; ``autoTruncate``
  defaults to true) and the gemini-embedding-2 model card (8,192 tokens,
  ``:embedContent`` one content a call, no task type: the task goes in the text).
"""

from __future__ import annotations

from dataclasses import dataclass

GEMINI = "gemini"
VERTEX = "vertex"

#: Task types of the Gemini API and Vertex AI (ai.google.dev/api/embeddings#tasktype).
TASK_TYPES = frozenset(
    {
        "TASK_TYPE_UNSPECIFIED",
        "RETRIEVAL_QUERY",
        "RETRIEVAL_DOCUMENT",
        "SEMANTIC_SIMILARITY",
        "CLASSIFICATION",
        "CLUSTERING",
        "QUESTION_ANSWERING",
        "FACT_VERIFICATION",
        "CODE_RETRIEVAL_QUERY",
    }
)


@dataclass(frozen=True)
class ModelSpec:
    """One model as Google serves it."""

    name: str
    dimension: int  # native output size
    mrl: tuple[int, int]  # the output sizes Google recommends (Matryoshka)
    max_input_tokens: int
    gemini_methods: frozenset[str]  # empty: not on the Gemini API
    vertex_methods: frozenset[str]  # empty: not on Vertex AI
    vertex_predict_instances: int = 250  # texts in one Vertex :predict
    vertex_request_tokens: int = 20_000  # tokens in one Vertex :predict
    honours_task_type: bool = True
    usd_per_m_tokens: float | None = None  # online, per 1M input tokens
    usd_per_m_tokens_batch: float | None = None
    aliases: tuple[str, ...] = ()

    def serves(self, api: str, method: str) -> bool:
        return method in (self.gemini_methods if api == GEMINI else self.vertex_methods)


_GEMINI_EMBED = frozenset({"embedContent", "batchEmbedContents", "countTokens", "asyncBatchEmbedContent"})
_VERTEX_TEXT = frozenset({"predict"})

MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        "gemini-embedding-001",
        dimension=3072,
        mrl=(128, 3072),
        max_input_tokens=2048,
        gemini_methods=_GEMINI_EMBED,
        # :predict one instance (Vertex docs); :embedContent and :batchEmbedContents
        # as google-genai sends them; countTokens is not served (python-genai#1541)
        vertex_methods=frozenset({"predict", "embedContent", "batchEmbedContents"}),
        vertex_predict_instances=1,
        usd_per_m_tokens=0.15,
        usd_per_m_tokens_batch=0.075,
    ),
    ModelSpec(
        "gemini-embedding-2",
        dimension=3072,
        mrl=(128, 3072),
        max_input_tokens=8192,
        gemini_methods=_GEMINI_EMBED,
        vertex_methods=frozenset({"embedContent", "batchEmbedContents"}),
        vertex_predict_instances=1,
        honours_task_type=False,
        usd_per_m_tokens=0.20,
        usd_per_m_tokens_batch=0.10,
        aliases=("gemini-embedding-2-preview",),
    ),
    ModelSpec(
        "text-embedding-005",
        dimension=768,
        mrl=(1, 768),
        max_input_tokens=2048,
        gemini_methods=frozenset(),
        vertex_methods=_VERTEX_TEXT,
    ),
    ModelSpec(
        "text-multilingual-embedding-002",
        dimension=768,
        mrl=(1, 768),
        max_input_tokens=2048,
        gemini_methods=frozenset(),
        vertex_methods=_VERTEX_TEXT,
    ),
    ModelSpec(  # Vertex still serves it; the Gemini API retired it on 2026-01-14
        "text-embedding-004",
        dimension=768,
        mrl=(1, 768),
        max_input_tokens=2048,
        gemini_methods=frozenset(),
        vertex_methods=_VERTEX_TEXT,
    ),
)

_BY_NAME = {name: spec for spec in MODELS for name in (spec.name, *spec.aliases)}

#: Items in one Gemini API batchEmbedContents call.
GEMINI_BATCH_ITEMS = 100


def model_id(model: str) -> str:
    """The bare id of ``models/x`` or ``publishers/google/models/x``."""
    return model.rsplit("/", 1)[-1]


def lookup(model: str) -> ModelSpec | None:
    """The spec of a model id (or resource name), or None for an unknown model."""
    return _BY_NAME.get(model_id(model))
