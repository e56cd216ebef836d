"""Memory of content-addressed reuse, as peak RSS of child processes.

(a) lookup: a worker reusing from an output of 1,000,000 vectors (384 dims).
    The output is written directly in the output's format (vector_schema,
    committed footers, a manifest), then a child process builds the
    VectorIndex exactly as a Worker does (lookup.build_index) and looks up
    hashes: in the output's order (a rerun of the same export) and in random
    order (a re-export that shuffled the records), one by one and, as a
    worker does, a window of records at a time. Target: < 1 GiB.
(b) shard size: `beamvec run --backend gemini` (DirectRunner, in process) over
    one input shard of 30,000 and one of 300,000 records at 3,072 dims, with
    --split-bytes 0 so that the whole file is one shard. The gemini backend's
    HTTP call is replaced by a fast fake (same limits: 100 texts a request,
    3,072-dim vectors): the emulator would spend most of an hour formatting
    and parsing 3.7 GB of JSON numbers on 2 cores. Target: the large shard's
    peak within 10 % of the small one's, and < 1 GiB.

Peak RSS is ru_maxrss from os.wait4 on each child. No assertions: a table.

    python benchmarks/reuse_memory.py [--vectors 1000000] [--lookups 100000]
        [--random-lookups 2000] [--small 30000] [--large 300000] [--only lookup|shard]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

GiB = 1024**3
FINGERPRINT = "bench-reuse-0001"


# --------------------------------------------------------------------------- children


def child_lookup(output: str, dimension: int, lookups: int, random_lookups: int, total: int) -> dict[str, Any]:
    """Build the index as a worker does, then look hashes up."""
    from beamvec.records import content_hash
    from beamvec.route.lookup import build_index
    from beamvec.write.sink import Output

    started = time.perf_counter()
    index = build_index(Output(output), [], FINGERPRINT, dimension)
    built = time.perf_counter() - started
    result: dict[str, Any] = {"indexed": len(index), "build_s": round(built, 1)}

    def run(numbers: list[int], name: str) -> None:
        hits = 0
        t0 = time.perf_counter()
        for n in numbers:
            found = index.get(content_hash(f"text {n}"))
            if found is not None:
                hits += 1
                assert abs(float(found[0]) - n / total) < 1e-6, "a wrong vector"
        seconds = time.perf_counter() - t0
        result[name] = {"lookups": len(numbers), "hits": hits, "seconds": round(seconds, 2),
                        "per_lookup_ms": round(1000 * seconds / max(1, len(numbers)), 3)}

    # 90 % hits and 10 % misses (texts never embedded), in the output's order
    ordered = sorted(random.Random(1).sample(range(total), lookups * 9 // 10))
    misses = list(range(total, total + lookups - len(ordered)))
    run(ordered + misses, "in_order")
    run(random.Random(2).sample(range(total), random_lookups), "random_order")

    # what a worker does: a window of records at once (get_many), here in random order
    from beamvec.pipeline.worker import FETCH_WINDOW

    numbers = random.Random(3).sample(range(total), random_lookups * 10)
    t0 = time.perf_counter()
    hits = 0
    for start in range(0, len(numbers), FETCH_WINDOW):
        window = numbers[start:start + FETCH_WINDOW]
        found = index.get_many(content_hash(f"text {n}") for n in window)
        for n in window:
            vector = found.get(content_hash(f"text {n}"))
            hits += vector is not None
            assert vector is not None and abs(float(vector[0]) - n / total) < 1e-6, "a wrong vector"
    seconds = time.perf_counter() - t0
    result["random_windows"] = {"lookups": len(numbers), "window": FETCH_WINDOW, "hits": hits,
                                "seconds": round(seconds, 2),
                                "per_lookup_ms": round(1000 * seconds / max(1, len(numbers)), 3)}
    return result


def child_run(argv: list[str]) -> dict[str, Any]:
    """`beamvec run` with the gemini backend's HTTP call replaced by a fast fake."""
    import numpy as np

    from beamvec.backends import genai
    from beamvec.cli import main

    pool: dict[int, np.ndarray] = {}

    def fake_embed(self: Any, texts: Any, titles: Any = None) -> np.ndarray:
        dim = self.limits.dimension
        if dim not in pool:
            block = np.random.default_rng(0).standard_normal((64, dim)).astype(np.float32)
            pool[dim] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return pool[dim][[hash(t) % 64 for t in texts]]

    genai.GenaiBackend.load = lambda self: None  # type: ignore[method-assign]
    genai.GenaiBackend.embed = fake_embed  # type: ignore[method-assign]

    def fake_embed_paced(self: Any, texts: Any, titles: Any, gate: Any) -> np.ndarray:
        gate()  # the embedder's pacing, as the real call's request hook does
        gate.left(time.monotonic())
        return fake_embed(self, texts, titles)

    genai.GenaiBackend.embed_paced = fake_embed_paced  # type: ignore[method-assign]
    genai.GenaiBackend.preflight = (  # type: ignore[method-assign]
        lambda self, text=None, title=None: fake_embed(self, [text or "x"])[0]
    )
    started = time.perf_counter()
    code = main(["run", "--runner=DirectRunner", "--quiet", *argv])
    manifest = json.loads((Path(argv[argv.index("--output") + 1]) / "_manifest.json").read_text())
    return {"code": code, "seconds": round(time.perf_counter() - started, 1), "run": manifest["runs"][-1]}


# --------------------------------------------------------------------------- building inputs


