"""How long `beamvec run` takes to stop after Ctrl-C or SIGTERM, against the README's bounds.

A real `beamvec run` (a child process, the DirectRunner) embeds 4 shards of
300 texts through the emulator (in this process, 127.0.0.1 only, 200 ms a
request, --max-in-flight 2, --concurrent-shards 2). Once its first shard is
committed it gets: SIGINT; SIGTERM; SIGINT and a second SIGINT 0.1 s later.
Printed per case: the seconds from the (first) signal to the process's exit,
its exit code, the shards committed, and the ratio to the README's bound (the
first press: 20 s; a second press: at once, counted against 5 s). The tests
(tests/driver/test_interrupt.py) check what the exit says and bills; the
time is measured here, never asserted. Exits 1 only if a run ended with the
wrong exit code.

    python benchmarks/stop_latency.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from beamvec.emulator import Emulator

KEY = "fakekey-STOP-benchmark-0123456789"
SHARDS = ("a", "b", "c", "d")
#: The README's promises: the first press ends the run within 20 s; a second exits at once.
FIRST_BOUND_S, SECOND_BOUND_S = 20.0, 5.0
CASES = (
    ("Ctrl-C", [(signal.SIGINT, 0.0)], 130, FIRST_BOUND_S),
    ("SIGTERM", [(signal.SIGTERM, 0.0)], 143, FIRST_BOUND_S),
    ("Ctrl-C twice, 0.1 s apart", [(signal.SIGINT, 0.0), (signal.SIGINT, 0.1)], 130, SECOND_BOUND_S),
)


def write_corpus(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name in SHARDS:
        lines = [json.dumps({"id": f"{name}-{i}", "text": f"{name}: record {i} of the stop benchmark"})
                 for i in range(300)]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


def one_stop(root: Path, emu: Emulator, signals: list[tuple[int, float]]) -> tuple[float, int, int]:
    """(seconds from the first signal to exit, exit code, shards committed)."""
    out = root / "out"
    command = [
        sys.executable, "-m", "beamvec.cli", "run", "--runner=DirectRunner", "--quiet",
        "--input", str(root / "in" / "*.jsonl"), "--output", str(out), "--backend", "gemini",
        "--api-base-url", emu.url, "--output-dimensionality", "16",
        "--max-in-flight", "2", "--concurrent-shards", "2",
    ]
    env = {**os.environ, "GEMINI_API_KEY": KEY}
    env.pop("GOOGLE_API_KEY", None)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline and not any((out / "vectors").glob("*.parquet")):
        time.sleep(0.05)
    first = time.monotonic()
    for signum, delay in signals:
        time.sleep(delay)
        proc.send_signal(signum)
    code = proc.wait(timeout=300)
    return time.monotonic() - first, code, len(list((out / "vectors").glob("*.parquet")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    failed = 0
    print(f"{len(SHARDS)} shards of 300 texts; emulator 200 ms a request; load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| signal | seconds to exit (each run) | exit code | shards committed of 4 | worst / bound |")
    print("|---|---|---|---|---|")
    with Emulator(api_key=KEY, latency_ms=200) as emu, tempfile.TemporaryDirectory() as tmp:
        for case, (label, signals, want, bound) in enumerate(CASES):
            took, codes, committed = [], [], []
            for n in range(args.repeat):
                root = Path(tmp) / f"case{case}-{n}"
                write_corpus(root / "in")
                seconds, code, done = one_stop(root, emu, signals)
                took.append(seconds)
                codes.append(code)
                committed.append(done)
                failed |= code != want
            print(f"| {label} | {', '.join(f'{t:.1f}' for t in took)} | {', '.join(map(str, codes))} | "
                  f"{', '.join(map(str, committed))} | {max(took) / bound:.2f} of {bound:g} s |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
