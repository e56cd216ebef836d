"""Pipeline overhead on the local backend, measured side by side in one run.

Baseline: the same ONNX model called directly on the same texts, in one
process, in batches of the same size. Ours: `beamvec run` on the DirectRunner
over the same texts as JSONL shards, with reading, hashing, Parquet writing
and the manifest included. Prints records/s for both and their ratio.

    python benchmarks/local_throughput.py [--records 3000] [--shards 4]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()

    from beamvec.backends.local import LocalBackend
    from beamvec.job import run_job

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

        backend = LocalBackend()
        backend.load()
        limits = backend.limits
        started = time.perf_counter()
        cut = [backend.truncate(t, limits.max_text_tokens) for t in texts]
        for i in range(0, len(cut), limits.max_items):
            backend.embed(cut[i : i + limits.max_items])
        direct = len(texts) / (time.perf_counter() - started)

        sink = io.StringIO()
        started = time.perf_counter()
        with redirect_stdout(sink):
            summary = run_job(["--input", f"{corpus}/*.jsonl", "--output", f"{tmp}/out",
                               "--runner=DirectRunner", "--quiet"])
        pipeline = summary["read"] / (time.perf_counter() - started)
        assert summary["embedded"] == len(texts), summary

    print(f"local backend, {len(texts):,} stdlib docstrings, {args.shards} shards, "
          f"{limits.max_items} texts per batch")
    print(f"  {'':<36}{'records/s':>12}{'ratio':>8}")
    print(f"  {'ONNX model called directly':<36}{direct:>12.1f}{1.0:>8.2f}")
    print(f"  {'beamvec run (DirectRunner)':<36}{pipeline:>12.1f}{pipeline / direct:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
