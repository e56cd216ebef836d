"""The emulator speaks the Gemini API and Vertex AI protocol: shapes, limits,
keys, quota (three meters, three 429 hints), faults and stats; strict JSON,
models only where Google serves them, tokens per script. Raw httpx where it is
about strictness, google-genai where it is about the API."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

try:  # google-genai >= 3 ships httpx2, a drop-in fork of httpx
    import httpx
except ImportError:  # pragma: no cover - depends on the installed extras
    import httpx2 as httpx

from google import genai  # the real client, for what is about the API
from google.genai import errors as genai_errors
from google.genai import types

from beamvec.emulator import Emulator, EmulatorConfig, expected_vector
from beamvec.emulator.cli import build_parser
from beamvec.emulator.faults import FaultInjector
from beamvec.emulator.quota import FixedWindowQuota, SlidingWindowQuota, TokenBucketQuota
from beamvec.emulator.stats import content_hash
from beamvec.emulator.tokens import count_tokens, truncate
from beamvec.emulator.window import WindowPeak

from helpers import API_KEY

# Loopback only: never through a proxy, whatever the host says.
os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1,localhost"]))

KEY = API_KEY
GEMINI = "/v1beta/models/gemini-embedding-001"
VERTEX = "/v1beta1/projects/p/locations/us-central1/publishers/google/models"


@pytest.fixture
def emu(emulator: Emulator) -> Emulator:
    """conftest's emulator (it accepts ``API_KEY`` only), by this module's short name."""
    return emulator


@pytest.fixture
def client(emu):
    with httpx.Client(base_url=emu.url, headers={"x-goog-api-key": KEY}, timeout=5) as c:
        yield c


def gemini_body(texts, model="gemini-embedding-001", **extra):
    return {
        "requests": [
            {"model": f"models/{model}", "content": {"parts": [{"text": t}]}, **extra}
            for t in texts
        ]
    }


def bearer(token="tok"):
    return {"Authorization": f"Bearer {token}", "x-goog-api-key": ""}


# -- shapes -------------------------------------------------------------------


def test_gemini_batch_returns_expected_vectors(client):
    texts = ["alpha", "beta", "gamma"]
    r = client.post(f"{GEMINI}:batchEmbedContents", json=gemini_body(texts, taskType="CLUSTERING"))
    assert r.status_code == 200, r.text
    rows = [e["values"] for e in r.json()["embeddings"]]
    assert [len(v) for v in rows] == [3072] * 3
    for text, values in zip(texts, rows, strict=True):
        np.testing.assert_array_equal(
            np.float32(values), expected_vector("gemini-embedding-001", "CLUSTERING", 3072, text)
        )
        assert math.isclose(np.linalg.norm(values), 1.0, rel_tol=1e-5)


def test_smaller_output_is_an_unnormalized_prefix(client):
    r = client.post(
        f"{GEMINI}:batchEmbedContents", json=gemini_body(["x"], outputDimensionality=768)
    )
    values = np.float32(r.json()["embeddings"][0]["values"])
    full = expected_vector("gemini-embedding-001", None, 3072, "x")
    np.testing.assert_array_equal(values, full[:768])
    assert np.linalg.norm(values) < 0.9


def test_gemini_embed_content_single(client):
    body = {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "one"}]}}
    r = client.post(f"{GEMINI}:embedContent", json=body)
    assert r.status_code == 200
    assert len(r.json()["embedding"]["values"]) == 3072


def test_vertex_predict_shape_with_statistics(client):
    body = {
        "instances": [{"content": "a b c", "task_type": "RETRIEVAL_QUERY"}, {"content": "d"}],
        "parameters": {"outputDimensionality": 256},
    }
    r = client.post(f"{VERTEX}/text-embedding-005:predict", json=body, headers=bearer())
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 2
    emb = preds[0]["embeddings"]
    assert len(emb["values"]) == 256
    assert emb["statistics"] == {"token_count": 3, "truncated": False}  # "a", "b", "c": a token each
    np.testing.assert_array_equal(
        np.float32(emb["values"]),
        expected_vector("text-embedding-005", "RETRIEVAL_QUERY", 256, "a b c"),
    )


def test_vertex_embed_content_routes(client):
    content = {"parts": [{"text": "hello"}]}
    cfg = {"outputDimensionality": 128, "title": "T", "taskType": "RETRIEVAL_DOCUMENT"}
    r = client.post(
        f"{VERTEX}/gemini-embedding-001:batchEmbedContents",
        json={"requests": [{"content": content, "embedContentConfig": cfg}] * 2},
        headers=bearer(),
    )
    assert r.status_code == 200, r.text
    assert [len(e["values"]) for e in r.json()["embeddings"]] == [128, 128]
    np.testing.assert_array_equal(
        np.float32(r.json()["embeddings"][0]["values"]),
        expected_vector("gemini-embedding-001", "RETRIEVAL_DOCUMENT", 128, "hello", title="T"),
    )
    r = client.post(
        f"{VERTEX}/gemini-embedding-001:embedContent",
        json={"content": content, "embedContentConfig": cfg},
        headers=bearer(),
    )
    assert r.status_code == 200
    assert len(r.json()["embedding"]["values"]) == 128
    assert r.json()["usageMetadata"]["promptTokenCount"] == 1  # "hello"


def test_vertex_express_mode_path_takes_the_api_key(client):
    r = client.post(
        "/v1beta1/publishers/google/models/text-embedding-005:predict",
        json={"instances": [{"content": "hi"}]},
    )
    assert r.status_code == 200
    assert len(r.json()["predictions"][0]["embeddings"]["values"]) == 768


# -- limits -------------------------------------------------------------------


def test_gemini_batch_holds_at_most_100(client):
    assert client.post(
        f"{GEMINI}:batchEmbedContents", json=gemini_body([f"t{i}" for i in range(100)])
    ).is_success
    r = client.post(f"{GEMINI}:batchEmbedContents", json=gemini_body([f"t{i}" for i in range(101)]))
    assert r.status_code == 400
    assert r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "at most 100" in r.json()["error"]["message"]


def test_vertex_predict_items_and_tokens(client):
    url = f"{VERTEX}/text-embedding-005:predict"
    r = client.post(url, json={"instances": [{"content": "x"}] * 251}, headers=bearer())
    assert r.status_code == 400
    assert client.post(
        url, json={"instances": [{"content": "x"}] * 250}, headers=bearer()
    ).is_success
    long = "y" * (2048 * 6)  # 2048 tokens: a Latin word counts one token per 6 letters
    r = client.post(url, json={"instances": [{"content": long}] * 10}, headers=bearer())
    assert r.status_code == 400 and "20000" in r.json()["error"]["message"]
    assert client.post(
        url, json={"instances": [{"content": long}] * 9}, headers=bearer()
    ).is_success


def test_vertex_predict_takes_one_instance_of_a_gemini_model(client):
    """Vertex docs: gemini-embedding-001 supports one instance per request on :predict
    (where google-genai 2.x sends it)."""
    url = f"{VERTEX}/gemini-embedding-001:predict"
    r = client.post(url, json={"instances": [{"content": "a"}, {"content": "b"}]}, headers=bearer())
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    r = client.post(url, json={"instances": [{"content": "a"}]}, headers=bearer())
    assert r.is_success and len(r.json()["predictions"]) == 1


def test_text_over_2048_tokens(client):
    long = "z" * (2048 * 6 + 1)
    r = client.post(f"{GEMINI}:batchEmbedContents", json=gemini_body([long]))
    assert r.status_code == 400
    url = f"{VERTEX}/text-embedding-005:predict"
    r = client.post(
        url,
        json={"instances": [{"content": long}], "parameters": {"autoTruncate": False}},
        headers=bearer(),
    )
    assert r.status_code == 400
    r = client.post(url, json={"instances": [{"content": long}]}, headers=bearer())
    stats = r.json()["predictions"][0]["embeddings"]["statistics"]
    assert stats == {"token_count": 2048, "truncated": True}  # Vertex truncates by default


def test_empty_text_and_bad_task_are_400(client):
    assert client.post(f"{GEMINI}:batchEmbedContents", json=gemini_body([""])).status_code == 400
    r = client.post(f"{GEMINI}:batchEmbedContents", json=gemini_body(["a"], taskType="NOPE"))
    assert r.status_code == 400
    r = client.post(f"{GEMINI}:batchEmbedContents", content=b"{not json")
    assert r.status_code == 400


# -- keys, models, routes -----------------------------------------------------


def test_gemini_key_missing_wrong_and_in_query(emu):
    url = f"{emu.url}{GEMINI}:batchEmbedContents"
    body = gemini_body(["a"])
    r = httpx.post(url, json=body)
    assert r.status_code == 403
    assert r.json()["error"]["status"] == "PERMISSION_DENIED"
    r = httpx.post(url, json=body, headers={"x-goog-api-key": "wrong"})
    assert r.status_code == 400  # what Google answers to a wrong key
    err = r.json()["error"]
    assert err["status"] == "INVALID_ARGUMENT"
    assert err["details"][0]["reason"] == "API_KEY_INVALID"
    assert httpx.post(url, json=body, params={"key": KEY}).is_success


def test_vertex_requires_credentials(emu):
    url = f"{emu.url}{VERTEX}/text-embedding-005:predict"
    r = httpx.post(url, json={"instances": [{"content": "a"}]})
    assert r.status_code == 401
    assert r.json()["error"]["status"] == "UNAUTHENTICATED"
    assert httpx.post(url, json={"instances": [{"content": "a"}]}, headers=bearer()).is_success


def test_unknown_model_and_route_are_404(client):
    r = client.post(
        "/v1beta/models/no-such-model:batchEmbedContents", json=gemini_body(["a"], "no-such-model")
    )
    assert r.status_code == 404
    assert r.json()["error"]["status"] == "NOT_FOUND"
    assert "no-such-model" in r.json()["error"]["message"]
    assert client.post("/v1beta/elsewhere", json={}).status_code == 404


# -- quota --------------------------------------------------------------------


def test_rpm_quota_429_with_retry_info_and_retry_after():
    with (
        Emulator(rpm=3, window_s=5.0) as emu,  # 3 local calls fit in 5 s on a loaded machine
        httpx.Client(base_url=emu.url, headers={"x-goog-api-key": "any"}) as c,
    ):
        url = f"{GEMINI}:batchEmbedContents"
        assert all(c.post(url, json=gemini_body([f"q{i}"])).is_success for i in range(3))
        r = c.post(url, json=gemini_body(["q3"]))
        assert r.status_code == 429
        err = r.json()["error"]
        assert err["status"] == "RESOURCE_EXHAUSTED"
        delay = next(d for d in err["details"] if d["@type"].endswith("RetryInfo"))["retryDelay"]
        seconds = float(delay.rstrip("s"))
        assert 0 < seconds <= 5.0
        assert r.headers["Retry-After"] == str(math.ceil(seconds))
        time.sleep(seconds + 0.02)
        assert c.post(url, json=gemini_body(["q3"])).is_success
        stats = emu.stats()
        assert stats["by_status"] == {"200": 4, "429": 1}
        assert stats["peak_window_requests"]["accepted"] <= 3
        assert stats["peak_window_requests"]["all"] >= 4


def test_tpm_quota_counts_tokens():
    with (
        Emulator(tpm=10, window_s=1.0) as emu,
        httpx.Client(base_url=emu.url, headers={"x-goog-api-key": "any"}) as c,
    ):
        url = f"{GEMINI}:batchEmbedContents"
        assert c.post(url, json=gemini_body(["x" * 48])).is_success  # 8 tokens
        r = c.post(url, json=gemini_body(["y" * 48]))
        assert r.status_code == 429
        assert "tokens" in r.json()["error"]["message"]
        assert emu.stats()["peak_window_tokens"] == 8


def test_sliding_window_quota_waits_for_the_right_request():
    q = SlidingWindowQuota(window_s=10, max_requests=2, max_tokens=100)
    assert q.try_acquire(0.0, 10)[0]
    assert q.try_acquire(1.0, 80)[0]
    ok, wait, limit = q.try_acquire(2.0, 5)
    assert (ok, limit) == (False, "requests") and wait == pytest.approx(8.0)
    ok, wait, limit = q.try_acquire(10.5, 30)  # the first left; 80 + 30 > 100 until t=11
    assert (ok, limit) == (False, "tokens") and wait == pytest.approx(0.5)
    assert q.try_acquire(11.0, 30)[0]


def test_window_peak():
    peak = WindowPeak(1.0)
    for t in (0.0, 0.1, 0.2, 1.15, 1.3):
        peak.add(t, 1)
    assert peak.peak_count == 3  # (0.2, 1.2] holds only 2
    peak.add(1.35)
    assert peak.peak_count == 3


# -- faults and latency -------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status"), [("fail_500", "INTERNAL"), ("fail_503", "UNAVAILABLE")]
)
def test_server_errors(fault, status):
    with Emulator(**{fault: 1.0}) as emu:
        r = httpx.post(f"{emu.url}{GEMINI}:batchEmbedContents", json=gemini_body(["a"]))
        assert r.json()["error"]["status"] == status
        assert emu.stats()["faults"] == {fault: 1}


def test_connection_reset():
    with Emulator(reset=1.0) as emu:
        with pytest.raises(httpx.TransportError):
            httpx.post(f"{emu.url}{GEMINI}:batchEmbedContents", json=gemini_body(["a"]))
        assert emu.stats()["by_status"] == {"reset": 1}


def test_hang_outlasts_the_client_timeout():
    """A read timeout, not a closed connection (which the server sends after
    ``hang_s``): the client gave up first. The emulator counts the hang."""
    with Emulator(hang=1.0, hang_s=1.0) as emu:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{emu.url}{GEMINI}:batchEmbedContents", json=gemini_body(["a"]), timeout=0.2
            )
        stats = emu.stats()
        assert stats["faults"] == {"hang": 1} and stats["texts_embedded"] == 0


@pytest.mark.parametrize("kind", ["missing", "dimension", "nan"])
def test_malformed_200(kind):
    with Emulator(malformed=1.0, malformed_kinds=(kind,)) as emu:
        r = httpx.post(f"{emu.url}{GEMINI}:batchEmbedContents", json=gemini_body(["a", "b"]))
        assert r.status_code == 200
        rows = [e["values"] for e in r.json()["embeddings"]]  # json accepts NaN
        if kind == "missing":
            assert len(rows) == 1
        elif kind == "dimension":
            assert len(rows[0]) == 3071
        else:
            assert any(math.isnan(x) for x in rows[0])
        stats = emu.stats()
        assert stats["faults"] == {f"malformed_{kind}": 1}
        assert stats["texts_embedded"] == 0  # not billed as a good answer


def test_faults_are_seeded():
    def statuses(seed):
        with Emulator(fail_500=0.3, fail_503=0.3, seed=seed) as emu, httpx.Client() as c:
            url = f"{emu.url}{GEMINI}:batchEmbedContents"
            return [c.post(url, json=gemini_body(["a"])).status_code for _ in range(20)]

    first = statuses(7)
    assert first == statuses(7)
    assert {200, 500, 503} <= set(first)


def test_latency_and_jitter():
    """Each latency is drawn within latency_ms ± jitter_ms, and the server
    holds its answer that long: a client that waits a tenth of the least
    latency never gets one (a bound no machine's load can flip)."""
    config = EmulatorConfig(latency_ms=80, jitter_ms=20)
    draws = [FaultInjector(seed).draw(config)[1] for seed in range(200)]
    assert all(0.06 <= d <= 0.1 for d in draws)
    assert min(draws) < 0.065 and max(draws) > 0.095  # the jitter spans its range
    with Emulator(latency_ms=2000, jitter_ms=20) as emu, httpx.Client(timeout=0.2) as c:
        url = f"{emu.url}{GEMINI}:batchEmbedContents"
        for _ in range(3):
            with pytest.raises(httpx.ReadTimeout):
                c.post(url, json=gemini_body(["a"]))


def test_update_changes_faults_while_running(emu, client):
    url = f"{GEMINI}:batchEmbedContents"
    assert client.post(url, json=gemini_body(["a"])).is_success
    emu.update(fail_503=1.0)
    assert client.post(url, json=gemini_body(["a"])).status_code == 503
    emu.update(fail_503=0.0)
    assert client.post(url, json=gemini_body(["a"])).is_success


def test_config_rejects_bad_rates():
    with pytest.raises(ValueError):
        EmulatorConfig(fail_500=0.7, fail_503=0.7)
    with pytest.raises(ValueError):
        EmulatorConfig(hang=-0.1)


# -- stats --------------------------------------------------------------------


def test_stats_count_texts_and_reset(emu, client):
    url = f"{GEMINI}:batchEmbedContents"
    client.post(url, json=gemini_body(["same", "other"]))
    client.post(url, json=gemini_body(["same"]))
    stats = client.get("/stats").json()
    assert stats["texts_embedded"] == 3
    assert stats["text_counts"][content_hash("same")] == 2
    assert stats["texts"] == {"distinct": 2, "max_count": 2, "embedded_more_than_once": 1}
    assert stats["by_route"] == {"gemini:batchEmbedContents": 2}
    assert stats["tokens"] == 3  # three short words
    assert stats["models"] == {"gemini-embedding-001": 3}
    assert "text_counts" not in client.get("/stats", params={"texts": "0"}).json()
    assert client.post("/stats/reset").is_success
    assert emu.stats()["requests"] == 0 and emu.stats()["texts_embedded"] == 0


def test_peak_requests_per_window():
    with Emulator(window_s=5.0) as emu, httpx.Client() as c:  # 3 local calls fit in 5 s on a loaded machine
        url = f"{emu.url}{GEMINI}:batchEmbedContents"
        for _ in range(3):
            c.post(url, json=gemini_body(["a"]))
        time.sleep(5.05)
        c.post(url, json=gemini_body(["a"]))
        c.post(url, json=gemini_body(["a"]))
        peaks = emu.stats()["peak_window_requests"]
        assert peaks == {"all": 3, "accepted": 3, "ok": 3}


@pytest.mark.slow
def test_cli_serves_until_interrupted():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from beamvec.emulator import main; sys.exit(main(sys.argv[1:]))",
         "--port", "0", "--api-key", KEY, "--latency-ms", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        url = line.split()[3]
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/healthz").json() == {"ok": True}
        r = httpx.post(
            f"{url}{GEMINI}:batchEmbedContents",
            json=gemini_body(["a"]),
            headers={"x-goog-api-key": KEY},
        )
        assert r.is_success
    finally:
        proc.send_signal(2)  # SIGINT
        assert proc.wait(timeout=10) == 0


def test_local_vectors_carry_meaning():
    """--vectors local: the local ONNX model, zero-padded to the native size."""
    texts = ["a cat sits on the mat", "stock markets fell sharply", "a kitten rests on a rug"]
    with Emulator(vectors="local") as emu:
        r = httpx.post(
            f"{emu.url}{GEMINI}:batchEmbedContents",
            json=gemini_body(texts, outputDimensionality=768),
        )
    v = np.array([e["values"] for e in r.json()["embeddings"]])
    assert v.shape == (3, 768)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[2] > v[0] @ v[1] + 0.3


# -- Google's stand-in: strict JSON, endpoints, tokens, meters, hints --

def gemini_client(emu):
    return genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=emu.url))


