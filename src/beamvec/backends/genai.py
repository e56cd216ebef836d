"""Gemini Developer API and Vertex AI embeddings through google-genai.

``--backend gemini`` uses an API key; ``--backend vertex`` uses a project,
a location and Application Default Credentials. Both go through
``client.models.embed_content``. google-genai 2.x and 3.x are both supported
(2.x is what google-cloud-aiplatform, and so ``apache-beam[gcp]``, allows).
What the SDK does, and how we use it:

* Gemini API: always ``POST /{version}/models/{model}:batchEmbedContents``.
  Vertex: ``:predict`` for ``text-*`` models. For model ids containing
  ``gemini``, google-genai 3.4 and later send ``:batchEmbedContents``
  (``:embedContent`` when there is one content); 2.x and 3.0–3.3 send
  gemini-embedding-001 to ``:predict``, which takes one instance per request
  for it on Vertex, and other gemini models to ``:embedContent``, one content
  per call (the SDK raises ValueError for more). So below 3.4 a Vertex gemini
  model is sent one text per call: ``limits`` says ``max_items=1`` (the
  request counts the quota sees), and ``embed`` splits any larger group
  (``sdk_batches_vertex_gemini``, decided by the full version, not the major).
* gemini-embedding-2 on Vertex is documented with one content per
  ``:embedContent`` call, so it is sent one text per call with any SDK.
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

import functools
import re
import threading
import time
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import numpy as np

from beamvec.backends import genai_auth, google_errors, prompts, tokens
from beamvec.backends.base import (
    PREFLIGHT_TEXT,
    TASK_TYPES,
    Backend,
    Limits,
    SendGate,
    l2_normalize,
)
from beamvec.errors import BackendError, ErrorKind, SystemicError
from beamvec.retry import RetriesExhausted, RetryPolicy

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
DEFAULT_KEY_ENV = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
GEMINI_MAX_ITEMS = 100
VERTEX_MAX_ITEMS = 250
VERTEX_MAX_REQUEST_TOKENS = 20_000
VERTEX_AUTH_MODES = ("adc", "api_key", "anonymous")
#: Models whose token counts the Gemini API's ``:countTokens`` gives (a free call):
#: gemini-embedding-2 (BerriAI/litellm#24339 shows its answer, per modality).
COUNT_TOKENS_MODELS = ("gemini-embedding-2",)
#: Calls of a worker whose texts are also counted by ``:countTokens`` (a sample).
COUNTED_CALLS = 3
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


def native_dimension(model: str) -> int | None:
    """The model's native vector size, or None when it is not in the table."""
    mid = model_id(model)
    for name, dim in NATIVE_DIMENSIONS.items():
        if mid == name or mid.startswith(name + "-"):
            return dim
    return None


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
        native = native_dimension(model)
        if output_dimensionality is not None:
            output_dimensionality = int(output_dimensionality)
            if output_dimensionality < 1:
                raise ValueError("output_dimensionality must be positive")
            if native is not None and output_dimensionality > native:
                raise ValueError(
                    f"{model} returns at most {native} dimensions, not {output_dimensionality}"
                )
        elif native is None:
            raise ValueError(
                f"the native dimension of {model!r} is unknown; pass output_dimensionality"
            )
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
        self.native_dimension = native
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
    def one_text_per_call(self) -> bool:
        """Vertex with a gemini model through google-genai below 3.4, or with a
        model Vertex serves one content a call: one text per call."""
        mid = model_id(self._model)
        if self.mode != "vertex" or "gemini" not in mid:
            return False
        one_content = any(mid == m or mid.startswith(m + "-") for m in VERTEX_ONE_CONTENT_MODELS)
        return one_content or not sdk_batches_vertex_gemini()

    @property
    def limits(self) -> Limits:
        model_limit = tokens.max_text_tokens(self._model)
        # what the text itself may hold: the model's limit less the template's share
        per_text = model_limit - (self._prompt.overhead() if self._prompt is not None else 0)
        if self.one_text_per_call:
            items, request_tokens = 1, model_limit
        elif self.mode == "gemini":
            items, request_tokens = GEMINI_MAX_ITEMS, GEMINI_MAX_ITEMS * model_limit
        else:
            items, request_tokens = VERTEX_MAX_ITEMS, VERTEX_MAX_REQUEST_TOKENS
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
                out[rows] = self._checked(self._call([texts[i] for i in rows], title), len(rows))
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

    def _call(self, texts: list[str], title: str | None) -> list[Any]:
        """One embed_content call (one per text where the SDK sends one text per
        call); returns the response's embeddings or raises BackendError."""
        if len(texts) > 1 and self.one_text_per_call:
            embeddings: list[Any] = []
            for i, text in enumerate(texts):
                try:
                    embeddings += self._call([text], title)
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
        mid = model_id(self._model)
        return any(mid == m or mid.startswith(m + "-") for m in COUNT_TOKENS_MODELS)

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
        counts = [getattr(getattr(e, "statistics", None), "token_count", None) for e in embeddings]
        if counts and any(c is None for c in counts) and self._counts_tokens():
            counts = [self._counted(contents)]
        if not counts or any(c is None for c in counts):
            sending.server_tokens = None
            return
        sending.server_tokens += int(sum(counts))

    def _checked(self, embeddings: list[Any], expected: int) -> np.ndarray:
        """The rows of a response, or BackendError if it cannot be trusted."""
        if len(embeddings) != expected:
            raise self._malformed(f"{len(embeddings)} embeddings for {expected} texts")
        dim = self.dimension
        rows = []
        for i, emb in enumerate(embeddings):
            values = getattr(emb, "values", None)
            if values is None or len(values) != dim:
                got = "no values" if values is None else f"{len(values)} values"
                raise self._malformed(f"embedding {i} has {got}, expected {dim}")
            rows.append(values)
        try:
            arr = np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError):
            raise self._malformed("non-numeric values") from None
        if not np.isfinite(arr).all():
            raise self._malformed("non-finite values")
        if (np.abs(arr).max(axis=1) == 0).any():
            raise self._malformed("an all-zero vector")
        return arr

    def _malformed(self, what: str) -> BackendError:
        return google_errors.malformed(self.mode, what)

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
        """One call, before any quota is spent: credentials, model and dimension.

        Embeds ``text`` (a text the run needs, so the run keeps its vector and
        bills nothing extra) or a probe text, with the run's retry machinery:
        a malformed answer or a transient fault is asked again; only a wrong
        dimension on every attempt is blamed on the model. Returns the vector
        as ``embed`` would, or None when the API refused ``text`` itself as
        bad input (then a probe text decides, and the run sends ``text`` as
        usual)."""
        self.load()
        dims: list[int | None] = []
        policy = RetryPolicy(
            max_attempts=self.PREFLIGHT_ATTEMPTS,
            base_delay=0.5,
            max_delay=self.PREFLIGHT_MAX_WAIT_S,
            deadline=max(self.PREFLIGHT_MAX_WAIT_S, self.timeout_s) * self.PREFLIGHT_ATTEMPTS,
        )
        try:
            return policy.call(self._preflight_once, text or PREFLIGHT_TEXT, title, dims)
        except RetriesExhausted as exc:
            wrong = {d for d in dims}
            if len(dims) == exc.attempts and len(wrong) == 1 and None not in wrong:
                raise SystemicError(
                    f"{self.mode}: model {self._model} returned {dims[0]}-dim vectors on "
                    f"{exc.attempts} attempts, expected {self.dimension} "
                    f"(output_dimensionality={self.output_dimensionality}); check --model and "
                    "--output-dimensionality"
                ) from None
            raise SystemicError(
                f"{self.mode}: the API did not answer the preflight call after "
                f"{exc.attempts} attempts: {exc.last_exception}; check --api-base-url and the "
                "service status, then rerun"
            ) from None
        except BackendError as exc:
            if exc.kind is ErrorKind.BAD_INPUT and text:
                self.preflight(None)  # the text was refused, not the call: let a probe decide
                return None
            raise self._systemic(exc) from None

    def _preflight_once(
        self, text: str, title: str | None, dims: list[int | None]
    ) -> np.ndarray:
        """One preflight attempt; notes the dimension it got, for the verdict."""
        send_title = title if self._task_type == "RETRIEVAL_DOCUMENT" else None
        if self._prompt is not None:
            text, send_title = self._prompt.apply(text, send_title), None
        embeddings = self._call([text], send_title)
        values = getattr(embeddings[0], "values", None) if len(embeddings) == 1 else None
        got = None if values is None else len(values)
        dims.append(None if got == self.dimension else got)
        row = self._checked(embeddings, 1)  # malformed: a transient BackendError, retried
        return (l2_normalize(row) if self.renormalized else row)[0]

    def _systemic(self, exc: BackendError) -> SystemicError:
        code = exc.status
        detail = str(exc).removeprefix(f"{self.mode}: ")
        if code in (401, 403):
            if self.mode == "vertex" and self.vertex_auth != "api_key":
                hint = (
                    "check Application Default Credentials (gcloud auth application-default "
                    f"login), the project ({self.project or 'from the environment'}) and that "
                    "the Vertex AI API is enabled"
                )
                return SystemicError(f"vertex: the credentials were rejected ({detail}) — {hint}")
            return SystemicError(
                f"{self.mode}: the API key was rejected ({detail}) — check "
                f"{' / '.join(self.api_key_env)} or --api-key-file"
            )
        if code == 404:
            return SystemicError(
                f"{self.mode}: model {self._model!r} was not found ({detail}) — check --model"
            )
        return SystemicError(f"{self.mode}: the preflight call failed: {detail}")
