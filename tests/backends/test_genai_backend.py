"""GenaiBackend through the real google-genai client, against the emulator.

Both modes (Gemini API with a key; Vertex with project paths, anonymous
credentials, and express mode with a key), every vector checked against
``expected_vector``, and every failure mapped to the right error.
"""

from __future__ import annotations

import os
import pickle
import time
import types as pytypes
from importlib.metadata import version

import numpy as np
import pytest

from beamvec.backends import genai_models
from beamvec.backends.genai import GenaiBackend, native_dimension
from beamvec.emulator import Emulator, expected_vector
from beamvec.errors import BackendError, SystemicError

from helpers import API_KEY

# Loopback only: never through a proxy, whatever the host says.
os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1,localhost"]))

KEY = API_KEY
TEXTS = ["the cat sat on the mat", "markets fell sharply", "a kitten on a rug", "rain tomorrow"]


@pytest.fixture
def emu(emulator: Emulator) -> Emulator:
    """conftest's emulator (it accepts ``API_KEY``, which ``key_env`` sets), by a short name."""
    return emulator


def make(emu, mode="gemini", **kw):
    kw.setdefault("timeout_s", 5)
    if mode == "vertex":
        kw.setdefault("vertex_auth", "anonymous")
        kw.setdefault("project", "proj")
        kw.setdefault("location", "us-central1")
    return GenaiBackend(mode=mode, api_base_url=emu.url, **kw)


def expected(model, task, dim, texts, titles=None):
    titles = titles or [None] * len(texts)
    rows = np.stack(
        [
            expected_vector(model, task, dim, t, title=ti)
            for t, ti in zip(texts, titles, strict=True)
        ]
    )
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# -- vectors ------------------------------------------------------------------

#: Native output sizes as Google publishes them (ai.google.dev and Vertex AI model
#: cards), written here so the check does not read the table the code uses.
PUBLISHED_DIMENSIONS = {"gemini-embedding-001": 3072, "text-embedding-005": 768}