def test_unknown_field_is_400_in_googles_words(client):
    url = f"{GEMINI}:batchEmbedContents"
    body = gemini_body(["a"])
    body["requests"][0]["taskTyp"] = "CLUSTERING"
    r = client.post(url, json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["status"] == "INVALID_ARGUMENT"
    want = "Invalid JSON payload received. Unknown name \"taskTyp\" at 'requests[0]': Cannot find field."
    assert err["message"] == want
    assert err["details"][0]["fieldViolations"] == [{"field": "requests[0]", "description": want}]
    body = gemini_body(["a"])
    body["requests"][0]["content"]["text"] = "a"  # a field of Part put on Content
    r = client.post(url, json=body)
    assert r.json()["error"]["message"] == (
        "Invalid JSON payload received. Unknown name \"text\" at 'requests[0].content': Cannot find field."
    )
    r = client.post(url, json={**gemini_body(["a"]), "dimension": 8})
    assert r.json()["error"]["message"] == 'Invalid JSON payload received. Unknown name "dimension": Cannot find field.'
    r = client.post(
        f"{VERTEX}/text-embedding-005:predict",
        json={"instances": [{"content": "a"}], "parameters": {"auto_truncat": False}},
        headers=bearer(),
    )
    assert r.status_code == 400
    assert "Unknown name \"auto_truncat\" at 'parameters'" in r.json()["error"]["message"]
    assert emu_texts(client) == 0  # nothing was embedded


def emu_texts(client):
    return client.get("/stats").json()["texts_embedded"]


def test_snake_case_is_the_same_field(client):
    body = {"requests": [{"content": {"parts": [{"text": "x"}]}, "task_type": "CLUSTERING",
                          "output_dimensionality": 8}]}  # fmt: skip
    r = client.post(f"{GEMINI}:batchEmbedContents", json=body)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(
        np.float32(r.json()["embeddings"][0]["values"]),
        expected_vector("gemini-embedding-001", "CLUSTERING", 8, "x"),
    )


def test_each_model_only_where_google_serves_it(emu, client):
    # text-embedding-005 is a Vertex AI model: the Gemini API does not know it
    r = client.post(
        "/v1beta/models/text-embedding-005:batchEmbedContents",
        json=gemini_body(["a"], "text-embedding-005"),
    )
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
    assert "not found for API version v1beta" in r.json()["error"]["message"]
    sdk = gemini_client(emu)  # held: a client garbage-collected mid-call closes its connection
    with pytest.raises(genai_errors.ClientError) as err:
        sdk.models.embed_content(model="text-embedding-005", contents="a")
    assert err.value.code == 404
    # gemini-embedding-2 is not served on Vertex :predict
    r = client.post(f"{VERTEX}/gemini-embedding-2:predict", json={"instances": [{"content": "a"}]},
                    headers=bearer())  # fmt: skip
    assert r.status_code == 400
    # and Vertex :embedContent takes one content
    assert client.post(
        f"{VERTEX}/gemini-embedding-2:embedContent",
        json={"content": {"parts": [{"text": "a"}]}}, headers=bearer(),
    ).is_success  # fmt: skip


def test_tokens_per_script_by_hand():
    # Latin words: ceil(len / 6) each; punctuation one each; spaces free.
    # Tokens cost money "," so count them wisely "." : nine tokens of one
    english = "Tokens cost money, so count them wisely."
    assert len(english) == 40 and count_tokens(english) == 9
    assert count_tokens("tokenizer") == 2
    chinese = "今天天气很好，我们一起去公园散步。明天可能会下雨，记得带伞。"  # one token a character
    assert len(chinese) == 30 and count_tokens(chinese) == 30
    assert count_tokens("東京タワー") == 5 and count_tokens("안녕하세요") == 5  # kana, hangul
    assert count_tokens("Привет мир") == 3  # Cyrillic ~3 a token: 6 -> 2, 3 -> 1
    assert count_tokens("नमस्ते") == 3  # Devanagari ~2 a token: 6 code points
    assert count_tokens("2024") == 4 and count_tokens("👍👍") == 2  # digits, emoji: one each
    assert count_tokens(truncate(chinese, 7)) == 7 and truncate(chinese, 7) == chinese[:7]
    assert truncate(english, 3) == "Tokens cost money"  # no trailing space kept


PROSE = (
    "The committee met on Tuesday to review the budget for the coming year. Several members "
    "argued that the old bridge should be repaired first, because inspectors had found cracks "
    "in two of its supports last winter. Others wanted the money spent on the library, which "
    "has not been renovated since it opened. After a long discussion, they asked the engineers "
    "for a detailed estimate and agreed to meet again in March."
)


def test_english_prose_counts_as_google_says_tokens_go():
    """Google: "a token is about 4 characters" and "100 tokens are about 60-80
    English words" (ai.google.dev/gemini-api/docs/tokens)."""
    tokens = count_tokens(PROSE)
    assert 3.5 <= len(PROSE) / tokens <= 4.6
    assert 60 <= 100 * len(PROSE.split()) / tokens <= 80


def test_vertex_statistics_count_per_script_and_truncate(client):
    url = f"{VERTEX}/text-multilingual-embedding-002:predict"
    han = "字" * 3000  # 3,000 tokens, over the 2,048 a text
    r = client.post(url, json={"instances": [{"content": "Привет мир"}, {"content": han}]},
                    headers=bearer())  # fmt: skip
    assert r.status_code == 200, r.text
    stats = [p["embeddings"]["statistics"] for p in r.json()["predictions"]]
    assert stats == [{"token_count": 3, "truncated": False}, {"token_count": 2048, "truncated": True}]
    np.testing.assert_array_equal(  # the vector of what was kept
        np.float32(r.json()["predictions"][1]["embeddings"]["values"]),
        expected_vector("text-multilingual-embedding-002", None, 768, "字" * 2048),
    )
    r = client.post(url, json={"instances": [{"content": han}], "parameters": {"autoTruncate": False}},
                    headers=bearer())  # fmt: skip
    assert r.status_code == 400
    assert "input token count (3000) exceeds the maximum number of tokens allowed (2048)" in r.text


def test_gemini_embedding_2_ignores_the_task_type(emu):
    client = gemini_client(emu)
    content = [types.Content(parts=[types.Part(text="task: search result | query: pumps")])]

    def vector(model, **config):
        got = client.models.embed_content(
            model=model, contents=content,
            config=types.EmbedContentConfig(output_dimensionality=768, **config),
        )  # fmt: skip
        return np.float32(got.embeddings[0].values)

    plain = vector("gemini-embedding-2")
    np.testing.assert_array_equal(vector("gemini-embedding-2", task_type="RETRIEVAL_QUERY"), plain)
    # gemini-embedding-001 takes the task type into its vector
    assert not np.array_equal(
        vector("gemini-embedding-001", task_type="RETRIEVAL_QUERY"), vector("gemini-embedding-001")
    )
    received = emu.received()
    assert [r.task_types for r in received[:2]] == [(None,), ("RETRIEVAL_QUERY",)]
    assert received[0].texts == ("task: search result | query: pumps",)
    assert received[0].tokens == (count_tokens("task: search result | query: pumps"),)
    assert {r.route for r in received} == {"gemini:batchEmbedContents"}
    over_http = httpx.get(f"{emu.url}/stats/received").json()["received"]
    assert [r["task_types"] for r in over_http] == [list(r.task_types) for r in received]


def test_count_tokens_is_served_and_free():
    text = "Tokens cost money, so count them wisely."
    with Emulator(api_key=KEY, rpm=1, window_s=60) as emu:
        client = gemini_client(emu)
        for _ in range(3):  # over the 1 request a minute, and never throttled
            got = client.models.count_tokens(model="gemini-embedding-2", contents=text)
            assert got.total_tokens == 9
        stats = emu.stats()
        assert stats["by_status"] == {"200": 3} and stats["texts_embedded"] == stats["tokens"] == 0
        client.models.embed_content(model="gemini-embedding-2", contents=text)  # quota intact
        r = httpx.post(
            f"{emu.url}{VERTEX}/gemini-embedding-001:countTokens",
            json={"contents": [{"parts": [{"text": text}]}]}, headers=bearer(),
        )  # fmt: skip
        assert r.status_code == 400
        assert r.json()["error"]["message"] == "Should provide instances for text model prediction."


def test_fixed_window_resets_at_the_boundary():
    q = FixedWindowQuota(window_s=10, max_requests=2, max_tokens=None)
    assert q.try_acquire(3.0, 1)[0] and q.try_acquire(4.0, 1)[0]
    ok, wait, limit = q.try_acquire(5.0, 1)
    assert (ok, limit) == (False, "requests") and wait == pytest.approx(5.0)  # until t=10
    assert not q.try_acquire(9.99, 1)[0]
    assert q.try_acquire(10.0, 1)[0] and q.try_acquire(10.5, 1)[0]  # a new window: two more
    # a sliding window would still hold t=3 and t=4 at t=10
    sliding = SlidingWindowQuota(10, 2, None)
    assert sliding.try_acquire(3.0, 1)[0] and sliding.try_acquire(4.0, 1)[0]
    assert not sliding.try_acquire(10.0, 1)[0]


def test_bucket_refills_continuously():
    q = TokenBucketQuota(window_s=10, max_requests=2, max_tokens=100)
    assert q.try_acquire(0.0, 80)[0] and q.try_acquire(0.0, 10)[0]  # starts full: a burst
    ok, wait, limit = q.try_acquire(0.0, 1)
    assert (ok, limit) == (False, "requests") and wait == pytest.approx(5.0)  # 0.2 a second
    ok, wait, limit = q.try_acquire(5.0, 40)  # one request back; tokens 10 + 50 = 60 >= 40
    assert ok
    ok, wait, limit = q.try_acquire(10.0, 60)  # requests 1, tokens 20 + 50 = 70 >= 60
    assert ok
    ok, wait, limit = q.try_acquire(10.0, 50)  # tokens 10: 40 more at 10 a second
    assert (ok, limit) == (False, "requests") and wait == pytest.approx(5.0)
    ok, wait, limit = q.try_acquire(15.0, 70)  # tokens 60 < 70: 1 s more
    assert (ok, limit) == (False, "tokens") and wait == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["sliding", "fixed", "bucket"])
