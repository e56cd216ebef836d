"""Ctrl-C (and SIGTERM) on a Gemini run is prompt and truthful.

Real signals to a real `beamvec run` subprocess, against the emulator with
200 ms of latency per request: the first press stops the run before it is
done, with exit 130 and one line whose count of committed shards is the count
of vector files; a second press exits without damage; SIGTERM does the same
with exit 143. A rerun then bills only the texts of shards that were not
committed (the emulator's /stats count every billed text). How long each
takes is measured by benchmarks/stop_latency.py, never asserted here.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from beamvec.contract import read_footer
from beamvec.emulator.server import Emulator
from beamvec.records import content_hash

from helpers import (
    assert_reconciled,
    billed_texts,
    child_env,
    one_line,
    read_output,
    vectors_by_id,
    write_jsonl,
)

KEY = "fakekey-INTERRUPT-0123456789"
LOCAL = fsspec.filesystem("file")
SHARDS = ("a", "b", "c", "d")
pytestmark = pytest.mark.slow  # every test signals a real run


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(api_key=KEY, latency_ms=200) as emu:
        yield emu


def _corpus(folder: Path) -> dict[str, str]:
    texts = {}
    folder.mkdir(parents=True)
    for name in SHARDS:
        rows = {f"{name}-{i}": f"{name}: record {i} of the interrupt test, {i * 7919 % 1000}"
                for i in range(300)}
        texts.update(rows)
        write_jsonl(folder / f"{name}.jsonl", rows)
    return texts


def _command(tmp_path: Path, emu: Emulator) -> list[str]:
    return [
        sys.executable, "-m", "beamvec.cli", "run", "--runner=DirectRunner", "--quiet",
        "--input", str(tmp_path / "in" / "*.jsonl"), "--output", str(tmp_path / "out"),
        "--backend", "gemini", "--api-base-url", emu.url, "--output-dimensionality", "16",
        "--max-in-flight", "2", "--concurrent-shards", "2",
    ]


def _committed(out: Path) -> set[str]:
    """Shards whose vector file is whole and agrees with its footer."""
    done = set()
    for path in (out / "vectors").glob("*.parquet"):
        rows = pq.ParquetFile(path).metadata.num_rows
        assert read_footer(LOCAL, str(path))["shard"]["embedded"] == rows, path
        done.add(path.stem)
    return done


def _signal_once_committed(proc: subprocess.Popen, out: Path, signals: list[tuple[int, float]]) -> float:
    """Wait for a first committed shard, then send ``signals`` (each after its
    delay); returns when the first was sent (time.monotonic)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any((out / "vectors").glob("*.parquet")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    first = time.monotonic()
    for signum, delay in signals:
        time.sleep(delay)
        proc.send_signal(signum)
    return first


def _rerun_bills_only_the_rest(tmp_path: Path, emu: Emulator, texts: dict[str, str],
                               committed: set[str], first: dict[str, int]) -> None:
    emu.reset()
    result = subprocess.run(_command(tmp_path, emu), env=child_env(GEMINI_API_KEY=KEY), capture_output=True, text=True,
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
    proc = subprocess.Popen(_command(tmp_path, emulator), env=child_env(GEMINI_API_KEY=KEY), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        pressed = _signal_once_committed(proc, out, [(signum, 0.0)])
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - pressed
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"{word}: exited {took:.1f} s after the signal")
    assert proc.returncode == code, err[-3000:]
    line = one_line(err)
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
    proc = subprocess.Popen(_command(tmp_path, emulator), env=child_env(GEMINI_API_KEY=KEY), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        pressed = _signal_once_committed(proc, out, [(signal.SIGINT, 0.0), (signal.SIGINT, 0.1)])
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - pressed
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"second press: exited {took:.1f} s after the first")
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "interrupted again; exiting now" in err, err[-3000:]
    committed = _committed(out)  # every visible file is whole
    assert not (out / "_SUCCESS").exists()
    _rerun_bills_only_the_rest(tmp_path, emulator, texts, committed, billed_texts(emulator))
