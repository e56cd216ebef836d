"""Rerunning a shuffled re-export into the same output: reuse as a join.

For each size N (default 300,000, 1,000,000 and 3,000,000): an output of N
synthetic 384-dim vectors is written in the output's own format (footers,
commit records, manifest; embedding them would take too long), then the same
N texts are re-exported in a random order, cut into new files, and `beamvec
run` (DirectRunner, in process, gemini backend with its HTTP call replaced
by a fast fake: nothing is reusable-and-sent unless reuse is broken) reruns
them into that output with --prune. Every record must be reused (the run
fails the benchmark otherwise) and every vector written must be the one of
its text (checked on a sample).

Side by side: the floor of reading the same vectors (content_hash, vector)
with pyarrow and writing them back in the output's schema. Printed: seconds,
the ratio to the floor, peak RSS of the run's process (ru_maxrss via
os.wait4; on the in-memory DirectRunner the runner's shuffle lives in that
process too) and the growth between sizes (log-log slope); for each size,
where the run's time went (``Phases``: each step's first start, last end and
its calls' summed time, from the run's start).

    python benchmarks/reuse_join.py [--sizes 300000,1000000,3000000] [--dimension 384]
        [--path index|join] [--keep DIR]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reuse_memory  # noqa: E402 - its synthetic output, written in the output's own format

PER_FILE = 100_000  # records per input file of the re-export
PER_PART = 10_000  # vectors per part of the synthetic output
KEY = "fakekey-bench-join"


def run_args(inputs: str, output: str, dimension: int) -> list[str]:
    return ["--input", inputs, "--output", output, "--backend", "gemini", "--api-base-url", "http://127.0.0.1:9",
            "--output-dimensionality", str(dimension), "--prune"]


def text(n: int) -> str:
    return f"text {n} of the nightly export"


def vector_of(n: int, total: int) -> float:
    """The first coordinate of text n's synthetic vector (as reuse_memory.write_output writes it): which vector it is."""
    return n / total


# --------------------------------------------------------------------------- building inputs


def write_output(root: Path, inputs: str, total: int, dimension: int) -> None:
    """An output of ``total`` vectors of exactly this run's configuration
    (record i holds ``text(i)``; its vector's first coordinate is ``vector_of(i, total)``)."""
    from beamvec.driver.resolve import parse_options, resolve_inputs

    jobs = resolve_inputs(parse_options(run_args(inputs, str(root), dimension)))
    reuse_memory.write_output(root, total, dimension, PER_PART, text=text, tokens=8,
                              description=jobs.description, run_config=jobs.run_config)


def write_reexport(root: Path, total: int) -> str:
    """The same texts in a random order, under new names and boundaries."""
    order = list(range(total))
    random.Random(total).shuffle(order)
    root.mkdir(parents=True, exist_ok=True)
    for f, start in enumerate(range(0, total, PER_FILE)):
        with (root / f"export-{f:05d}-c000.jsonl").open("w") as fh:
            fh.writelines(json.dumps({"id": f"id-{i}", "text": text(i)}) + "\n" for i in order[start:start + PER_FILE])
    return str(root / "*.jsonl")


def floor_seconds(output: Path, dimension: int) -> float:
    """Read every vector file's (content_hash, vector) with pyarrow and write it back."""
    import pyarrow.parquet as pq

    from beamvec.write.sink import vector_schema

    schema = vector_schema(dimension)
    sink = output.parent / "floor"
    sink.mkdir(exist_ok=True)
    started = time.perf_counter()
    for path in sorted((output / "vectors").glob("*.parquet")):
        table = pq.read_table(path)
        pq.write_table(table.cast(schema), sink / path.name)
    seconds = time.perf_counter() - started
    shutil.rmtree(sink)
    return seconds


# --------------------------------------------------------------------------- the run, in a child


