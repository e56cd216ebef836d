"""The local ONNX backend: pinned model, exact truncation, real similarity."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from beamvec.backends.local import MODEL_SHA256, LocalBackend, default_model_path, sha256_file


@pytest.fixture(scope="module")
def backend() -> LocalBackend:
    b = LocalBackend(threads=1)
    b.load()
    return b


def test_model_file_matches_its_pin():
    assert sha256_file(default_model_path()) == MODEL_SHA256


def test_vectors_are_unit_length_and_order_preserving(backend):
    texts = ["a cat sits on the mat", "stock markets fell sharply", "a kitten rests on a rug"]
    vecs = backend.embed(texts)
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[2] > vecs[0] @ vecs[1] + 0.3
    # batch composition does not change a text's vector (beyond float noise)
    alone = backend.embed([texts[1]])[0]
    np.testing.assert_allclose(alone, vecs[1], atol=1e-4)


def test_truncate_keeps_exactly_the_tokens_the_model_sees(backend):
    text = "word " * 600
    assert backend.count_tokens(text) == 600
    cut = backend.truncate(text, 254)
    assert backend.count_tokens(cut) == 254
    assert text.startswith(cut)
    np.testing.assert_allclose(backend.embed([cut])[0], backend.embed([text])[0], atol=1e-4)


def test_pickled_backend_carries_no_session(backend):
    clone = pickle.loads(pickle.dumps(backend))
    assert clone._session is None and clone._tokenizer is None
    np.testing.assert_allclose(clone.embed(["hello"])[0], backend.embed(["hello"])[0], atol=1e-6)


def test_model_dir_without_files_is_a_clear_error(tmp_path):
    from beamvec.backends.base import SystemicError

    with pytest.raises(SystemicError, match="no .onnx file"):
        LocalBackend(model_dir=str(tmp_path)).load()
