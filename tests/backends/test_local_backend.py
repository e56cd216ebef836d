"""The local ONNX backend: pinned model, exact truncation, real similarity."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from beamvec.backends.local import (
    MODEL_SHA256,
    LocalBackend,
    default_model_path,
    sha256_file,
    threads_per_process,
)


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


class CountingTokenizer:
    """Delegates to the real tokenizer and counts the texts it tokenizes."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.texts = 0

    def encode(self, text, *args, **kwargs):
        self.texts += 1
        return self.inner.encode(text, *args, **kwargs)

    def encode_batch(self, texts, *args, **kwargs):
        self.texts += len(texts)
        return self.inner.encode_batch(texts, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_text_is_tokenized_once_between_counting_and_embedding():
    texts = [f"sentence number {i} about {'rivers ' * (i % 7)}and hills" for i in range(40)]
    fresh = LocalBackend(threads=1)
    fresh.load()
    expected = fresh.embed(texts)  # nothing counted first: tokenized in the call
    counted = LocalBackend(threads=1)
    counted.load()
    counting = CountingTokenizer(counted._tokenizer)
    counted._tokenizer = counting
    tokens = [counted.count_tokens(t) for t in texts]  # what prepare does
    assert tokens == [len(fresh._tokenizer.encode(t, add_special_tokens=False).ids) for t in texts]
    got = counted.embed(texts)
    assert counting.texts == len(texts)  # once each, not twice
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # each kept encoding is used once: the cache does not grow with the corpus
    assert len(counted._encodings) == 0


def test_each_worker_process_takes_its_share_of_the_cores():
    cores = os.cpu_count() or 1
    assert threads_per_process(None, 1) == cores
    assert threads_per_process(None, 2) == max(1, cores // 2)
    assert threads_per_process(None, 64) == 1
    assert threads_per_process(3, 2) == 3  # asked for explicitly
    b = LocalBackend(processes=2)
    b.load()
    options = b._session.get_session_options()
    assert options.intra_op_num_threads == max(1, cores // 2)
    assert options.inter_op_num_threads == 1
