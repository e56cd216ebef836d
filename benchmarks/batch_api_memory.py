"""Memory of `beamvec run --batch-api`, as peak RSS of the driver process.

For each corpus size, a fresh corpus (JSONL shards of distinct texts) is run
through `beamvec run --backend gemini --batch-api` against the emulator (its
own process, `beamvec emulator`, short jobs, 64 dims so that the emulator's
JSON stays small). The run is a child process; it reports ru_maxrss twice:
right after the Batch API phase and at the end of the run. The
DirectRunner's runner lives in the launching process (it holds every
shuffle's data), so by default (``--stages forked``) each Batch API stage
(request files, result files: pipeline/batch_stage.py) runs in a forked
process, as it would on a remote runner: the run's own peak after the batch
phase is then the driver's (job records, polls, reports), and the stages'
largest peak (RUSAGE_CHILDREN) is reported beside it. ``--stages inline``
runs them in the driver's process; ``--workers N`` runs the DirectRunner's
workers in N processes (its runner stays in the launcher).
Printed: a table and the large/small ratios.

    python benchmarks/batch_api_memory.py [--sizes 10000 500000] [--shards 10]
        [--dim 64] [--text-chars 120] [--stages forked|inline] [--workers 0]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KEY = "bench-batch-key"
MiB = 1024 * 1024

_CHILD = """
import json, os, resource, sys, traceback
from beamvec.driver import batch_phase, job
from beamvec.pipeline import batch_stage
peak = {}
if os.environ.get("BENCH_STAGES_FORKED") == "1":
    # As on a remote runner (Dataflow): the Batch API stages' runner and
    # workers live outside the driver, here in a forked process each.
    real_stage = batch_stage.run_stage
    def forked(pipeline, target):
        pid = os.fork()
        if pid == 0:
            try:
                real_stage(pipeline, target)
                os._exit(0)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
        if os.waitpid(pid, 0)[1] != 0:
            raise SystemExit("a Batch API stage failed")
    batch_stage.run_stage = batch_phase.run_stage = forked
real = batch_phase.run_batch_phase
def measured(*args, **kwargs):
    phase = real(*args, **kwargs)
    peak["batch_phase_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak["batch_workers_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return phase
job.run_batch_phase = measured
summary = job.run_job(sys.argv[1:], out=sys.stderr)
peak["run_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
peak["workers_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
peak["complete"] = summary.status == "complete"
print(json.dumps(peak))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_corpus(root: Path, records: int, shards: int, chars: int) -> None:
    root.mkdir(parents=True)
    per = -(-records // shards)
    pad = "lorem ipsum dolor sit amet " * (chars // 27 + 1)
    n = 0
    for s in range(shards):
        with open(root / f"part-{s:03d}.jsonl", "w") as fh:
            for _ in range(min(per, records - n)):
                text = f"record {n} " + pad[: max(0, chars - 12)]
                fh.write(json.dumps({"id": f"r{n}", "text": text}) + "\n")
                n += 1


def wait_for(port: int, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"the emulator did not listen on port {port}")


def run_one(records: int, args: argparse.Namespace, env: dict[str, str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="beamvec-bench-batch-") as tmp:
        root = Path(tmp)
        write_corpus(root / "in", records, args.shards, args.text_chars)
        port = free_port()
        emulator = subprocess.Popen(
            [sys.executable, "-m", "beamvec.cli", "emulator", "--port", str(port),
             "--api-key", KEY, "--batch-job-s", str(args.job_s)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for(port)
            argv = [
                "--input", str(root / "in" / "*.jsonl"), "--output", str(root / "out"),
                "--backend", "gemini", "--api-base-url", f"http://127.0.0.1:{port}",
                "--output-dimensionality", str(args.dim), "--batch-api",
                "--batch-poll-interval", "1", "--quiet",
            ]  # fmt: skip
            if args.workers:
                argv += ["--direct_running_mode=multi_processing", f"--direct_num_workers={args.workers}"]
            started = time.monotonic()
            child = subprocess.Popen(
                [sys.executable, "-c", _CHILD, *argv], env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            out, err = child.communicate()
            elapsed = time.monotonic() - started
            if child.returncode != 0:
                raise SystemExit(f"the run of {records:,} records failed: {err.decode()[-2000:]}")
            peak = json.loads(out.decode().strip().splitlines()[-1])
        finally:
            emulator.terminate()
            emulator.wait()
    return {
        "records": records,
        "batch_phase_mib": peak["batch_phase_kib"] / 1024,
        "run_mib": peak["run_kib"] / 1024,
        "batch_workers_mib": peak["batch_workers_kib"] / 1024,
        "workers_mib": peak["workers_kib"] / 1024,
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 500_000])
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--text-chars", type=int, default=120)
    parser.add_argument("--job-s", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=0,
                        help="worker processes of the DirectRunner (0: in the runner's process)")
    parser.add_argument("--stages", choices=["forked", "inline"], default="forked",
                        help="run the Batch API stages in a forked process (as remote) or inline")
    args = parser.parse_args()
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, GEMINI_API_KEY=KEY, NO_PROXY="127.0.0.1,localhost",
               BENCH_STAGES_FORKED="1" if args.stages == "forked" else "0",
               PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))  # fmt: skip
    rows = [run_one(n, args, env) for n in args.sizes]
    where = "Batch API stages in forked processes" if args.stages == "forked" else "stages inline"
    if args.workers:
        where += f", {args.workers} DirectRunner worker processes"
    print(f"peak RSS, MiB ({where}); children: the largest child process's peak")
    print(f"{'records':>10} {'driver, batch phase':>20} {'children, batch phase':>22} "
          f"{'driver, whole run':>18} {'children, whole run':>20} {'s':>7}")
    for r in rows:
        print(f"{r['records']:>10,} {r['batch_phase_mib']:>20.0f} {r['batch_workers_mib']:>22.0f} "
              f"{r['run_mib']:>18.0f} {r['workers_mib']:>20.0f} {r['seconds']:>7.1f}")  # fmt: skip
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        print(f"ratio {large['records']:,} / {small['records']:,}: batch phase "
              f"{large['batch_phase_mib'] / small['batch_phase_mib']:.2f}x, whole run "
              f"{large['run_mib'] / small['run_mib']:.2f}x (target: driver's batch phase within 1.2x)")  # fmt: skip


if __name__ == "__main__":
    main()
