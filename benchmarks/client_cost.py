"""Client cost per request: CPU milliseconds beamvec spends per API request at
768 and 3,072 dimensions, and the request rate one worker process sustains
against an emulator that answers at once.

The emulator runs in its own process with no latency and a quota far above
what one client can send; `beamvec run` runs on the DirectRunner in one
process with no --quota-rpm. "RPM" is requests over the pipeline's whole wall
time (start-up included), so it understates the steady rate. CPU is the
`beamvec run` process's own user + system time, read with os.wait4.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quota_benchmark import BIN, KEY, MODEL, EmulatorProcess, make_corpus  # noqa: E402


def run(emulator: EmulatorProcess, corpus: Path, out: Path, dim: int, in_flight: int) -> dict[str, float]:
    argv = [str(BIN / "beamvec"), "run", "--input", str(corpus / "*.jsonl"), "--output", str(out),
            "--backend", "gemini", "--api-base-url", emulator.url, "--model", MODEL,
            "--output-dimensionality", str(dim), "--max-in-flight", str(in_flight),
            "--concurrent-shards", "8", "--runner=DirectRunner", "--quiet"]
    emulator.reset()
    cpu_before = emulator.cpu_seconds() or 0.0
    started = time.monotonic()
    proc = subprocess.Popen(argv, env={**os.environ, "GEMINI_API_KEY": KEY},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    stdout = proc.stdout.read() if proc.stdout else ""
    if status != 0:
        raise RuntimeError(f"beamvec run failed: {stdout[-500:]}")
    requests = emulator.stats()["requests"]
    match = re.search(r"wall time\s+([\d.]+) s", stdout)
    return {
        "dim": dim, "requests": requests, "wall": float(match.group(1)) if match else wall,
        "cpu": usage.ru_utime + usage.ru_stime, "emulator_cpu": (emulator.cpu_seconds() or 0.0) - cpu_before,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=50_000)
    parser.add_argument("--quick", action="store_true", help="10,000 texts")
    parser.add_argument("--max-in-flight", type=int, default=16)
    args = parser.parse_args()
    texts = 10_000 if args.quick else args.texts
    rows = []
    with tempfile.TemporaryDirectory(prefix="beamvec-cost-") as tmp, \
            EmulatorProcess(rpm=10**7, window_s=60.0, fail_503=0.0, latency_ms=0.0, jitter_ms=0.0) as emu:
        corpus = Path(tmp) / "corpus"
        make_corpus(corpus, texts, 16)
        for dim in (768, 3072):
            rows.append(run(emu, corpus, Path(tmp) / f"out-{dim}", dim, args.max_in_flight))
    print(f"{texts:,} texts in 16 shards, 100 texts a request, emulator with no latency, "
          f"--max-in-flight {args.max_in_flight}, one worker process\n")
    print("| dims | requests | wall s | requests/min | CPU s, beamvec | CPU ms per request | CPU s, emulator |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['dim']:,} | {r['requests']:,} | {r['wall']:.1f} | {r['requests'] / r['wall'] * 60:,.0f} | "
              f"{r['cpu']:.1f} | {r['cpu'] / r['requests'] * 1000:.1f} | {r['emulator_cpu']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
