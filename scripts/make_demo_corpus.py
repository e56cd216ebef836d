"""Write a small real corpus with no download: docstrings of Python's standard library.

    python scripts/make_demo_corpus.py demo/corpus [--limit 3000] [--shards 4]

Modules are parsed with `ast` (never imported); the first paragraph of each
module, class and function docstring becomes one JSONL record: {"id": "json.dumps", "text": ..., "module": ..., "kind": ...}.
"""

from __future__ import annotations

import argparse
import ast
import json
import sysconfig
from collections.abc import Iterator
from pathlib import Path


def docstrings(stdlib: Path) -> Iterator[dict[str, str]]:
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if any(part in {"test", "tests", "idlelib", "site-packages", "lib2to3"} or part.startswith("_")
               for part in rel.parts):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        yield from _walk(tree, module, module)


def _walk(node: ast.AST, module: str, qualname: str) -> Iterator[dict[str, str]]:
    doc = ast.get_docstring(node, clean=True) if isinstance(
        node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) else None
    # The first paragraph: the summary a reader (and a search) cares about.
    summary = " ".join(doc.split("\n\n", 1)[0].split()) if doc else ""
    if len(summary) > 20:
        kind = {ast.Module: "module", ast.ClassDef: "class"}.get(type(node), "function")
        yield {"id": qualname, "text": summary, "module": module, "kind": kind}
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and not (
            child.name.startswith("_")
        ):
            yield from _walk(child, module, f"{qualname}.{child.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--limit", type=int, default=3000)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()
    records = []
    seen = set()
    for record in docstrings(Path(sysconfig.get_paths()["stdlib"])):
        if record["id"] not in seen:
            seen.add(record["id"])
            records.append(record)
        if len(records) >= args.limit:
            break
    args.out.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(records) // args.shards)
    for i in range(args.shards):
        chunk = records[i * per_shard : (i + 1) * per_shard]
        with open(args.out / f"stdlib-{i:02d}.jsonl", "w", encoding="utf-8") as fh:
            for record in chunk:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} docstrings in {args.shards} shards to {args.out}")


if __name__ == "__main__":
    main()
