"""Run every benchmark in this folder, one after the other (`make bench`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = [
    "local_throughput.py", "quota_benchmark.py", "client_cost.py", "reuse_memory.py",
    "window_ceiling.py", "commands_scale.py", "scale_benchmark.py", "write_cost.py", "reuse_join.py",
    "batch_api_memory.py", "stop_latency.py",
]


def main() -> int:
    here = Path(__file__).resolve().parent
    failed = 0
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        failed |= subprocess.run([sys.executable, str(here / name)]).returncode
    return failed


if __name__ == "__main__":
    sys.exit(main())
