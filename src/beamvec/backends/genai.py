"""Gemini Developer API and Vertex AI embeddings through google-genai.

``--backend gemini`` uses an API key; ``--backend vertex`` uses a project,
a location and Application Default Credentials. Both go through
``client.models.embed_content``. google-genai 2.x and 3.x are both supported
(2.x is what google-cloud-aiplatform, and so ``apache-beam[gcp]``, allows).
What the SDK does, and how we use it:

* Which endpoint each model and SDK version reaches, and so which send one
  text per call (``limits`` then says ``max_items=1``, the request counts the
  quota sees, and ``embed`` splits any larger group): ``genai_models``.
* For multimodal models (``gemini-embedding-2…``) the SDK merges a list of
  plain strings into ONE content and returns ONE embedding (python-genai
  issue 2523), so every text is sent as its own ``Content``.
* gemini-embedding-2 takes no ``task_type``: the task is written into each
  text as Google documents (``prompts``), and the template is part of
  ``describe()`` (footer, fingerprint). Its input limit is 8,192 tokens;
  the others take 2,048 (``tokens.max_text_tokens``).
* Token counts: ``count_tokens`` estimates what is sent, template included
  (``tokens.estimate``); ``truncate`` cuts by the safe upper bound, leaving
  room for the template. Where the response carries the server's count
  (Vertex ``:predict``: ``statistics.token_count`` per instance), the last
  call's total is ``server_tokens()`` in the thread that made it. The Gemini
  API reports no counts with embeddings, but its free ``:countTokens``
  answers for gemini-embedding-2 (not for gemini-embedding-001 on Vertex:
  python-genai#1541): the first ``COUNTED_CALLS`` calls of a worker are also
  counted there, so its limiter paces tokens as the server counts them.
* ``config.title`` applies to a whole call, so a batch whose titles differ is
  sent as one call per distinct title, and the rows are put back in order.
  Titles are only sent with ``RETRIEVAL_DOCUMENT``, the one task that uses them.
* The SDK does not retry by default and ignores Retry-After / RetryInfo; errors
  become ``BackendError`` with a kind and the server's hint
  (``google_errors``: the one place that reads statuses and error bodies),
  and ``beamvec.retry`` retries the transient ones.
  Its transport is httpx2 in 3.x (httpx with ``GOOGLE_GENAI_HTTP_CLIENT=httpx``), httpx in 2.x;
  timeouts and broken connections of either become retryable BackendErrors.
* Smaller ``output_dimensionality`` vectors are not normalized by the API; we
  L2-normalize them. Vertex calls send ``auto_truncate=False`` so the server
  never embeds less than the text we hashed; too-long texts come back as 400.

Vertex authentication (``vertex_auth``): ``"adc"`` (default) uses
Application Default Credentials; ``"api_key"`` is Vertex express mode (the key
read like the Gemini key, no project in the path); ``"anonymous"`` sends a
static bearer token and is only allowed with ``api_base_url`` (emulators).

The API key is read in ``load()``, on the worker, from ``api_key_file`` or the
first set variable of ``api_key_env``. It is never an attribute before
``load()``, never pickled, and scrubbed from every error message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from beamvec.backends import genai_auth, genai_preflight, google_errors, prompts, tokens
from beamvec.backends.base import TASK_TYPES, Backend, Limits, SendGate, l2_normalize
from beamvec.backends.genai_models import (
    COUNT_TOKENS_MODELS,
    DEFAULT_MODEL,
    is_model,
    model_id,
    native_dimension,
    one_text_per_call,
    output_size,
    request_limits,
)
from beamvec.backends.genai_response import checked_rows, server_token_counts
from beamvec.errors import BackendError, ErrorKind

__all__ = ["DEFAULT_MODEL", "GenaiBackend", "model_id", "native_dimension"]

DEFAULT_KEY_ENV = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
VERTEX_AUTH_MODES = ("adc", "api_key", "anonymous")
#: Calls of a worker whose texts are also counted by ``:countTokens`` (a sample).
COUNTED_CALLS = 3


class GenaiBackend(Backend):
    """``client.models.embed_content`` with limits, checks and error mapping."""

    _unpicklable = ("_client", "_secret", "_sending")

    def __init__(
        self,
        mode: str = "gemini",
        model: str = DEFAULT_MODEL,
        task_type: str | None = None,
        output_dimensionality: int | None = None,
        api_key_file: str | None = None,
        api_key_secret: str | None = None,
        api_key_env: Sequence[str] = DEFAULT_KEY_ENV,
        project: str | None = None,
        location: str | None = None,
        api_base_url: str | None = None,
        api_version: str | None = None,
        timeout_s: float = 60.0,
        vertex_auth: str = "adc",
    ) -> None:
        if mode not in ("gemini", "vertex"):
            raise ValueError(f"mode must be 'gemini' or 'vertex', not {mode!r}")
        if task_type is not None:
            task_type = task_type.upper()
            if task_type not in TASK_TYPES:
                raise ValueError(
                    f"unknown task type {task_type!r}; choose one of {', '.join(sorted(TASK_TYPES))}"
                )
        output_dimensionality = output_size(model, output_dimensionality)
        if vertex_auth not in VERTEX_AUTH_MODES:
            raise ValueError(f"vertex_auth must be one of {', '.join(VERTEX_AUTH_MODES)}")
        if mode == "vertex" and vertex_auth == "anonymous" and not api_base_url:
            raise ValueError("vertex_auth='anonymous' is only for emulators: set api_base_url")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.mode = mode
        self._model = model
        self._task_type = task_type
        # gemini-embedding-2: the task is written into the text (prompts), never sent
        self._prompt = prompts.prompt_format(model, task_type)
        self.output_dimensionality = output_dimensionality
        self.native_dimension = native_dimension(model)
        self.api_key_file = api_key_file
        # A Secret Manager version name, e.g. projects/p/secrets/gemini-key/versions/latest:
        # a reference, not the secret; workers fetch the key in load().
        self.api_key_secret = api_key_secret
        self.api_key_env = tuple(api_key_env)
        self.project = project
        self.location = location
        self.api_base_url = api_base_url
        self.api_version = api_version
        self.timeout_s = float(timeout_s)
        self.vertex_auth = vertex_auth
        self.name = mode
        self._client: Any = None
        self._secret: str | None = None
        self._sending: threading.local | None = None  # this thread's send gate, while it embeds
        self._counted_calls = 0  # calls whose texts :countTokens also counted

    # -- description ---------------------------------------------------------

    @property
    def model(self) -> str:
        return self._model

    @property
    def task_type(self) -> str | None:
        return self._task_type

    @property
    def dimension(self) -> int:
        return int(self.output_dimensionality or self.native_dimension)  # type: ignore[arg-type]

    @property
    def renormalized(self) -> bool:
        """Whether we L2-normalize (the API only normalizes native-size vectors)."""
        return self.dimension != self.native_dimension

    @property
    def prompt_format(self) -> str | None:
        """The template each text is written into (gemini-embedding-2), or None."""
        return None if self._prompt is None else self._prompt.template

    @property
    def prompt(self) -> prompts.PromptFormat | None:
        """How each text is written for the model (gemini-embedding-2), or None."""
        return self._prompt

    @property
    def one_text_per_call(self) -> bool:
        return one_text_per_call(self.mode, self._model)

    @property
    def limits(self) -> Limits:
        model_limit = tokens.max_text_tokens(self._model)
        # what the text itself may hold: the model's limit less the template's share
        per_text = model_limit - (self._prompt.overhead() if self._prompt is not None else 0)
        items, request_tokens = request_limits(self.mode, self._model, model_limit)
        return Limits(
            max_items=items, max_request_tokens=request_tokens,
            max_text_tokens=per_text, dimension=self.dimension,
        )

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["output_dimensionality"] = self.output_dimensionality
        info["normalization"] = "l2" if self.renormalized else "native"
        if self._prompt is not None:
            info["prompt_format"] = self._prompt.template
        return info

    # -- tokens ----------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """An unbiased estimate of what the model counts: the text as sent,
        template included (without a title, which is not known here)."""
        return tokens.estimate(self._prompt.apply(text) if self._prompt else text, self._model)

    def server_tokens(self) -> int | None:
        """The tokens the server counted for the last ``embed`` in this thread,
        when every response of it said (Vertex ``:predict``), else None."""
        sending = self._sending
        return getattr(sending, "server_tokens", None) if sending is not None else None

    # -- credentials and client ----------------------------------------------

    def _read_key(self) -> str:
        return genai_auth.read_api_key(self.mode, self.api_key_secret, self.api_key_file, self.api_key_env)

    def read_api_key(self) -> str:
        """The API key, for the Batch API client (``--batch-api``); never logged."""
        return self._read_key()

    def load(self) -> None:
        if self._client is not None:
            return
        genai = genai_auth.import_genai(self.mode)
        self._sending = threading.local()
        options = {"base_url": self.api_base_url, "timeout_s": self.timeout_s,
                   "on_request": self._on_request}
        if self.mode == "gemini" or self.vertex_auth == "api_key":  # express mode: a key, no project
            key = self._read_key()
            self._secret = key
            version = self.api_version or (None if self.mode == "gemini" else "v1beta1")
            self._client = genai_auth.key_client(
                genai, key, vertex=self.mode == "vertex", api_version=version, **options
            )
            return
        self._client = genai_auth.vertex_client(
            genai, self.project, self.location, self.vertex_auth, self.api_version or "v1beta1", **options
        )

    def close(self) -> None:
        """Close the HTTP client (optional; workers may simply exit)."""
        client, self._client = self._client, None
        closer = getattr(client, "close", None)
        if callable(closer):
            closer()

    # -- embedding -----------------------------------------------------------

    def embed_paced(
        self, texts: Sequence[str], titles: Sequence[str | None] | None, gate: SendGate
    ) -> np.ndarray:
        self.load()
        assert self._sending is not None
        self._sending.gate = gate
        try:
            return self.embed(texts, titles)
        finally:
            self._sending.gate = None

    def _on_request(self, request: Any) -> None:
        """httpx's request hook: runs in the sending thread once the SDK has
        built the request, right before it is written to the connection. The
        transport's trace (httpcore's ``trace`` extension, same thread) tells
        the gate when the body was written."""
        gate = getattr(self._sending, "gate", None)
        if gate is None:
            return
        gate()
        chained = request.extensions.get("trace")

        def trace(event: str, info: dict[str, Any]) -> None:
            if chained is not None:
                chained(event, info)
            if event.endswith("send_request_body.complete"):
                gate.left(time.monotonic())

        request.extensions["trace"] = trace

    def embed(self, texts: Sequence[str], titles: Sequence[str | None] | None = None) -> np.ndarray:
        self.load()
        n = len(texts)
        if n == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if titles is not None and len(titles) != n:
            raise ValueError(f"{len(titles)} titles for {n} texts")
        if any(not t for t in texts):
            # Vertex :predict drops empty parts, which would misalign the rows.
            raise BackendError(f"{self.mode}: empty text", kind=ErrorKind.BAD_INPUT, status=400)
        out = np.empty((n, self.dimension), dtype=np.float32)
        if self._prompt is not None:  # titles go into each text: one group
            texts = [self._prompt.apply(t, titles[i] if titles else None) for i, t in enumerate(texts)]
            titles = None
        assert self._sending is not None
        self._sending.server_tokens = 0
        for title, rows in self._title_groups(n, titles).items():
            try:
                out[rows] = self._checked(self.send([texts[i] for i in rows], title), len(rows))
            except google_errors.TextTooLong as exc:  # the text it names, as the caller numbers them
                exc.culprit = rows[exc.culprit] if exc.culprit is not None and exc.culprit < len(rows) else None
                raise
        return l2_normalize(out) if self.renormalized else out

    def _title_groups(
        self, n: int, titles: Sequence[str | None] | None
    ) -> dict[str | None, list[int]]:
        """Rows per distinct title, in first-seen order (one API call each)."""
        if titles is None or self._task_type != "RETRIEVAL_DOCUMENT" or self._prompt is not None:
            return {None: list(range(n))}
        groups: dict[str | None, list[int]] = {}
        for i, title in enumerate(titles):
            groups.setdefault(title or None, []).append(i)
        return groups

    def send(self, texts: list[str], title: str | None) -> list[Any]:
        """One embed_content call (one per text where the SDK sends one text per
        call); returns the response's embeddings or raises BackendError."""
        if len(texts) > 1 and self.one_text_per_call:
            embeddings: list[Any] = []
            for i, text in enumerate(texts):
                try:
                    embeddings += self.send([text], title)
                except google_errors.TextTooLong as exc:
                    exc.culprit = i
                    raise
            return embeddings
        from google.genai import types

        config = types.EmbedContentConfig(
            task_type=None if self._prompt is not None else self._task_type,
            title=title,
            output_dimensionality=self.output_dimensionality,
            auto_truncate=False if self.mode == "vertex" else None,
        )
        # One Content per text (multimodal models merge a list of strings into one
        # embedding), as plain dicts: the SDK validates dicts in pydantic-core, but
        # walks every field of Content/Part objects in Python (~0.3 ms per text).
        contents: list[Any] = [{"role": "user", "parts": [{"text": t}]} for t in texts]
        try:
            response = self._client.models.embed_content(
                model=self._model, contents=contents, config=config
            )
        except Exception as exc:
            mapped = google_errors.from_exception(exc, self.mode, self.timeout_s, self._scrub)
            if mapped is None:
                raise
            raise mapped from None
        embeddings = list(response.embeddings or [])
        self._note_server_tokens(embeddings, contents)
        return embeddings

    def _counts_tokens(self) -> bool:
        """Whether this call's texts are also sent to the free ``:countTokens``."""
        if self.mode != "gemini" or self._counted_calls >= COUNTED_CALLS:
            return False
        return is_model(self._model, COUNT_TOKENS_MODELS)

    def _counted(self, contents: list[Any]) -> int | None:
        """The server's count of ``contents`` by ``:countTokens``, or None when
        it does not answer (a sample is worth no failed run)."""
        self._counted_calls += 1
        try:
            answer = self._client.models.count_tokens(model=self._model, contents=contents)
        except Exception:  # noqa: BLE001 - the estimate stands
            return None
        total = getattr(answer, "total_tokens", None)
        return int(total) if total else None

    def _note_server_tokens(self, embeddings: list[Any], contents: list[Any]) -> None:
        """Add the server's own counts (``statistics.token_count``, or
        ``:countTokens`` for a sample of calls) to this thread's
        ``server_tokens``; None once any response leaves them out."""
        sending = self._sending
        if sending is None or getattr(sending, "server_tokens", None) is None:
            return
        counts = server_token_counts(embeddings)
        if counts and any(c is None for c in counts) and self._counts_tokens():
            counts = [self._counted(contents)]
        if not counts or any(c is None for c in counts):
            sending.server_tokens = None
            return
        sending.server_tokens += int(sum(counts))

    def _checked(self, embeddings: list[Any], expected: int) -> np.ndarray:
        """The rows of a response, or BackendError if it cannot be trusted."""
        return checked_rows(embeddings, expected, self.dimension, self.mode)

    # -- errors --------------------------------------------------------------

    def _scrub(self, message: str) -> str:
        """The message on one line, without the key."""
        return google_errors.scrub(message, self._secret)

    def _map_api_error(self, exc: Any) -> BackendError:
        return google_errors.from_api_error(exc, self.mode, self._scrub)

    # -- preflight -----------------------------------------------------------

    PREFLIGHT_ATTEMPTS = 3
    PREFLIGHT_MAX_WAIT_S = 10.0

    def preflight(self, text: str | None = None, title: str | None = None) -> np.ndarray | None:
        """One call, before any quota is spent: credentials, model and dimension
        (``genai_preflight``). Embeds ``text`` (a text the run needs, so the run
        keeps its vector and bills nothing extra) or a probe text; returns the
        vector as ``embed`` would, or None when the API refused ``text`` itself
        as bad input (then a probe text decides, and the run sends ``text`` as
        usual)."""
        self.load()
        assert self._sending is not None
        self._sending.gate = genai_preflight.SentClock(self)
        try:
            return genai_preflight.preflight(self, text, title)
        finally:
            self._sending.gate = None
