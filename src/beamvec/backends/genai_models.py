"""What each Google embedding model is, and how the installed SDK sends it.

The facts the backend, the Batch API and ``search`` share: native vector
sizes, request limits, and which models and SDK versions send one text per
call. Pure functions of a model id (and, for routing, the installed
google-genai's version); no client, no network.

Routing, as google-genai does it: the Gemini API always gets
``POST /{version}/models/{model}:batchEmbedContents``. Vertex gets
``:predict`` for ``text-*`` models. For model ids containing ``gemini``,
google-genai 3.4 and later send ``:batchEmbedContents`` (``:embedContent``
when there is one content); 2.x and 3.0–3.3 send gemini-embedding-001 to
``:predict``, which takes one instance per request for it on Vertex, and other
gemini models to ``:embedContent``, one content per call (the SDK raises
ValueError for more). So below 3.4 a Vertex gemini model is sent one text per
call (``sdk_batches_vertex_gemini``, decided by the full version, not the
major). gemini-embedding-2 on Vertex is documented with one content per
``:embedContent`` call, so it is sent one text per call with any SDK.
"""

from __future__ import annotations

import functools
import re
from importlib import metadata

#: Native output size per model id; a key also covers ids that extend it with
#: ``-…`` (``gemini-embedding-2`` covers ``gemini-embedding-2-preview``).
NATIVE_DIMENSIONS: dict[str, int] = {
    "gemini-embedding-001": 3072,
    "gemini-embedding-2": 3072,
    "text-embedding-004": 768,
    "text-embedding-005": 768,
    "text-multilingual-embedding-002": 768,
}

DEFAULT_MODEL = "gemini-embedding-001"
GEMINI_MAX_ITEMS = 100
VERTEX_MAX_ITEMS = 250
VERTEX_MAX_REQUEST_TOKENS = 20_000
#: Models whose token counts the Gemini API's ``:countTokens`` gives (a free call):
#: gemini-embedding-2 (BerriAI/litellm#24339 shows its answer, per modality).
COUNT_TOKENS_MODELS = ("gemini-embedding-2",)
#: The first google-genai that sends a Vertex gemini model's texts to
#: ``:batchEmbedContents`` (3.0–3.3 still use ``:predict``/``:embedContent``).
SDK_BATCHES_VERTEX_GEMINI_FROM = (3, 4)
#: Vertex serves these one content per ``:embedContent`` call, whatever the SDK.
VERTEX_ONE_CONTENT_MODELS = ("gemini-embedding-2",)


def sdk_version_tuple(version: str) -> tuple[int, ...]:
    """``"3.4.0"`` -> (3, 4, 0); a suffix is ignored (``"3.4.0rc1"`` -> (3, 4, 0))."""
    match = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", version.strip())
    return tuple(int(p) for p in match.groups() if p is not None) if match else ()


@functools.lru_cache(maxsize=1)
def sdk_batches_vertex_gemini() -> bool:
    """Whether the installed google-genai sends many texts of a Vertex gemini
    model in one call (3.4 and later: ``:batchEmbedContents``); 2.x and
    3.0–3.3 do not (see above). Read on the worker, where the SDK that makes
    the calls is installed."""
    try:
        version = metadata.version("google-genai")
    except metadata.PackageNotFoundError:  # load() says how to install it
        return True
    return sdk_version_tuple(version) >= SDK_BATCHES_VERTEX_GEMINI_FROM


def model_id(model: str) -> str:
    """The bare id of ``models/x`` or ``publishers/google/models/x``."""
    return model.rsplit("/", 1)[-1]


def is_model(model: str, families: tuple[str, ...]) -> bool:
    """Whether ``model`` is one of ``families`` or extends one with ``-…``."""
    mid = model_id(model)
    return any(mid == name or mid.startswith(name + "-") for name in families)


def native_dimension(model: str) -> int | None:
    """The model's native vector size, or None when it is not in the table."""
    for name, dim in NATIVE_DIMENSIONS.items():
        if is_model(model, (name,)):
            return dim
    return None


def output_size(model: str, requested: int | None) -> int | None:
    """``requested`` as an int once the model can return it (ValueError if
    not); None (the native size) only for a model whose size is known."""
    native = native_dimension(model)
    if requested is None:
        if native is None:
            raise ValueError(f"the native dimension of {model!r} is unknown; pass output_dimensionality")
        return None
    size = int(requested)
    if size < 1:
        raise ValueError("output_dimensionality must be positive")
    if native is not None and size > native:
        raise ValueError(f"{model} returns at most {native} dimensions, not {size}")
    return size


def one_text_per_call(mode: str, model: str) -> bool:
    """Vertex with a gemini model through google-genai below 3.4, or with a
    model Vertex serves one content a call: one text per call."""
    if mode != "vertex" or "gemini" not in model_id(model):
        return False
    return is_model(model, VERTEX_ONE_CONTENT_MODELS) or not sdk_batches_vertex_gemini()


def request_limits(mode: str, model: str, model_limit: int) -> tuple[int, int]:
    """(texts per call, tokens per call) for a model whose texts hold at most
    ``model_limit`` tokens each."""
    if one_text_per_call(mode, model):
        return 1, model_limit
    if mode == "gemini":
        return GEMINI_MAX_ITEMS, GEMINI_MAX_ITEMS * model_limit
    return VERTEX_MAX_ITEMS, VERTEX_MAX_REQUEST_TOKENS
