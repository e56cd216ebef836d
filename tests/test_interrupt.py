"""Issue 33 item 2: Ctrl-C (and SIGTERM) on a Gemini run is prompt and truthful.

Real signals to a real `beamvec run` subprocess, against the emulator with
200 ms of latency per request: the first press stops the run promptly (after
it, the emulator sees no more requests than were in flight) with exit 130 and
one line whose count of committed shards is the count of vector files; a
second press exits at once, while requests sent after the first hang for
ten minutes; SIGTERM does as the first press with exit 143. A rerun then
bills only the texts of shards that were not committed (the emulator's
/stats count every billed text).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from beamvec.contract import read_footer
from beamvec.emulator.server import Emulator
from beamvec.records import content_hash

from helpers import (
    API_KEY,
    SRC,
    assert_reconciled,
    billed_texts,
    pause_when,
    read_output,
    vectors_by_id,
)

LOCAL = fsspec.filesystem("file")
SHARDS = ("a", "b", "c", "d")
MAX_IN_FLIGHT, CONCURRENT_SHARDS = 2, 2
pytestmark = pytest.mark.slow  # every test signals a real run


@pytest.fixture
def emulator_settings() -> dict[str, float]:
    return {"latency_ms": 200}


def _corpus(folder: Path) -> dict[str, str]:
    texts = {}
    folder.mkdir(parents=True)
    for name in SHARDS:
        rows = {f"{name}-{i}": f"{name}: record {i} of the interrupt test, {i * 7919 % 1000}"
                for i in range(300)}
        texts.update(rows)
        (folder / f"{name}.jsonl").write_text(
            "".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in rows.items())
        )
    return texts


def _command(tmp_path: Path, emu: Emulator) -> list[str]:
    return [
        sys.executable, "-m", "beamvec.cli", "run", "--runner=DirectRunner", "--quiet",
        "--input", str(tmp_path / "in" / "*.jsonl"), "--output", str(tmp_path / "out"),
        "--backend", "gemini", "--api-base-url", emu.url, "--output-dimensionality", "16",
        "--max-in-flight", str(MAX_IN_FLIGHT), "--concurrent-shards", str(CONCURRENT_SHARDS),
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC, "GEMINI_API_KEY": API_KEY,
            "NO_PROXY": "127.0.0.1,localhost"}


def _committed(out: Path) -> set[str]:
    """Shards whose vector file is whole and agrees with its footer."""
    done = set()
    for path in (out / "vectors").glob("*.parquet"):
        rows = pq.ParquetFile(path).metadata.num_rows
        assert read_footer(LOCAL, str(path))["shard"]["embedded"] == rows, path
        done.add(path.stem)
    return done


def _arrived(emu: Emulator) -> int:
    """Requests that reached the emulator, answered or not."""
    return sum(emu.stats(with_texts=False)["by_route"].values())


def _signal_once_committed(proc: subprocess.Popen, out: Path, emu: Emulator, signum: int) -> int:
    """Pause the run once a first shard is committed, send ``signum``, let it
    go on; returns how many requests had reached the emulator by the signal."""
    pause_when(proc, lambda: any((out / "vectors").glob("*.parquet")), "a committed shard")
    seen = _arrived(emu)
    proc.send_signal(signum)
    proc.send_signal(signal.SIGCONT)
    return seen


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("beamvec run: "), err
    return lines[0]


def _rerun_bills_only_the_rest(tmp_path: Path, emu: Emulator, texts: dict[str, str],
                               committed: set[str], first: dict[str, int]) -> None:
    emu.reset()
    result = subprocess.run(_command(tmp_path, emu), env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    second = billed_texts(emu)
    output = read_output(str(tmp_path / "out"))
    assert_reconciled(output)
    assert set(vectors_by_id(output)) == set(texts)
    done_before = {content_hash(t) for k, t in texts.items() if k.split("-")[0] in committed}
    assert not done_before & set(second), "the rerun billed texts of committed shards"
    assert set(first) | set(second) == {content_hash(t) for t in texts.values()}


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated")])
def test_first_signal_stops_promptly_and_counts_the_truth(signum, code, word, tmp_path, emulator):
    texts = _corpus(tmp_path / "in")
    out = tmp_path / "out"
    proc = subprocess.Popen(_command(tmp_path, emulator), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        seen = _signal_once_committed(proc, out, emulator, signum)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err[-3000:]
    # prompt: no request leaves after the signal; at most those already on their way arrive
    after = _arrived(emulator) - seen
    assert after <= MAX_IN_FLIGHT * CONCURRENT_SHARDS, f"{after} requests arrived after the signal"
    line = _one_line(err)
    committed = _committed(out)
    said = re.search(r"(\d+) of 4 shards are committed", line)
    assert line.startswith(f"beamvec run: {word};") and said, line
    assert int(said.group(1)) == len(committed), (line, committed)
    assert committed and committed != set(SHARDS), committed
    assert not (out / "_lease.json").exists() and not (out / "_SUCCESS").exists()
    time.sleep(1.0)
    assert _committed(out) == committed  # nothing was left running to commit more
    _rerun_bills_only_the_rest(tmp_path, emulator, texts, committed, billed_texts(emulator))


def test_a_second_press_exits_at_once_without_damage(tmp_path, emulator):
    texts = _corpus(tmp_path / "in")
    out = tmp_path / "out"
    proc = subprocess.Popen(_command(tmp_path, emulator), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        pause_when(proc, lambda: any((out / "vectors").glob("*.parquet")), "a committed shard")
        # From here every request is held for ten minutes; the first press
        # comes with one of them in flight, so the run is still settling (up
        # to SETTLE_S, 5 s) when the second press comes 0.1 s later.
        emulator.update(hang=1.0, hang_s=600.0)
        proc.send_signal(signal.SIGCONT)
        pause_when(proc, lambda: emulator.stats(with_texts=False)["faults"].get("hang", 0) > 0,
                   "a request held by the emulator")
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    emulator.update(hang=0.0)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "interrupted again; exiting now" in err, err[-3000:]
    committed = _committed(out)  # every visible file is whole
    assert not (out / "_SUCCESS").exists()
    _rerun_bills_only_the_rest(tmp_path, emulator, texts, committed, billed_texts(emulator))
