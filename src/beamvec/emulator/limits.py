"""The per-request limits of models.py, applied with the emulator's tokenizer.

Items per request (Gemini ``batchEmbedContents`` 100; Vertex ``:predict`` 250
texts and 20,000 tokens for text-* models, one instance for gemini models),
tokens per text (the model's input limit). An over-long text on Vertex is cut
to the limit and flagged ``truncated`` unless ``autoTruncate`` is false, then
it is a 400. The Gemini API has no ``autoTruncate`` and does not document what
it does with an over-long text (an open question on discuss.ai.google.dev);
the emulator refuses it with 400, the answer that can never hide a cut.
"""

from __future__ import annotations

from beamvec.emulator.config import EmulatorConfig
from beamvec.emulator.errors import invalid, too_long
from beamvec.emulator.models import GEMINI, GEMINI_BATCH_ITEMS, ModelSpec
from beamvec.emulator.protocol import EmbedRequest
from beamvec.emulator.tokens import count_tokens, truncate


def text_token_limit(spec: ModelSpec, config: EmulatorConfig) -> int:
    """Tokens a text may hold: the model's, or the stricter server's setting."""
    return config.max_text_tokens or spec.max_input_tokens


def _max_items(req: EmbedRequest, config: EmulatorConfig) -> int:
    route, spec = req.route, req.spec
    if route.api == GEMINI:
        return config.gemini_max_items or GEMINI_BATCH_ITEMS
    if route.method == "embedContent":
        return 1
    if route.method == "predict":
        return config.vertex_max_items or spec.vertex_predict_instances
    return config.vertex_max_items or 250


def apply_limits(req: EmbedRequest, config: EmulatorConfig) -> None:
    """Count tokens, truncate or refuse over-long texts, and refuse over-full
    requests (400 INVALID_ARGUMENT, as the real services do)."""
    max_items = _max_items(req, config)
    if len(req.items) > max_items:
        if req.route.api == GEMINI:
            raise invalid(
                f"* BatchEmbedContentsRequest.requests: at most {max_items} requests can be in one batch"
            )
        raise invalid(
            f"The number of instances ({len(req.items)}) exceeds the limit of {max_items}."
        )
    per_text = text_token_limit(req.spec, config)
    for i, item in enumerate(req.items):
        if not item.text.strip():
            raise invalid(f"* requests[{i}].content: The text content is empty.")
        tokens = count_tokens(item.text)
        if tokens > per_text:
            if req.route.api == GEMINI or not item.auto_truncate:
                raise too_long(tokens, per_text)
            item.text = truncate(item.text, per_text)
            item.truncated = True
            tokens = count_tokens(item.text)
        item.tokens = tokens
    request_tokens = config.vertex_max_request_tokens or req.spec.vertex_request_tokens
    if req.route.api == "vertex" and req.tokens > request_tokens:
        raise invalid(
            f"Unable to submit request because the input token count is {req.tokens} but the "
            f"model supports up to {request_tokens}. Reduce the input token "
            "count and try again."
        )
