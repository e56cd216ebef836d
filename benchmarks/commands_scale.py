"""`beamvec inspect` and `beamvec search` on a 1,000,000-row output:
wall time and peak memory of each, as a user runs them.

The output is written directly in beamvec's format (benchmarks/reuse_memory.py's
writer: 100 vector files of 10,000 rows, 384 dims, the built-in local model's
name, so `search` embeds its query with that model). Both commands scan the
vector files in record batches (pyarrow, pre_buffer off): memory stays bounded
by a batch, not by the output's size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reuse_memory import write_output  # noqa: E402

BIN = Path(sys.executable).parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    from beamvec.backends.local import MODEL_NAME

    with tempfile.TemporaryDirectory(prefix="beamvec-cmds-") as tmp:
        out = Path(tmp) / "out"
        started = time.monotonic()
        write_output(out, args.rows, 384, model=MODEL_NAME)
        (out / "_SUCCESS").write_bytes(b"")
        built = time.monotonic() - started
        rows = []
        for label, argv in (
            ("beamvec inspect OUT", [str(BIN / "beamvec"), "inspect", str(out)]),
            ("beamvec search OUT 'a query' -k 5", [str(BIN / "beamvec"), "search", str(out), "a query", "-k", "5"]),
        ):
            rows.append((label, *timed_rusage(argv)))
    print(f"{args.rows:,} rows of 384 dims in {args.rows // 10_000} files ({built:.0f} s to write)\n")
    print("| command | wall s | peak RSS |")
    print("| --- | ---: | ---: |")
    for label, wall, rss in rows:
        print(f"| `{label}` | {wall:.1f} | {rss / 2**20:,.0f} MiB |")
    return 0


def timed_rusage(argv: list[str]) -> tuple[float, int]:
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) not in (0, 1):  # inspect exits 1 on an incomplete output
        raise SystemExit(f"{argv[1]} failed: {proc.stderr.read()[-500:] if proc.stderr else ''}")
    return wall, usage.ru_maxrss * 1024


if __name__ == "__main__":
    sys.exit(main())