def write_output(root: Path, total: int, dimension: int, per_file: int = 10_000,
                 model: str = "bench-model", *, text: Callable[[int], str] = "text {}".format,
                 tokens: int = 3, description: Any = None, run_config: Any = None) -> None:
    """An output of ``total`` vectors in the output's own format and contract:
    record i holds ``text(i)`` and a vector whose first coordinate is i / total
    (which vector it is). ``description`` and ``run_config`` default to a local
    model's under FINGERPRINT."""
    import numpy as np

    from beamvec.contract import (
        CommitRecord,
        Description,
        Footer,
        RunConfig,
        ShardCounts,
        merge_manifest,
        vector_path,
        write_manifest,
    )
    from beamvec.records import Embedded, Record, content_hash
    from beamvec.write.sink import Output, ParquetShardWriter, vector_schema, vector_table

    out = Output(str(root))
    if description is None:
        description = Description("local", model, dimension, config_fingerprint=FINGERPRINT)
    schema = vector_schema(dimension)
    base = np.random.default_rng(0).standard_normal((256, dimension)).astype(np.float32)
    records = []
    for f, start in enumerate(range(0, total, per_file)):
        rows = range(start, min(total, start + per_file))
        n = len(rows)
        matrix = base[np.arange(n) % 256].copy()
        matrix[:, 0] = np.arange(start, start + n, dtype=np.float64) / total  # which vector this is
        embedded = [Embedded(Record(f"id-{i}", text(i), content_hash(text(i)), tokens, False, at + 1),
                             matrix[at]) for at, i in enumerate(rows)]
        table = vector_table(embedded, f"in/part-{f}.jsonl", dimension)
        name = f"part-{f:05d}"
        record = CommitRecord(name, f"in/part-{f}.jsonl", f"fp{f}", ShardCounts(read=n, embedded=n, sent=n),
                              config_fingerprint=description.config_fingerprint)
        writer = ParquetShardWriter(out, vector_path(out, name), schema)
        for chunk in range(0, n, 4096):
            writer.write(table.slice(chunk, 4096))
        writer.commit(Footer(description, record).to_json())
        records.append(record)
    write_manifest(out, merge_manifest(None, records, run_config if run_config is not None else RunConfig(),
                                       description, None))


def write_shard(path: Path, records: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for i in range(records):
            fh.write(json.dumps({"id": f"r{i}", "text": f"record {i} of a large shard, with some words"}) + "\n")


# --------------------------------------------------------------------------- measuring


def measure(args: list[str]) -> tuple[int, dict[str, Any]]:
    """(peak RSS in bytes, the child's JSON answer) of this script run as a child."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child {args[:2]} failed with exit code {proc.returncode}")
    answer = json.loads(out.strip().splitlines()[-1])
    return usage.ru_maxrss * 1024, answer  # kilobytes on Linux


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--lookups", type=int, default=100_000)
    parser.add_argument("--random-lookups", type=int, default=2_000)
    parser.add_argument("--small", type=int, default=30_000)
    parser.add_argument("--large", type=int, default=300_000)
    parser.add_argument("--wide", type=int, default=3072)
    parser.add_argument("--only", choices=("lookup", "shard"))
    parser.add_argument("--child", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.child:
        kind, rest = args.child[0], args.child[1:]
        if kind == "lookup":
            answer = child_lookup(rest[0], *(int(x) for x in rest[1:]))
        else:
            answer = child_run(rest)
        print(json.dumps(answer))
        return 0

    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "lookup"):
            t0 = time.perf_counter()
            write_output(Path(tmp) / "big", args.vectors, args.dimension)
            built = time.perf_counter() - t0
            peak, answer = measure(["--child", "lookup", str(Path(tmp) / "big"), str(args.dimension),
                                    str(args.lookups), str(args.random_lookups), str(args.vectors)])
            print(f"output of {args.vectors:,} x {args.dimension} written in {built:.0f} s; child: {json.dumps(answer)}")
            rows.append((f"lookup: index over {args.vectors:,} x {args.dimension}, "
                         f"{answer['in_order']['lookups']:,} + {answer['random_order']['lookups']:,} + "
                         f"{answer['random_windows']['lookups']:,} lookups",
                         mib(peak), "< 1 GiB", "ok" if peak < GiB else "OVER"))
        if args.only in (None, "shard"):
            peaks = {}
            for n in (args.small, args.large):
                shard = Path(tmp) / f"in{n}" / "one.jsonl"
                write_shard(shard, n)
                run_args = ["--input", str(shard), "--output", str(Path(tmp) / f"out{n}"), "--backend", "gemini",
                            "--output-dimensionality", str(args.wide), "--split-bytes", "0",
                            "--api-base-url", "http://127.0.0.1:9"]
                os.environ.setdefault("GEMINI_API_KEY", "fakekey-bench")
                peak, answer = measure(["--child", "run", *run_args])
                peaks[n] = peak
                print(f"shard of {n:,} records: child {json.dumps(answer)}")
                rows.append((f"run: one shard of {n:,} records at {args.wide} dims", mib(peak), "< 1 GiB",
                             "ok" if peak < GiB else "OVER"))
            ratio = peaks[args.large] / peaks[args.small]
            rows.append((f"run: {args.large:,} vs {args.small:,} records", f"x{ratio:.3f}", "<= x1.10",
                         "ok" if ratio <= 1.10 else "OVER"))
    print()
    print(f"{'measure':<62} {'peak RSS':>12} {'target':>10} {'':>5}")
    for what, value, target, verdict in rows:
        print(f"{what:<62} {value:>12} {target:>10} {verdict:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
