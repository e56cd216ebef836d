"""`beamvec search OUTPUT "query"`: the k records nearest to a query, by cosine.

The query is embedded with the backend and model the output was made with
(read from its manifest, else a footer): the local model runs here; gemini
and vertex are called once, with task RETRIEVAL_QUERY when the documents were
embedded as RETRIEVAL_DOCUMENT (else the documents' task). Vector files are
read in record batches with a running top-k heap, so memory is bounded by
one batch and k, never by the output's size.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from beamvec.backends import make_backend
from beamvec.backends.base import Backend
from beamvec.commands import (
    Parser,
    add_storage_option,
    description_of,
    dump_json,
    iter_batches,
    open_output,
    parse,
    progress,
    progress_done,
    shard_name,
    storage_options,
    vector_files,
    warn,
)
from beamvec.contract import Description, footer_of
from beamvec.contract import columns as col
from beamvec.errors import BackendError, SystemicError, UsageError
from beamvec.route.prepare import NORMALIZATIONS, normalize

DESCRIPTION = """\
Embed a query with the output's own backend and model, and print the k
nearest records (id, cosine score, source shard and line, a snippet of their
metadata). Texts are not stored in outputs: look the ids up in your inputs.

examples:
  beamvec search out/ "how do I parse a date" -k 5
  GEMINI_API_KEY=... beamvec search gs://bucket/vectors "kitten" --json

For a gemini/vertex output the query is sent once to the API (credentials as
for `beamvec run`); documents embedded as RETRIEVAL_DOCUMENT are searched with
a RETRIEVAL_QUERY embedding of the query.
"""

SNIPPET = 80
QUERY_TASK_FOR = {"RETRIEVAL_DOCUMENT": "RETRIEVAL_QUERY"}


def build_parser() -> Parser:
    parser = Parser("beamvec search", DESCRIPTION)
    parser.add_argument("output", metavar="OUTPUT", help="output root written by `beamvec run`")
    parser.add_argument("query", metavar="QUERY", help="the text to search for")
    parser.add_argument("-k", "--top-k", dest="k", type=int, default=10, help="results (default 10)")
    add_storage_option(parser)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_query_backend_flags(parser)
    return parser


def add_query_backend_flags(parser: Parser) -> None:
    """How to reach the output's backend for a query (search, embed)."""
    local = parser.add_argument_group("local backend")
    local.add_argument("--local-model-dir", "--local_model_dir", dest="local_model_dir", default=None,
                       help="the ONNX export the output was made with, if not the built-in model")
    local.add_argument("--local-threads", "--local_threads", dest="local_threads", type=int, default=0,
                       help="onnxruntime threads (0: all cores)")
    api = parser.add_argument_group("gemini / vertex backends")
    api.add_argument("--task-type", "--task_type", dest="task_type", default=None,
                     help="task of the query embedding (default: RETRIEVAL_QUERY for "
                     "RETRIEVAL_DOCUMENT outputs, else the output's task)")
    api.add_argument("--api-key-file", "--api_key_file", dest="api_key_file", default=None,
                     help="file holding the API key (else env GEMINI_API_KEY)")
    api.add_argument("--api-base-url", "--api_base_url", dest="api_base_url", default=None,
                     help="API base URL (a proxy or `beamvec emulator`)")
    api.add_argument("--api-version", "--api_version", dest="api_version", default=None)
    api.add_argument("--project", default=None, help="Vertex AI project (default: from ADC)")
    api.add_argument("--location", default=None, help="Vertex AI location")
    api.add_argument("--vertex-auth", "--vertex_auth", dest="vertex_auth", default="adc",
                     choices=("adc", "api_key", "anonymous"))


def main(argv: Sequence[str]) -> int:
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    if args.k < 1:
        raise UsageError("-k must be at least 1")
    result = search(args)
    print(dump_json(dataclasses.asdict(result)) if args.json else format_results(result))
    return 0


