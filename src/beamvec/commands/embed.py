"""`beamvec embed OUTPUT "query" ...`: query vectors in an output's configuration.

The vectors an output holds are searched elsewhere (LanceDB, DuckDB, a
service): those need the query embedded exactly as `beamvec search` embeds it,
with the output's backend, model, dimension, text normalization and query
task. This prints them, as JSON or as a float32 ``.npy`` array, one row per
text in the order given.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from beamvec.commands import (
    Parser,
    add_storage_option,
    description_of,
    open_output,
    parse,
    storage_options,
)
from beamvec.commands.search import add_query_backend_flags, embed_texts, query_backend
from beamvec.errors import SystemicError, UsageError
from beamvec.route.prepare import NORMALIZATIONS, normalize

SCHEMA = "beamvec.embed/1"

DESCRIPTION = """\
Embed query texts with an output's own backend, model and query task, and print
the vectors: JSON (default) or a float32 .npy array of shape (texts, dimension).
Texts come from the command line, or one per line from stdin when none is given
(or the text is -).

examples:
  beamvec embed out/ "how do I parse a date"
  beamvec embed out/ --format npy --to queries.npy < questions.txt
(docs/operators.md queries LanceDB and DuckDB with these vectors)
"""


def build_parser() -> Parser:
    parser = Parser("beamvec embed", DESCRIPTION)
    parser.add_argument("output", metavar="OUTPUT", help="output root written by `beamvec run`")
    parser.add_argument("texts", metavar="TEXT", nargs="*", help="texts to embed (none or -: stdin)")
    parser.add_argument("--format", choices=("json", "npy"), default="json",
                        help="json (default): {schema, model, dimension, ..., vectors}; npy: float32 rows")
    parser.add_argument("--to", metavar="FILE", default=None, help="write to FILE instead of stdout")
    add_storage_option(parser)
    add_query_backend_flags(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    texts = list(args.texts)
    if not texts or texts == ["-"]:
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise UsageError("no text to embed: pass it as arguments or one per line on stdin")
    if args.format == "npy" and args.to is None and sys.stdout.isatty():
        raise UsageError("--format npy writes binary: pass --to FILE or redirect stdout")
    data = _encode(embed(args, texts), args.format)
    if args.to is not None:
        try:
            with open(args.to, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            raise UsageError(f"cannot write --to {args.to}: {exc.strerror or exc}") from exc
    elif args.format == "json":
        sys.stdout.write(data.decode())
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


@dataclass(frozen=True)
class QueryVectors:
    """Query vectors and what made them (the JSON form's fields, in its order)."""

    output: str
    backend: str
    model: str
    task_type: str | None
    dimension: int
    texts: list[str]
    vectors: np.ndarray  # (texts, dimension)


def embed(args: Any, texts: list[str]) -> QueryVectors:
    """The vectors and what made them."""
    output, manifest = open_output(args.output, storage_options(args.storage_option))
    desc = description_of(output, manifest)
    mode = (manifest.config.normalization if manifest is not None else None) or "nfc"
    prepared = [normalize(t, mode if mode in NORMALIZATIONS else "nfc") for t in texts]
    if not all(t.strip() for t in prepared):
        raise UsageError("a text is empty after normalization; pass some text to embed")
    backend = query_backend(desc, args, output.url)
    vectors = embed_texts(backend, prepared)
    if desc is not None and desc.dimension and vectors.shape[1] != desc.dimension:
        raise SystemicError(
            f"the query embedding has {vectors.shape[1]} dimensions but {output.url} holds "
            f"{desc.dimension}-dimensional vectors; pass the model the output was made with"
        )
    return QueryVectors(output.url, backend.name, backend.model, backend.task_type, int(vectors.shape[1]),
                    texts, vectors)


def _encode(result: QueryVectors, fmt: str) -> bytes:
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, result.vectors.astype(np.float32), allow_pickle=False)
        return buf.getvalue()
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    body = {"schema": SCHEMA, **fields, "vectors": [[float(x) for x in row] for row in result.vectors]}
    return (json.dumps(body) + "\n").encode()