@pytest.mark.parametrize(
    ("mode", "model", "auth"),
    [
        ("gemini", "gemini-embedding-001", None),
        ("vertex", "gemini-embedding-001", "anonymous"),  # :batchEmbedContents
        ("vertex", "text-embedding-005", "anonymous"),  # :predict
        ("vertex", "gemini-embedding-001", "api_key"),  # express mode
    ],
)
@pytest.mark.parametrize("dim", [None, 768])
def test_vectors_match_the_emulator(emu, key_env, mode, model, auth, dim):
    kw = {"vertex_auth": auth} if auth else {}
    b = make(emu, mode, model=model, output_dimensionality=dim, task_type="clustering", **kw)
    b.load()
    vecs = b.embed(TEXTS)
    want = dim or PUBLISHED_DIMENSIONS[model]
    assert vecs.shape == (len(TEXTS), want) and vecs.dtype == np.float32
    np.testing.assert_allclose(vecs, expected(model, "CLUSTERING", want, TEXTS), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert b.describe()["normalization"] == ("l2" if want != PUBLISHED_DIMENSIONS[model] else "native")
    assert native_dimension(model) == PUBLISHED_DIMENSIONS[model]
    assert b.normalized


def test_full_3072_vectors_are_native(emu, key_env):
    b = make(emu, output_dimensionality=3072)
    vecs = b.embed(TEXTS[:2])
    np.testing.assert_allclose(
        vecs, expected("gemini-embedding-001", None, 3072, TEXTS[:2]), atol=1e-6
    )
    d = b.describe()
    assert d["normalization"] == "native" and d["output_dimensionality"] == 3072
    assert d["dimension"] == 3072 and d["backend"] == "gemini"


@pytest.mark.parametrize("mode", ["gemini", "vertex"])
def test_multimodal_model_gets_one_vector_per_text(emu, key_env, mode):
    model = "gemini-embedding-2-preview"
    b = make(emu, mode, model=model, output_dimensionality=768)
    vecs = b.embed(TEXTS)
    np.testing.assert_allclose(vecs, expected(model, None, 768, TEXTS), atol=1e-6)


#: google-genai's Vertex routing for gemini models, read in each release's
#: models.py: from 3.4 several contents go to :batchEmbedContents; 2.x and
#: 3.0-3.3 send gemini-embedding-001 to :predict and other gemini models to
#: :embedContent. Written here, not read from the code under test.
SDK_BATCHES_FROM = (3, 4)


def _installed_sdk() -> tuple[int, int]:
    major, minor = version("google-genai").split(".")[:2]
    return int(major), int(minor)


@pytest.mark.parametrize("model", ["gemini-embedding-001", "gemini-embedding-2-preview"])
def test_vertex_gemini_calls_follow_the_installed_sdk(emu, model):
    """From google-genai 3.4 a Vertex gemini-embedding-001 batch is one
    :batchEmbedContents call; below 3.4 (2.x and 3.0-3.3) it goes to :predict,
    one instance per request on Vertex, so beamvec sends one text per call and
    says so in its limits. gemini-embedding-2 on Vertex is served one content
    per :embedContent call (Google's model page), whatever the SDK.
    (scripts/test_genai_floor.sh runs this at 2.0, 3.3, 3.4 and the newest.)"""
    batches = _installed_sdk() >= SDK_BATCHES_FROM
    b = make(emu, "vertex", model=model, output_dimensionality=768)
    vecs = b.embed(TEXTS)
    np.testing.assert_allclose(vecs, expected(model, None, 768, TEXTS), atol=1e-6)
    routes = emu.stats()["by_route"]
    if model.startswith("gemini-embedding-2"):
        assert routes == {"vertex:embedContent": len(TEXTS)}
        assert b.limits.max_items == 1
    elif batches:
        assert routes == {"vertex:batchEmbedContents": 1}
        assert b.limits.max_items == 250
    else:
        assert routes == {"vertex:predict": len(TEXTS)}
        assert (b.limits.max_items, b.limits.max_request_tokens) == (1, 2048)


@pytest.mark.parametrize(
    ("installed", "batches"),
    [("2.0.0", False), ("2.34.0", False), ("3.0.0", False), ("3.3.0", False),
     ("3.4.0", True), ("3.4.0rc1", True), ("3.6.1", True), ("4.0.0", True)],
)
def test_routing_is_decided_by_the_full_version_not_the_major(monkeypatch, installed, batches):
    genai_models.sdk_batches_vertex_gemini.cache_clear()
    monkeypatch.setattr(genai_models.metadata, "version", lambda name: installed)
    try:
        assert genai_models.sdk_batches_vertex_gemini() is batches
    finally:
        genai_models.sdk_batches_vertex_gemini.cache_clear()


def test_one_text_per_call_where_the_sdk_cannot_batch(emu, monkeypatch):
    """The 2.x path, whatever SDK is installed: one call per text, rows in order,
    limits of one text; Gemini API and Vertex text-* models are not affected."""
    monkeypatch.setattr(genai_models, "sdk_batches_vertex_gemini", lambda: False)
    model = "gemini-embedding-2-preview"
    b = make(emu, "vertex", model=model, output_dimensionality=768)
    assert b.one_text_per_call and b.limits.max_items == 1
    vecs = b.embed(TEXTS)
    np.testing.assert_allclose(vecs, expected(model, None, 768, TEXTS), atol=1e-6)
    assert emu.stats()["requests"] == len(TEXTS)
    assert not make(emu, "vertex", model="text-embedding-005").one_text_per_call
    assert make(emu, "vertex", model="text-embedding-005").limits.max_items == 250
    assert not make(emu, model=model, output_dimensionality=768).one_text_per_call


def test_the_sdk_merges_plain_strings_for_multimodal_models(emu, key_env):
    """Why every text is wrapped in its own Content: a list of strings is ONE input."""
    b = make(emu, model="gemini-embedding-2-preview")
    b.load()
    response = b._client.models.embed_content(model=b.model, contents=TEXTS)
    assert len(response.embeddings) == 1


def test_titles_group_calls_and_keep_order(emu, key_env):
    b = make(emu, task_type="RETRIEVAL_DOCUMENT", output_dimensionality=256)
    titles = ["A", None, "B", "A"]
    vecs = b.embed(TEXTS, titles)
    np.testing.assert_allclose(
        vecs,
        expected("gemini-embedding-001", "RETRIEVAL_DOCUMENT", 256, TEXTS, titles),
        atol=1e-6,
    )
    assert emu.stats()["by_route"] == {"gemini:batchEmbedContents": 3}


def test_titles_are_only_sent_for_retrieval_document(emu, key_env):
    b = make(emu, task_type="RETRIEVAL_QUERY", output_dimensionality=256)
    vecs = b.embed(TEXTS, ["A", "B", "C", "D"])
    np.testing.assert_allclose(
        vecs, expected("gemini-embedding-001", "RETRIEVAL_QUERY", 256, TEXTS), atol=1e-6
    )
    assert emu.stats()["by_route"] == {"gemini:batchEmbedContents": 1}


def test_limits_per_mode(emu, monkeypatch):
    monkeypatch.setattr(genai_models, "sdk_batches_vertex_gemini", lambda: True)  # 3.x
    g = make(emu).limits
    assert (g.max_items, g.max_text_tokens, g.dimension) == (100, 2048, 3072)
    v = make(emu, "vertex", output_dimensionality=768).limits
    assert (v.max_items, v.max_request_tokens, v.max_text_tokens, v.dimension) == (
        250,
        20000,
        2048,
        768,
    )


def test_a_full_vertex_batch_fits_the_emulator(emu, key_env):
    b = make(emu, "vertex", model="text-embedding-005")
    texts = [f"text number {i} " * 10 for i in range(b.limits.max_items)]
    assert b.embed(texts).shape == (250, 768)


# -- failures -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "dimension", "nan"])
@pytest.mark.parametrize("mode", ["gemini", "vertex"])
def test_malformed_responses_are_retryable_errors(emu, key_env, kind, mode):
    emu.update(malformed=1.0, malformed_kinds=(kind,))
    b = make(emu, mode, output_dimensionality=768)
    with pytest.raises(BackendError) as err:
        b.embed(TEXTS)
    assert err.value.retryable and err.value.status is None
    assert "malformed response" in str(err.value)


def test_quota_429_carries_retry_after(key_env):
    with Emulator(api_key=KEY, rpm=1, window_s=2.0) as emu:
        b = make(emu)
        b.embed(TEXTS[:1])
        with pytest.raises(BackendError) as err:
            b.embed(TEXTS[:1])
    assert err.value.status == 429 and err.value.retryable
    assert err.value.retry_after is not None and 1.0 <= err.value.retry_after <= 2.0


@pytest.mark.parametrize(("fault", "status"), [("fail_500", 500), ("fail_503", 503)])
def test_server_errors_are_retryable(emu, key_env, fault, status):
    emu.update(**{fault: 1.0})
    with pytest.raises(BackendError) as err:
        make(emu).embed(TEXTS)
    assert err.value.status == status and err.value.retryable


def test_hang_becomes_a_retryable_timeout(key_env):
    with Emulator(api_key=KEY, hang=1.0, hang_s=2.0) as emu:
        b = make(emu, timeout_s=0.3)
        with pytest.raises(BackendError) as err:
            b.embed(TEXTS)
    assert err.value.retryable and err.value.status is None
    assert "timed out" in str(err.value)


@pytest.mark.parametrize("mode", ["gemini", "vertex"])
def test_connection_reset_is_retryable(key_env, mode):
    with Emulator(api_key=KEY, reset=1.0) as emu, pytest.raises(BackendError) as err:
        make(emu, mode).embed(TEXTS)
    assert err.value.retryable and err.value.status is None


def test_over_long_text_is_a_400_on_vertex(emu, key_env):
    b = make(emu, "vertex", model="text-embedding-005")
    with pytest.raises(BackendError) as err:
        b.embed(["x" * (2048 * 6 + 8)])  # over 2,048 tokens; Vertex would truncate silently, we ask it not to
    assert err.value.status == 400 and not err.value.retryable


def test_empty_text_is_a_400(emu, key_env):
    with pytest.raises(BackendError) as err:
        make(emu, "vertex", model="text-embedding-005").embed(["a", ""])
    assert err.value.status == 400 and not err.value.retryable


def test_wrong_key_stops_the_run_without_showing_it(emu, monkeypatch):
    wrong = "fakekey-Sy-WRONG-secret-987654"
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", wrong)
    b = make(emu)
    with pytest.raises(SystemicError) as err:
        b.preflight()
    message = str(err.value)
    assert "API key was rejected" in message and "GEMINI_API_KEY" in message
    assert wrong not in message
    # In a batch it is an auth failure (never a bad text to bisect), still without the key.
    with pytest.raises(BackendError) as berr:
        b.embed(TEXTS)
    assert berr.value.status == 401 and not berr.value.retryable
    assert wrong not in str(berr.value)


def test_missing_key_names_what_to_set(emu, monkeypatch):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(SystemicError) as err:
        make(emu).preflight()
    assert "GEMINI_API_KEY" in str(err.value) and "--api-key-file" in str(err.value)


def test_key_file(emu, monkeypatch, tmp_path):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    make(emu, api_key_file=str(path)).preflight()
    with pytest.raises(SystemicError, match="cannot read"):
        make(emu, api_key_file=str(tmp_path / "nope")).load()


def test_unknown_model_is_systemic(emu, key_env):
    b = make(emu, model="no-such-embedding-model", output_dimensionality=64)
    with pytest.raises(SystemicError) as err:
        b.preflight()
    assert "no-such-embedding-model" in str(err.value) and "404" in str(err.value)


def test_wrong_dimension_is_systemic(emu, key_env):
    emu.update(malformed=1.0, malformed_kinds=("dimension",))
    with pytest.raises(SystemicError, match="3071-dim"):
        make(emu).preflight()


def test_vertex_credentials_rejected_is_systemic(key_env):
    with (
        Emulator(bearer_token="the-right-token") as emu,
        pytest.raises(SystemicError, match="credentials were rejected"),
    ):
        make(emu, "vertex").preflight()


def test_preflight_gives_up_on_a_service_that_stays_down(emu, key_env):
    emu.update(fail_503=1.0)
    b = make(emu)
    b.PREFLIGHT_MAX_WAIT_S = 0.01
    with pytest.raises(SystemicError, match="did not answer"):
        b.preflight()
    assert emu.stats()["by_status"] == {"503": b.PREFLIGHT_ATTEMPTS}


def test_vertex_without_adc_is_systemic(monkeypatch, tmp_path):
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    b = GenaiBackend(mode="vertex", api_base_url="http://127.0.0.1:9")
    with pytest.raises(SystemicError, match="Application Default Credentials"):
        b.load()


def test_messages_never_carry_the_key(emu, key_env):
    """Google echoes a bad key in its error details; scrub it wherever it shows."""
    b = make(emu)
    b.load()
    fake = pytypes.SimpleNamespace(
        code=400,
        status="INVALID_ARGUMENT",
        message=f"API key not valid: {KEY} (see ?key={KEY})",
        details={"error": {"details": []}},
        response=None,
    )
    mapped = b._map_api_error(fake)
    assert KEY not in str(mapped) and "***" in str(mapped)


# -- construction and pickling ------------------------------------------------


def test_pickled_backend_carries_no_key_and_no_client(emu, key_env):
    b = make(emu, "gemini", output_dimensionality=768)
    b.load()
    b.embed(TEXTS[:1])
    blob = pickle.dumps(b)
    assert KEY.encode() not in blob
    clone = pickle.loads(blob)
    assert clone._client is None and clone._secret is None
    np.testing.assert_allclose(clone.embed(TEXTS[:2]), b.embed(TEXTS[:2]))


def test_constructor_validates():
    with pytest.raises(ValueError, match="task type"):
        GenaiBackend(task_type="NOT_A_TASK")
    with pytest.raises(ValueError, match="mode"):
        GenaiBackend(mode="openai")
    with pytest.raises(ValueError, match="at most 3072"):
        GenaiBackend(output_dimensionality=4096)
    with pytest.raises(ValueError, match="native dimension"):
        GenaiBackend(model="mystery-model")
    with pytest.raises(ValueError, match="emulators"):
        GenaiBackend(mode="vertex", vertex_auth="anonymous")
    assert GenaiBackend(task_type="retrieval_query").task_type == "RETRIEVAL_QUERY"
    assert GenaiBackend(model="text-embedding-004").limits.dimension == 768


def test_api_key_secret_is_read_on_the_worker_from_secret_manager(monkeypatch):
    """The reference travels; the key is fetched in load(), never pickled."""
    import pickle
    import sys
    import types as pytypes

    from beamvec.backends.genai import GenaiBackend

    asked = []

    class _Client:
        def access_secret_version(self, name):
            asked.append(name)
            return pytypes.SimpleNamespace(payload=pytypes.SimpleNamespace(data=b"fakekey-FROM-SECRET-MANAGER\n"))

    fake = pytypes.ModuleType("google.cloud.secretmanager")
    fake.SecretManagerServiceClient = _Client
    monkeypatch.setitem(sys.modules, "google.cloud.secretmanager", fake)
    import google.cloud

    monkeypatch.setattr(google.cloud, "secretmanager", fake, raising=False)
    backend = GenaiBackend(mode="gemini", api_key_secret="projects/p/secrets/gemini-key",
                           api_base_url="http://127.0.0.1:9")
    shipped = pickle.dumps(backend)
    assert b"fakekey-FROM" not in shipped
    assert backend._read_key() == "fakekey-FROM-SECRET-MANAGER"
    assert asked == ["projects/p/secrets/gemini-key/versions/latest"]


# -- preflight: one retry policy, and the vector is kept -------------------------


def _expected_one(model, task, dim, text):
    """The emulator's vector for ``text``, normalized as beamvec returns it."""
    return expected(model, task, dim, [text])[0]


@pytest.mark.parametrize("dim", [None, 768])
def test_preflight_returns_the_vector_of_the_text_it_was_given(emu, key_env, dim):
    b = make(emu, output_dimensionality=dim, task_type="RETRIEVAL_DOCUMENT")
    text = "a real text the run needs"
    vector = b.preflight(text)
    want = dim or 3072  # gemini-embedding-001: 3,072 dimensions (Google's model card)
    assert vector.shape == (want,) and vector.dtype == np.float32
    np.testing.assert_allclose(
        vector, _expected_one("gemini-embedding-001", "RETRIEVAL_DOCUMENT", want, text), atol=1e-6
    )
    # exactly what embed() would have returned for it, and it cost exactly one text
    np.testing.assert_allclose(vector, b.embed([text])[0], atol=1e-7)
    stats = emu.stats()
    assert stats["requests"] == 2 and stats["texts_embedded"] == 2


def test_the_preflight_is_timed_when_its_request_leaves_not_when_the_call_begins(emu, key_env, monkeypatch):
    """The server's window takes the preflight in when its request is
    written; building the client before it took 0.4-0.65 s in real runs. An
    order of events: a client that takes 0.3 s to build, then the request."""
    from beamvec.backends import genai_auth

    built: list[float] = []
    real = genai_auth.key_client

    def slow(*args, **kwargs):
        client = real(*args, **kwargs)
        time.sleep(0.3)
        built.append(time.time())
        return client

    monkeypatch.setattr(genai_auth, "key_client", slow)
    b = make(emu, output_dimensionality=64)
    called = time.time()
    b.preflight("a real text the run needs")
    returned = time.time()
    assert built and called < built[0] <= b.preflight_sent_at <= returned
    assert emu.stats()["requests"] == 1


def test_preflight_without_a_text_embeds_the_probe(emu, key_env):
    vector = make(emu, output_dimensionality=64).preflight()
    np.testing.assert_allclose(
        vector, _expected_one("gemini-embedding-001", None, 64, "beamvec preflight"), atol=1e-6
    )


def _seed_with_faults(config_kw, wanted):
    """A fault seed whose first draws are ``wanted`` (the emulator's own injector)."""
    from beamvec.emulator.config import EmulatorConfig
    from beamvec.emulator.faults import FaultInjector

    config = EmulatorConfig(**config_kw)
    for seed in range(10_000):
        injector = FaultInjector(seed)
        if [injector.draw(config)[0] for _ in wanted] == list(wanted):
            return seed
    raise AssertionError("no seed found")


@pytest.mark.parametrize("kind", ["dimension", "missing", "nan"])
def test_preflight_retries_one_malformed_reply_instead_of_blaming_the_model(key_env, kind):
    faults = {"malformed": 0.5, "malformed_kinds": (kind,)}
    seed = _seed_with_faults(faults, ["malformed", None])
    with Emulator(api_key=KEY, seed=seed, **faults) as emu:
        b = make(emu, output_dimensionality=256)
        b.PREFLIGHT_MAX_WAIT_S = 0.01
        vector = b.preflight("the first reply to this is broken")
        stats = emu.stats()
    np.testing.assert_allclose(
        vector,
        _expected_one("gemini-embedding-001", None, 256, "the first reply to this is broken"),
        atol=1e-6,
    )
    assert stats["requests"] == 2


@pytest.mark.parametrize("mode", ["gemini", "vertex"])
def test_rejected_credentials_at_preflight_are_one_systemic_line_without_the_key(mode, monkeypatch):
    wrong = "fakekey-Sy-WRONG-secret-987654"
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", wrong)
    # gemini: a wrong key is Google's 400 API_KEY_INVALID; vertex: a wrong token is a 401
    with Emulator(api_key=KEY, bearer_token="the-right-token") as emu:
        with pytest.raises(SystemicError) as err:
            make(emu, mode).preflight("some text")
        stats = emu.stats()
    message = str(err.value)
    assert "\n" not in message and wrong not in message
    assert "rejected" in message
    assert stats["requests"] == 1  # never retried


def test_a_text_the_api_refuses_falls_back_to_the_probe(emu, key_env):
    b = make(emu, "vertex", model="text-embedding-005")
    assert b.preflight("字" * 2100) is None  # over the limit (one token a Han character): a 400 for that text
    assert emu.stats()["requests"] == 2  # the text, then the probe that checks the rest


@pytest.mark.parametrize("mode", ["gemini", "vertex"])
def test_the_send_gate_runs_before_each_request_leaves(emu, key_env, mode):
    """Pacing is applied where the request leaves (httpx's request hook), once
    per HTTP request: at each call of the gate the server has answered exactly
    the requests before it, and a batch sent as several calls passes it once a call."""
    b = make(emu, mode=mode, task_type="RETRIEVAL_DOCUMENT", output_dimensionality=256)
    seen: list[int] = []
    left: list[tuple[int, float]] = []  # (gate calls so far, when the request was written)

    class Gate:
        def __call__(self) -> None:
            seen.append(emu.stats(with_texts=False)["requests"])
            self.called = time.monotonic()

        def left(self, at: float) -> None:
            assert self.called <= at <= time.monotonic()
            left.append((len(seen), at))

    titles = ["A", None, "B", "A"]
    vecs = b.embed_paced(TEXTS, titles, Gate())
    np.testing.assert_allclose(
        vecs, expected("gemini-embedding-001", "RETRIEVAL_DOCUMENT", 256, TEXTS, titles), atol=1e-6
    )
    calls = emu.stats(with_texts=False)["requests"]
    assert calls >= 3  # one per title (vertex through google-genai 2.x: one per text)
    assert seen == list(range(calls))
    # each request reported written once, after its own gate call and before the next
    assert [n for n, _ in left] == list(range(1, calls + 1))
    b.embed(TEXTS[:1])  # outside embed_paced: no gate
    assert seen == list(range(calls)) and len(left) == calls
    assert pickle.loads(pickle.dumps(b))._sending is None  # the thread-local never travels


def test_the_embedder_books_every_request_of_a_batch_with_the_limiter(emu, key_env):
    from beamvec.embed.embedder import Embedder, EmbedSettings
    from beamvec.quota import Limiter
    from beamvec.records import Record, content_hash

    b = make(emu, task_type="RETRIEVAL_DOCUMENT", output_dimensionality=256)
    limiter = Limiter(6000, 10**6)
    left: list[float] = []
    on_left = limiter.on_left
    limiter.on_left = lambda at: (left.append(at), on_left(at))  # type: ignore[method-assign]
    embedder = Embedder(b, EmbedSettings(max_in_flight=1), limiter)
    titles = ["A", None, "B", "A"]
    batch = [Record(f"r{i}", t, content_hash(t), 10, False, i, title=ti)
             for i, (t, ti) in enumerate(zip(TEXTS, titles, strict=True))]
    done, failed = embedder.embed_batch(batch)
    embedder.close()
    assert not failed and len(done) == 4
    stats = limiter.stats()
    # three calls (one per title) booked as three requests, the batch's tokens once
    assert (stats.requests, stats.tokens) == (3, 40.0)
    assert len(left) == 3 and left == sorted(left)  # and each reported when it was written
    assert emu.stats()["requests"] == embedder.stats.snapshot()["requests"] == 3
    assert embedder.stats.snapshot()["in_flight"] == 0



def test_the_embedder_paces_tokens_as_vertex_reports_it_counted_them(emu, key_env):
    """Vertex `:predict` says how many tokens it counted: the limiter's token
    factor becomes the server's count over the request's estimate."""
    from beamvec.embed.embedder import Embedder, EmbedSettings
    from beamvec.quota import Limiter
    from beamvec.records import Record, content_hash

    b = make(emu, "vertex", model="text-embedding-005")
    limiter = Limiter(6000, 10**6)
    embedder = Embedder(b, EmbedSettings(max_in_flight=1), limiter)
    # Booked at 50 tokens a text: four times what the server counts for these short texts.
    batch = [Record(f"r{i}", t, content_hash(t), 50, False, i) for i, t in enumerate(TEXTS)]
    done, failed = embedder.embed_batch(batch)
    embedder.close()
    assert not failed and len(done) == 4
    counted = emu.stats()["tokens"]
    assert 0 < counted < 200
    assert limiter.stats().token_factor == pytest.approx(counted / 200, rel=1e-6)


def test_gemini_embedding_2_on_the_gemini_api_is_paced_by_counted_tokens(emu, key_env):
    """The Gemini API returns no counts with embeddings; its free :countTokens
    answers for gemini-embedding-2, so a worker's first calls are counted there
    too (three of them, a sample) and the limiter's token factor follows."""
    from beamvec.embed.embedder import Embedder, EmbedSettings
    from beamvec.quota import Limiter
    from beamvec.records import Record, content_hash

    b = make(emu, model="gemini-embedding-2", output_dimensionality=128)
    limiter = Limiter(6000, 10**6)
    embedder = Embedder(b, EmbedSettings(max_in_flight=1), limiter)
    booked = 0
    for n in range(5):
        batch = [Record(f"r{n}-{i}", f"{t} {n}", content_hash(f"{t} {n}"), 40, False, i)
                 for i, t in enumerate(TEXTS)]
        done, failed = embedder.embed_batch(batch)
        assert not failed and len(done) == 4
        booked += 160
        if n == 0:  # after the first call: the server's count over the estimate
            first = emu.stats()["tokens"]
            assert limiter.stats().token_factor == pytest.approx(first / 160, rel=1e-6)
    embedder.close()
    counted = [r for r in emu.received() if r.route.endswith("countTokens")]
    assert len(counted) == 3  # a sample, not every call
    assert emu.stats()["requests"] >= 5

# -- gemini-embedding-2: the task in the text -----------------------------------

#: Google's gemini-embedding-2 prompt formats (ai.google.dev/gemini-api/docs/embeddings,
#: task types), written here from the page.
GEMINI_2_FORMATS = {
    "RETRIEVAL_QUERY": "task: search result | query: {content}",
    "QUESTION_ANSWERING": "task: question answering | query: {content}",
    "FACT_VERIFICATION": "task: fact checking | query: {content}",
    "CODE_RETRIEVAL_QUERY": "task: code retrieval | query: {content}",
    "CLASSIFICATION": "task: classification | query: {content}",
    "CLUSTERING": "task: clustering | query: {content}",
    "SEMANTIC_SIMILARITY": "task: sentence similarity | query: {content}",
    "RETRIEVAL_DOCUMENT": "title: {title} | text: {content}",
}


def _documented(task, text, title=None):
    return GEMINI_2_FORMATS[task].format(content=text, title=title or "none")


@pytest.mark.parametrize("mode", ["gemini", "vertex"])
@pytest.mark.parametrize("task", sorted(GEMINI_2_FORMATS))
def test_gemini_2_gets_the_documented_prompt_and_no_task_type(emu, key_env, mode, task):
    """What the emulator receives is the documented text; and the vector is the
    one for NO task type (the emulator mixes a received task_type into it)."""
    from beamvec.records import content_hash

    model = "gemini-embedding-2"
    b = make(emu, mode, model=model, task_type=task, output_dimensionality=256)
    titles = ["Cats", None, "Markets", None]
    vecs = b.embed(TEXTS, titles)
    sent = [_documented(task, t, ti) for t, ti in zip(TEXTS, titles, strict=True)]
    received = emu.stats()["text_counts"]
    assert set(received) == {content_hash(s) for s in sent}
    np.testing.assert_allclose(vecs, expected(model, None, 256, sent), atol=1e-6)
    assert b.describe()["prompt_format"] == GEMINI_2_FORMATS[task]
    assert b.describe()["task_type"] == task


def test_gemini_2_query_and_document_vectors_of_one_text_differ(emu, key_env):
    text = ["why is the sky blue"]
    query = make(emu, model="gemini-embedding-2", task_type="RETRIEVAL_QUERY").embed(text)
    document = make(emu, model="gemini-embedding-2", task_type="RETRIEVAL_DOCUMENT").embed(text)
    assert float(query[0] @ document[0]) < 0.999


def test_gemini_2_input_limit_leaves_room_for_the_prompt(emu, key_env):
    """8,192 tokens for gemini-embedding-2 (Google's model table), 2,048 for 001;
    the text's own share is less the template's."""
    two = make(emu, model="gemini-embedding-2", task_type="RETRIEVAL_DOCUMENT").limits
    assert 8192 - 300 < two.max_text_tokens < 8192
    assert make(emu, model="gemini-embedding-2").limits.max_text_tokens == 8192
    assert make(emu).limits.max_text_tokens == 2048


def test_gemini_2_token_count_includes_the_prompt(emu, key_env):
    plain = make(emu, model="gemini-embedding-2")
    prompted = make(emu, model="gemini-embedding-2", task_type="RETRIEVAL_QUERY")
    text = "the cat sat on the mat " * 20
    prefix = "task: search result | query: "
    assert prompted.count_tokens(text) - plain.count_tokens(text) == pytest.approx(len(prefix) / 4, abs=2)


def test_vertex_predict_reports_the_servers_token_count(emu, key_env):
    b = make(emu, "vertex", model="text-embedding-005")
    b.embed(TEXTS)
    assert b.server_tokens() == emu.stats()["tokens"] > 0
    g = make(emu)
    g.embed(TEXTS)  # :batchEmbedContents carries no statistics
    assert g.server_tokens() is None


def test_a_change_of_prompt_format_is_a_new_configuration(emu, key_env):
    """The template is in the footer and the fingerprint; models without one
    keep the fingerprint they had (no key added), so old outputs stay reusable."""
    from beamvec.contract import Description
    from beamvec.driver.resolve import config_fingerprint
    from beamvec.route.prepare import PrepareConfig
    from beamvec.sources import ReaderConfig

    def described(**kw):
        return make(emu, model="gemini-embedding-2", output_dimensionality=256, **kw).describe()

    query, document = described(task_type="RETRIEVAL_QUERY"), described(task_type="RETRIEVAL_DOCUMENT")
    reader, prep = ReaderConfig(), PrepareConfig()
    changed = {**query, "prompt_format": "task: search result | query:{content}"}
    prints = {config_fingerprint(d, reader, prep) for d in (query, document, changed)}
    assert len(prints) == 3
    old = make(emu).describe()
    assert "prompt_format" not in old
    assert config_fingerprint(old, reader, prep) == config_fingerprint({**old, "prompt_format": None}, reader, prep)
    footer = Description.from_json({**query, "config_fingerprint": "f"})
    assert footer is not None and footer.to_json()["prompt_format"] == GEMINI_2_FORMATS["RETRIEVAL_QUERY"]
    other = Description.from_json({**changed, "config_fingerprint": "g"})
    assert any("prompt_format" in d for d in footer.differences(other))


# -- a 400 about length: the named text alone, no bisection ----------------------


@pytest.mark.parametrize(("mode", "model"), [("gemini", "gemini-embedding-001"), ("vertex", "text-embedding-005")])
def test_a_too_long_400_costs_two_calls_not_a_bisection(emu, key_env, mode, model):
    """A text the server counts over the limit (here: one never cut, sent raw).
    Google's message names no text ("The input token count (N) exceeds the
    maximum number of tokens allowed (M)."), so the longest is sent alone, then
    the others together: two extra calls, not a bisection."""
    from beamvec.backends.google_errors import TextTooLong
    from beamvec.embed.bisection import embed_with_bisection

    b = make(emu, mode, model=model, output_dimensionality=256)
    texts = [f"short text {i}" for i in range(10)]
    texts[6] = "x" * (2048 * 4 * 3)  # 24,576 letters: twice the 2,048 tokens a text (a word: one token per 6 letters)
    calls = []

    def call(part):
        calls.append(len(part))
        return b.embed(part)

    done, failed = embed_with_bisection(texts, call, suspect=lambda part: max(range(len(part)), key=lambda i: len(part[i])))
    assert [t for t, _ in failed] == [texts[6]]
    assert isinstance(failed[0][1], TextTooLong) and "too long" in str(failed[0][1])
    assert calls == [10, 1, 9]
    assert sorted(t for part, _ in done for t in part) == sorted(texts[:6] + texts[7:])
    assert emu.stats()["by_status"].get("400") == 2
    err = pickle.loads(pickle.dumps(failed[0][1]))
    assert isinstance(err, TextTooLong) and err.culprit == failed[0][1].culprit


def test_a_too_long_text_in_a_batch_split_by_title_is_the_one_dead_letter(emu, key_env):
    from beamvec import records as r
    from beamvec.embed.embedder import Embedder, EmbedSettings
    from beamvec.records import Record, content_hash

    b = make(emu, task_type="RETRIEVAL_DOCUMENT", output_dimensionality=256)
    texts, titles = ["a", "b", "x" * 40_000, "c"], ["T1", "T2", "T2", "T1"]
    batch = [Record(f"r{i}", t, content_hash(t), 1, False, i, title=ti)
             for i, (t, ti) in enumerate(zip(texts, titles, strict=True))]
    embedder = Embedder(b, EmbedSettings(max_in_flight=1))
    try:
        done, failed = embedder.embed_batch(batch)
    finally:
        embedder.close()
    assert [(d.id, d.reason) for d in failed] == [("r2", r.TEXT_TOO_LONG)]
    assert sorted(e.record.id for e in done) == ["r0", "r1", "r3"]
    assert emu.stats()["by_status"].get("400", 0) <= 3  # never a bisection of the batch