def query_backend(desc: Description | None, args: Any, url: str) -> Backend:
    """The output's backend and model, set up to embed a query."""
    name = desc.backend if desc else None
    model = desc.model if desc else None
    if name == "local":
        from beamvec.backends.local import MODEL_NAME

        if args.local_model_dir is None and model != MODEL_NAME:
            raise UsageError(
                f"{url} was embedded with the local model {model!r}, not the built-in one; "
                "pass --local-model-dir DIR pointing at that ONNX export"
            )
        return make_backend("local", model_dir=args.local_model_dir, threads=args.local_threads)
    if desc is not None and name in ("gemini", "vertex"):
        task = args.task_type or QUERY_TASK_FOR.get(desc.task_type, desc.task_type)
        config: dict[str, Any] = {
            "model": model,
            "task_type": task,
            "output_dimensionality": _dimensionality(desc),
            "api_key_file": args.api_key_file,
            "api_base_url": args.api_base_url,
            "api_version": args.api_version,
        }
        if name == "vertex":
            config.update(project=args.project, location=args.location, vertex_auth=args.vertex_auth)
        try:
            return make_backend(name, **config)
        except (ImportError, ValueError) as exc:
            raise UsageError(f"cannot set up the {name} backend for {model}: {exc}") from exc
    raise UsageError(
        f"{url} does not say which backend made it (backend {name!r}); "
        "was it written by `beamvec run`?"
    )


def _dimensionality(desc: Description) -> int | None:
    """The output_dimensionality the documents were embedded with (None: native)."""
    if desc.output_dimensionality is not None:
        return int(desc.output_dimensionality)
    from beamvec.backends.genai import native_dimension

    if native_dimension(desc.model) != desc.dimension:
        return int(desc.dimension)
    return None


def embed_query(backend: Backend, text: str) -> np.ndarray:
    return embed_texts(backend, [text])[0]


def embed_texts(backend: Backend, texts: Sequence[str]) -> np.ndarray:
    """Unit vectors of ``texts`` (rows, float32), as `run` would embed them:
    cut at the backend's token limit, sent a request's worth at a time."""
    rows: list[np.ndarray] = []
    try:
        backend.load()
        limit = backend.limits.max_text_tokens
        cut = []
        for text in texts:
            kept = backend.truncate(text, limit)  # by the safe bound, as run cuts long texts
            if kept != text:
                warn(f"a query may be over {limit} tokens; its end is cut off, as run cuts long texts")
            cut.append(kept)
        step = max(1, backend.limits.max_items)
        for i in range(0, len(cut), step):
            rows.extend(np.asarray(v, dtype=np.float32) for v in backend.embed(cut[i : i + step]))
    except BackendError as exc:
        raise SystemicError(
            f"could not embed the query with {backend.name} {backend.model}: {exc}; "
            "check the credentials (as for `beamvec run`) and --api-base-url"
        ) from exc
    finally:
        close = getattr(backend, "close", None)
        if callable(close):
            close()
    matrix = np.vstack(rows)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise SystemicError(f"{backend.name} returned an empty vector for a query; try another query")
    return matrix / norms


@dataclass(frozen=True)
class Hit:
    """One vector near the query."""

    id: str
    score: float  # cosine, rounded to 6 places
    source: str | None  # the input file
    position: int | None  # the record's position in it
    shard: str
    metadata: Any  # the record's metadata column, parsed from JSON where it is JSON


@dataclass(frozen=True)
class SearchResult:
    """What `search` prints (its JSON form's fields, in order)."""

    output: str
    query: str
    backend: str
    model: str
    task_type: str | None
    dimension: int
    scanned: int
    k: int
    results: list[Hit]


