"""The local backend at its limit, measured side by side in one run.

1. The bare model: the same ONNX model called directly on the same texts,
   globally sorted by length (the least padding any batching can reach), in
   batches of the backend's size, one process with all cores.
2. `beamvec run` on the DirectRunner over the same texts as JSONL shards:
   reading, preparing (token counts, truncation), hashing, embedding, Parquet
   and the manifest included.
3. The same texts in many shards, one worker process, then two
   (`--direct_running_mode=multi_processing --direct_num_workers=2`, as in
   runner_configs/local-multiprocess.yaml): each process takes its share of
   the cores for onnxruntime.

Prints records/s and two ratios (beamvec / bare model, 2
processes / 1), and the ceiling of the second: the bare model on one
onnxruntime thread, times the number of cores. Each pipeline run is its own process, timed from its start
(interpreter and imports included for both, so the ratio is fair).

    python benchmarks/local_throughput.py [--records 3000] [--shards 4] [--many-shards 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def bare_model(texts: list[str], threads: int | None = None) -> float:
    """records/s of the model alone on length-sorted texts (``threads``
    onnxruntime threads; None: all cores, as one worker process alone)."""
    from beamvec.backends.local import LocalBackend

    backend = LocalBackend(threads=threads)
    backend.load()
    limits = backend.limits
    started = time.perf_counter()
    cut = [backend.truncate(t, limits.max_text_tokens) for t in texts]
    cut.sort(key=len)
    for i in range(0, len(cut), limits.max_items):
        backend.embed(cut[i : i + limits.max_items])
    return len(texts) / (time.perf_counter() - started)


def pipeline(corpus: Path, out: Path, *extra: str) -> float:
    """records/s of one `beamvec run`, timed around the whole process."""
    argv = [str(BIN / "beamvec"), "run", "--input", f"{corpus}/*.jsonl", "--output", str(out),
            "--runner=DirectRunner", "--quiet", *extra]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"beamvec run failed ({done.returncode}): {done.stderr[-2000:]}")
    manifest = json.loads((out / "_manifest.json").read_text())
    return manifest["totals"]["embedded"] / seconds


def reshard(texts: list[str], root: Path, shards: int) -> None:
    root.mkdir(parents=True)
    for s in range(shards):
        lines = [json.dumps({"id": f"r{i}", "text": t}) for i, t in enumerate(texts) if i % shards == s]
        (root / f"part-{s:03d}.jsonl").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--many-shards", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "make_demo_corpus.py"), str(corpus),
             "--limit", str(args.records), "--shards", str(args.shards)],
            check=True, stdout=subprocess.DEVNULL,
        )
        texts = [
            json.loads(line)["text"]
            for f in sorted(corpus.glob("*.jsonl"))
            for line in f.read_text().splitlines()
        ]
        many = Path(tmp) / "many"
        reshard(texts, many, args.many_shards)
        direct = bare_model(texts)
        single = bare_model(texts, threads=1)
        ours = pipeline(corpus, Path(tmp) / "out-1")
        one = pipeline(many, Path(tmp) / "out-2")
        two = pipeline(many, Path(tmp) / "out-3", "--direct_running_mode=multi_processing",
                       "--direct_num_workers=2")

    print(f"local backend, {len(texts):,} stdlib docstrings, {os.cpu_count()} cores")
    print(f"  {'':<58}{'records/s':>10}{'ratio':>8}")
    print(f"  {'ONNX model called directly, texts globally sorted by length':<58}{direct:>10.1f}{1.0:>8.2f}")
    print(f"  {f'beamvec run, DirectRunner, {args.shards} shards':<58}{ours:>10.1f}{ours / direct:>8.2f}")
    print(f"  {f'beamvec run, {args.many_shards} shards, 1 worker process':<58}{one:>10.1f}{1.0:>8.2f}")
    print(f"  {f'beamvec run, {args.many_shards} shards, 2 worker processes':<58}{two:>10.1f}{two / one:>8.2f}")
    # One-thread processes, one per core, can at best run the one-thread model that many times.
    cores = os.cpu_count() or 1
    ceiling = cores * single
    print(f"\n  ONNX model called directly, one onnxruntime thread: {single:.1f} records/s "
          f"({direct / single:.2f} x slower than all {cores} cores)")
    print(f"  so {cores} one-thread worker processes reach at most {ceiling:.1f} records/s: "
          f"{ceiling / one:.2f} x one worker process here, "
          f"{ceiling / (0.9 * direct):.2f} x one at 0.9 of the bare model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