def test_each_meter_holds_a_burst_to_the_quota(kind):
    with Emulator(rpm=3, window_s=30, quota_window=kind) as emu, httpx.Client() as c:
        url = f"{emu.url}{GEMINI}:batchEmbedContents"
        codes = [c.post(url, json=gemini_body([f"b{i}"])).status_code for i in range(8)]
    # a fixed window may turn over once during the burst: at most one quota more
    assert 3 <= codes.count(200) <= (6 if kind == "fixed" else 3)
    assert set(codes) == {200, 429}


@pytest.mark.parametrize("hint", ["exact", "seconds", "none"])
def test_the_429_hint(hint):
    with Emulator(rpm=1, window_s=30, retry_hint=hint) as emu, httpx.Client() as c:
        url = f"{emu.url}{GEMINI}:batchEmbedContents"
        assert c.post(url, json=gemini_body(["a"])).is_success
        r = c.post(url, json=gemini_body(["b"]))
    assert r.status_code == 429 and r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    infos = [d for d in r.json()["error"].get("details", []) if d["@type"].endswith("RetryInfo")]
    if hint == "none":
        assert infos == [] and "Retry-After" not in r.headers
        return
    delay = infos[0]["retryDelay"]
    precise = float(r.json()["error"]["message"].rsplit("Please retry in ", 1)[1].rstrip("s."))
    assert 0 < precise <= 30
    if hint == "exact":
        assert re.fullmatch(r"\d+\.\d{3}s", delay) and float(delay[:-1]) == pytest.approx(precise, abs=1e-3)
        assert r.headers["Retry-After"] == str(math.ceil(precise))
    else:  # whole seconds, cut down, as the Gemini API words it
        assert re.fullmatch(r"\d+s", delay) and int(delay[:-1]) == math.floor(precise)
        assert "Retry-After" not in r.headers


def test_cli_takes_the_meter_and_hint_flags(capsys):
    args = build_parser().parse_args(["--quota-window", "bucket", "--retry-hint", "seconds"])
    assert (args.quota_window, args.retry_hint) == ("bucket", "seconds")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--quota-window", "leaky"])
    with pytest.raises(ValueError):
        EmulatorConfig(retry_hint="sometimes")