class _Best:
    """The ``k`` best hits so far: a min-heap on the score, ties in the order found."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.heap: list[tuple[float, int, Hit]] = []
        self.tie = itertools.count()

    def admits(self, score: float) -> bool:
        return len(self.heap) < self.k or score > self.heap[0][0]

    def add(self, score: float, hit: Hit) -> None:
        entry = (score, next(self.tie), hit)
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, entry)
        else:
            heapq.heapreplace(self.heap, entry)

    def ranked(self) -> list[Hit]:
        return [hit for _, _, hit in sorted(self.heap, key=lambda e: (-e[0], e[1]))]


def search(args: Any) -> SearchResult:
    output, manifest = open_output(args.output, storage_options(args.storage_option))
    desc = description_of(output, manifest)
    files = vector_files(output)
    if not files:
        raise UsageError(f"{output.url} has no vector files yet; run `beamvec run ... --output "
                         f"{output.url}` to completion first")
    mode = (manifest.config.normalization if manifest is not None else None) or "nfc"
    text = normalize(args.query, mode if mode in NORMALIZATIONS else "nfc")
    if not text.strip():
        raise UsageError("the query is empty; pass some text to search for")
    backend = query_backend(desc, args, output.url)
    query = embed_query(backend, text)
    dimension = int(desc.dimension if desc and desc.dimension else len(query))
    if len(query) != dimension:
        raise SystemicError(
            f"the query embedding has {len(query)} dimensions but {output.url} holds "
            f"{dimension}-dimensional vectors; pass the model the output was made with "
            "(--local-model-dir)"
        )
    best = _Best(args.k)
    scanned = 0
    for i, path in enumerate(files, start=1):
        name = shard_name(path)
        progress(f"beamvec search: scanning {i}/{len(files)} {name}", args.quiet)
        made = footer_of(output.fs, path).description
        if made is not None and (made.dimension != dimension or (desc and made.model != desc.model)):
            warn(f"skipping vectors/{name}.parquet: made with {made.model} "
                 f"({made.dimension} dims), not {desc.model if desc else '?'} ({dimension} dims)")
            continue
        columns = [col.ID, col.VECTOR, col.SOURCE_SHARD, col.SOURCE_POSITION, col.METADATA]
        for batch in iter_batches(output, path, columns):
            scanned += _scan_batch(batch, name, query, dimension, best)
    progress_done(args.quiet)
    return SearchResult(output.url, args.query, backend.name, backend.model, backend.task_type, dimension,
                        scanned, args.k, best.ranked())


def _scan_batch(batch: pa.RecordBatch, name: str, query: np.ndarray, dimension: int, best: _Best) -> int:
    """Score a batch's vectors against the query, keep its best in ``best``; its rows."""
    n = batch.num_rows
    if not n:
        return 0
    matrix = batch.column(col.VECTOR).flatten().to_numpy(zero_copy_only=False).reshape(n, dimension)
    norms = np.linalg.norm(matrix, axis=1)
    scores = (matrix @ query) / np.clip(norms, 1e-12, None)
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    k = min(best.k, n)
    candidates = np.argpartition(-scores, k - 1)[:k] if n > k else np.arange(n)
    for idx in candidates:
        score = float(scores[idx])
        if not best.admits(score):
            continue
        best.add(score, Hit(
            id=batch.column(col.ID)[idx].as_py(),
            score=round(score, 6),
            source=batch.column(col.SOURCE_SHARD)[idx].as_py(),
            position=batch.column(col.SOURCE_POSITION)[idx].as_py(),
            shard=name,
            metadata=_metadata(batch, idx),
        ))
    return n


def _metadata(batch: Any, idx: int) -> Any:
    if col.METADATA not in batch.schema.names:
        return None
    raw = batch.column(col.METADATA)[idx].as_py()
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _snippet(metadata: Any) -> str:
    if metadata in (None, {}, ""):
        return ""
    text = metadata if isinstance(metadata, str) else json.dumps(metadata, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= SNIPPET else text[: SNIPPET - 1] + "…"


def format_results(res: SearchResult) -> str:
    task = f", query task {res.task_type}" if res.task_type else ""
    lines = [
        f"beamvec search {res.output}: {res.query!r}",
        f"  {res.backend} {res.model}{task}; cosine over {res.scanned:,} vectors",
    ]
    if not res.results:
        lines.append("  no vectors in the output")
        return "\n".join(lines)
    width = max(len(str(r.id)) for r in res.results)
    for rank, row in enumerate(res.results, start=1):
        source = f"{row.source}:{row.position}"
        snippet = _snippet(row.metadata)
        lines.append(
            f"  {rank:>3}. {row.score:.4f}  {str(row.id):<{width}}  {source}"
            + (f"  {snippet}" if snippet else "")
        )
    return "\n".join(lines)