class Phases:
    """Where a run's time goes: for each step, when it first started and last
    ended (seconds from the run's start) and its calls' summed time (over
    threads: more than the span when shards run side by side). Timed per
    call of a step (a split, a row group, a bucket), never per record."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.spans: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _record(self, label: str, t0: float) -> None:
        t1 = time.perf_counter()
        with self._lock:
            span = self.spans.setdefault(label, [t0, t1, 0.0])
            span[0], span[1], span[2] = min(span[0], t0), max(span[1], t1), span[2] + t1 - t0

    def wrap(self, owner: Any, name: str, label: str, generator: bool = False) -> None:
        real = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self._record(label, t0)

        def timed_steps(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                yield from real(*args, **kwargs)
            finally:
                self._record(label, t0)

        setattr(owner, name, functools.wraps(real)(timed_steps if generator else timed))

    def table(self) -> dict[str, list[float]]:
        return {label: [round(a - self.started, 1), round(b - self.started, 1), round(busy, 1)]
                for label, (a, b, busy) in sorted(self.spans.items(), key=lambda kv: kv[1][0])}


def watch_phases() -> Phases:
    from beamvec.driver import job
    from beamvec.pipeline import reuse_join, worker

    phases = Phases()
    phases.wrap(job, "plan_reuse", "driver: the reuse choice")
    phases.wrap(job, "preflight", "driver: the preflight")
    for step in ("SplitHashes", "ReadRowGroup", "JoinBucket"):
        phases.wrap(getattr(reuse_join, step), "process", step, generator=True)
    phases.wrap(reuse_join.SplitReuse, "lookup", "EmbedShards: load the found vectors")
    phases.wrap(worker.Worker, "process", "EmbedShards: a split (lookup excluded)")
    return phases


def child_run(argv: list[str], path: str, total: int) -> dict[str, Any]:
    import numpy as np
    import pyarrow.parquet as pq

    from beamvec.backends import genai
    from beamvec.cli import main
    from beamvec.driver import reuse_choice

    if path == "index":
        reuse_choice.JOIN_MIN_VECTORS = 1 << 62

    def fake_embed(self: Any, texts: Any, titles: Any = None) -> np.ndarray:
        return np.ones((len(texts), self.limits.dimension), np.float32) / math.sqrt(self.limits.dimension)

    genai.GenaiBackend.load = lambda self: None  # type: ignore[method-assign]
    genai.GenaiBackend.embed = fake_embed  # type: ignore[method-assign]
    genai.GenaiBackend.embed_paced = (  # type: ignore[method-assign]
        lambda self, texts, titles, gate: fake_embed(self, texts, titles)
    )
    genai.GenaiBackend.preflight = lambda self, text=None, title=None: fake_embed(self, [text or "x"])[0]  # type: ignore[method-assign]
    phases = watch_phases()
    started = time.perf_counter()
    code = main(["run", "--runner=DirectRunner", "--quiet", *argv])
    seconds = time.perf_counter() - started
    output = Path(argv[argv.index("--output") + 1])
    manifest = json.loads((output / "_manifest.json").read_text())
    run = manifest["runs"][-1]
    wrong = 0
    for part in sorted((output / "vectors").glob("*.parquet"))[:3]:  # a sample: every vector its text's
        table = pq.read_table(part, columns=["id", "vector"])
        ids = table.column("id").to_pylist()
        first = np.asarray(table.column("vector").combine_chunks().flatten()).reshape(len(ids), -1)[:, 0]
        want = np.array([vector_of(int(i.split("-")[1]), total) for i in ids], np.float32)
        wrong += int(np.count_nonzero(np.abs(first - want) > 1e-6))
    return {"code": code, "seconds": round(seconds, 1), "read": run["read"], "reused": run["reused"],
            "sent": run["sent"], "wrong_vectors": wrong, "phases": phases.table()}


def measure(args: list[str]) -> tuple[int, dict[str, Any]]:
    """(peak RSS in bytes, the child's JSON answer) of this script run as a child."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "GEMINI_API_KEY": KEY,
           "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the run of {args[:3]} failed")
    return usage.ru_maxrss * 1024, json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="300000,1000000,3000000")
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--path", choices=("index", "join"), default="join",
                        help="join: as chosen from the sizes; index: force the in-process index")
    parser.add_argument("--keep", help="build under this folder and keep it")
    parser.add_argument("--child", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.child:
        path, total, rest = args.child[0], int(args.child[1]), args.child[2:]
        print(json.dumps(child_run(rest, path, total)))
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="beamvec-join-"))
    try:
        for n in sizes:
            root = base / f"n{n}"
            shutil.rmtree(root, ignore_errors=True)
            inputs = write_reexport(root / "in", n)
            t0 = time.perf_counter()
            write_output(root / "out", inputs, n, args.dimension)
            built = time.perf_counter() - t0
            floor = floor_seconds(root / "out", args.dimension)
            peak, answer = measure(["--child", args.path, str(n), *run_args(inputs, str(root / "out"), args.dimension)])
            phases = answer.pop("phases")
            print(f"{n:,}: output written in {built:.0f} s; floor {floor:.1f} s; run {json.dumps(answer)}; "
                  f"peak RSS {peak / 2**20:,.0f} MiB; load average {os.getloadavg()[0]:.1f}", flush=True)
            for label, (first, last, busy) in phases.items():
                print(f"    {label:<40} {first:>7.1f} s to {last:>7.1f} s, calls' time {busy:>7.1f} s", flush=True)
            if answer["code"] != 0 or answer["reused"] != n or answer["sent"] or answer["wrong_vectors"]:
                raise SystemExit(f"{n:,}: the rerun did not reuse every vector exactly: {answer}")
            rows.append((n, answer["seconds"], floor, peak))
            shutil.rmtree(root)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"{'records':>10} {'run s':>8} {'floor s':>8} {'x floor':>8} {'peak RSS':>10} {'slope':>6}")
    for k, (n, seconds, floor, peak) in enumerate(rows):
        slope = "" if k == 0 else f"{math.log(seconds / rows[k - 1][1]) / math.log(n / rows[k - 1][0]):.2f}"
        print(f"{n:>10,} {seconds:>8.1f} {floor:>8.1f} {seconds / floor:>8.1f} {peak / 2**20:>9,.0f}M {slope:>6}")
    if len(rows) > 1:
        (n0, s0, _, p0), (n1, s1, _, p1) = rows[0], rows[-1]
        print(f"growth {n0:,} -> {n1:,}: time slope {math.log(s1 / s0) / math.log(n1 / n0):.2f} "
              f"(target <= 1.15), peak RSS x{p1 / p0:.2f} (target <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
