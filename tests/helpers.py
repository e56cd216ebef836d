"""Shared helpers for the pipeline tests: write a corpus, run the CLI (in
process or as a child), check its one-line errors, read an output back,
count what the emulator billed. (Fixtures live in conftest.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq

from beamvec.backends.base import PREFLIGHT_TEXT
from beamvec.cli import main
from beamvec.emulator import Emulator
from beamvec.records import content_hash


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def beam_run(capsys, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, "run", "--runner=DirectRunner", "--progress-interval=0", *args)


def jsonl(rows: Mapping[str, str]) -> str:
    """JSON lines of ``{"id": …, "text": …}`` records, one per (id, text) pair."""
    return "".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in rows.items())


def write_jsonl(path: Path, rows: Mapping[str, str]) -> None:
    """A JSONL shard of ``rows`` at ``path`` (its folder made if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(jsonl(rows))


def one_line(err: str, command: str | None = "run") -> str:
    """A user-facing failure's whole stderr: one line, no traceback, and
    ``beamvec COMMAND: …`` when ``command`` is given. Returns the line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err[-3000:]
    if command is not None:
        assert lines[0].startswith(f"beamvec {command}: "), err[-3000:]
    return lines[0]


class NoCapture:
    """A capsys stand-in for module-scoped fixtures (which have no capsys)
    that run the CLI for its output, not for what it prints."""

    def readouterr(self) -> Any:
        return type("Captured", (), {"out": "", "err": ""})()


def read_output(root: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Vectors, dead letters and manifest of an output, read back with pyarrow."""
    fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
    path = path.rstrip("/")
    with fs.open(f"{path}/_manifest.json", "rb") as fh:
        manifest = json.loads(fh.read())
    vectors = {}
    for file in sorted(fs.glob(f"{path}/vectors/*.parquet")):
        with fs.open(file, "rb") as fh:
            vectors[Path(file).stem] = pq.read_table(fh)
    dead = {}
    for file in sorted(fs.glob(f"{path}/dead_letters/*.parquet")):
        with fs.open(file, "rb") as fh:
            dead[Path(file).stem] = pq.read_table(fh)
    return {
        "manifest": manifest,
        "vectors": vectors,
        "dead": dead,
        "success": fs.exists(f"{path}/_SUCCESS"),
        "files": sorted(fs.find(path)),
    }


def vectors_by_id(out: dict[str, Any]) -> dict[str, np.ndarray]:
    result: dict[str, np.ndarray] = {}
    for table in out["vectors"].values():
        ids = table.column("id").to_pylist()
        dim = table.schema.field("vector").type.list_size
        matrix = np.asarray(table.column("vector").combine_chunks().flatten()).reshape(len(ids), dim)
        for i, vid in enumerate(ids):
            assert vid not in result, f"id {vid} written twice"
            result[vid] = matrix[i]
    return result


def assert_reconciled(out: dict[str, Any]) -> None:
    """For every shard: read = embedded + dead-lettered, and the files agree."""
    assert out["success"], "no _SUCCESS"
    for name, shard in out["manifest"]["shards"].items():
        assert shard["read"] == shard["embedded"] + shard["dead_lettered"], name
        rows = out["vectors"][name].num_rows
        assert rows == shard["embedded"], name
        dead_rows = out["dead"][name].num_rows if name in out["dead"] else 0
        assert dead_rows == shard["dead_lettered"], name
    totals = out["manifest"]["totals"]
    assert totals["read"] == totals["embedded"] + totals["dead_lettered"]


#: The repository root, and the ``src`` folder a subprocess must import beamvec from.
ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
#: The key the shared emulator fixtures expect (conftest.py sets it in the environment).
API_KEY = "fakekey-SHARED-tests-0123456789"
#: The text a backend's preflight embeds when the run gives it none of its own.
PREFLIGHT_HASH = content_hash(PREFLIGHT_TEXT)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a ``beamvec`` child process: this checkout's code,
    the emulator's key, no proxy for 127.0.0.1, gcsfs without its slow probe."""
    return {**os.environ, "PYTHONPATH": SRC, "GEMINI_API_KEY": API_KEY,
            "NO_PROXY": "127.0.0.1,localhost", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", **extra}


def billed_texts(emu: Emulator) -> dict[str, int]:
    """Texts the emulator embedded, by content hash, a bare preflight probe left out."""
    counts = dict(emu.stats()["text_counts"])
    counts.pop(PREFLIGHT_HASH, None)
    return counts


def pause_when(proc: subprocess.Popen, holds: Callable[[], bool], what: str, timeout: float = 300) -> None:
    """Return once ``holds()`` is true, with the child paused (SIGSTOP) right
    after: the caller then kills it, or checks something and sends SIGCONT.
    The child runs while the test looks (a child stopped in the middle of a
    request would hold a one-at-a-time server, gcp-storage-emulator's, and the
    look with it), so it may have gone a little further than what was seen:
    callers assert on what they read after the pause. ``timeout`` only guards
    against a hang; the child ending first is an AssertionError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if holds():
            proc.send_signal(signal.SIGSTOP)
            return
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    _, err = proc.communicate(timeout=60)
    raise AssertionError(f"never saw {what} (exit {proc.returncode}): {err!r:.3000}")
