"""One writer per output, fenced, with real processes.

Runs of `python -m beamvec.cli run` against the Gemini emulator (with
latency, so a run is caught in the middle), on local disk and on S3 (moto):
a run paused (SIGSTOP) while another takes the output over with
``--break-lease``, resumed after or while the holder runs; two runs started
together; a launcher killed with kill -9 and rerun at once; a renewal racing
a takeover. Each ends with one row per input record carrying the emulator's
vector for its text, and the losing run changed no file of the output.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np
import pytest

from beamvec.contract import lease_file
from beamvec.driver.lease import acquire, hold_lease, read_lease
from beamvec.emulator import Emulator, expected_vector
from beamvec.write.sink import Output

from helpers import (
    assert_reconciled,
    child_env,
    jsonl,
    one_line,
    read_output,
    vectors_by_id,
)

pytest_plugins = ["servers"]

KEY = "fakekey-FENCING-0123456789"
MODEL = "gemini-embedding-001"
DIM = 16
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
SHARDS = {f"s{i}": 150 for i in range(8)}  # 12 requests of 100 texts: shards commit one by one
#: What defines the output: a losing run must change none of it.
MEANING = ("vectors/", "dead_letters/", "_commits/", "_manifest.json", "_SUCCESS")


def _want(text: str) -> np.ndarray:
    """The emulator's vector, L2-normalized (below the native size the client normalizes)."""
    v = expected_vector(MODEL, "RETRIEVAL_DOCUMENT", DIM, text).astype(np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


class Store:
    """An output on local disk or S3, and how a child run reaches it."""

    def __init__(self, base: str, options: dict[str, Any], flags: list[str], env: dict[str, str]) -> None:
        self.base, self.options, self.flags, self.env = base, options, flags, env
        self.out = f"{base}/out"
        self.fs, self.root = fsspec.core.url_to_fs(self.out, **options)

    @property
    def local(self) -> bool:
        return not self.options

    def write_inputs(self) -> dict[str, str]:
        texts = {}
        for shard, count in SHARDS.items():
            rows = {f"{shard}-{i}": f"{shard}: fenced record {i}, {i * 7919 % 1000}" for i in range(count)}
            texts.update(rows)
            fs, path = fsspec.core.url_to_fs(f"{self.base}/in/{shard}.jsonl", **self.options)
            if self.local:
                fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            fs.pipe_file(path, jsonl(rows).encode())
        return texts

    def meaning(self) -> dict[str, str]:
        """sha256 of every file that says what the output holds."""
        self.fs.invalidate_cache()
        try:
            found = sorted(self.fs.find(self.root))
        except FileNotFoundError:
            return {}
        rel = {p[len(self.root.rstrip("/")) + 1:]: p for p in found}
        return {
            name: hashlib.sha256(self.fs.cat_file(path)).hexdigest()
            for name, path in rel.items() if name.startswith(MEANING)
        }

    def committed(self) -> int:
        return sum(1 for name in self.meaning() if name.startswith("vectors/"))


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, monkeypatch) -> Store:
    if request.param == "local":
        return Store(str(tmp_path), {}, [], {})
    options = request.getfixturevalue("s3_server")
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    flags = ["--storage-option", f"client_kwargs.endpoint_url={options['endpoint_url']}"]
    return Store(request.getfixturevalue("s3_bucket"), options, flags, AWS_ENV)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(api_key=KEY, latency_ms=400) as emu:
        yield emu


def _start(store: Store, emu: Emulator, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "beamvec.cli", "run", "--runner=DirectRunner", "--quiet",
            "--input", f"{store.base}/in/*.jsonl", "--output", store.out, *store.flags,
            "--backend", "gemini", "--api-base-url", emu.url, "--output-dimensionality", str(DIM),
            "--task-type", "RETRIEVAL_DOCUMENT",
            "--max-in-flight", "1", "--concurrent-shards", "1", *extra]
    env = child_env(GEMINI_API_KEY=KEY, **store.env)
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in err, err[-3000:]
    return proc.returncode, err


def _wait(predicate, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"never saw {what} (exit {proc.poll()})")


def _pause(proc: subprocess.Popen, store: Store) -> None:
    """SIGSTOP, at a moment the run does not hold the output's lock (local
    disk): a run paused inside its few milliseconds of a commit would hold
    every other run off until resumed (lease_file.locked says so in one line)."""
    for _ in range(200):
        os.kill(proc.pid, signal.SIGSTOP)
        if not store.local:
            return
        fd = os.open(store.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.02)
        finally:
            os.close(fd)
    raise AssertionError("the run kept the output locked")


def _assert_complete(store: Store, texts: dict[str, str]) -> None:
    store.fs.invalidate_cache()  # written by other processes
    out = read_output(store.out, store.options)
    assert_reconciled(out)
    got = vectors_by_id(out)
    assert set(got) == set(texts)  # one row per input record, none twice (vectors_by_id)
    for rid, text in texts.items():
        np.testing.assert_allclose(got[rid], _want(text), rtol=0, atol=1e-6)


def _kill(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.communicate()


@pytest.mark.slow
@pytest.mark.parametrize("resume", ["after", "while"])
def test_a_paused_run_taken_over_changes_nothing_once_resumed(store, emulator, resume):
    """A is paused mid-run; B takes the output over (--break-lease: A's
    process lives on this host). A resumed after B finished, or while B
    still runs: A exits 1 in one line, B succeeds, and A changed nothing."""
    texts = store.write_inputs()
    a = _start(store, emulator)
    b = None
    try:
        _wait(lambda: store.committed() >= 1, a, "A's first commit")
        _pause(a, store)
        b = _start(store, emulator, "--break-lease")
        if resume == "while":
            _wait(lambda: len(store.meaning()) > 0 and b.poll() is None and _holder_pid(store) == b.pid,
                  b, "B holding the output")
            _wait(lambda: store.committed() >= 2, b, "B's commits")
            before = store.meaning()
            os.kill(a.pid, signal.SIGCONT)
            code_a, err_a = _finish(a)
            code_b, err_b = _finish(b)
            assert code_b == 0, err_b[-3000:]
            changed = {k for k, v in before.items() if store.meaning().get(k) != v}
            # only B may have rewritten what it held: the manifest it finalizes
            assert changed <= {"_manifest.json"}, changed
        else:
            code_b, err_b = _finish(b)
            assert code_b == 0, err_b[-3000:]
            before = store.meaning()
            os.kill(a.pid, signal.SIGCONT)
            code_a, err_a = _finish(a)
            assert store.meaning() == before  # not one file of the output changed
        line = one_line(err_a)
        assert code_a == 1, err_a[-3000:]
        assert "another run took over" in line and store.out in line, line
        if resume == "while":
            assert f"pid {b.pid}" in line, line
    finally:
        _kill(a, *(p for p in [b] if p is not None))
    _assert_complete(store, texts)
    manifest = read_output(store.out, store.options)["manifest"]
    assert len(manifest["runs"]) == 1  # B's: the resumed run recorded nothing


def _holder_pid(store: Store) -> int | None:
    held, _ = read_lease(Output(store.out, store.options))
    return held.pid if held else None


@pytest.mark.slow
def test_two_runs_started_together(store, emulator):
    """Started within 100 ms: exactly one holds the output and completes, the
    other is refused in one line naming it."""
    texts = store.write_inputs()
    a = _start(store, emulator)
    b = _start(store, emulator)
    try:
        (code_a, err_a), (code_b, err_b) = _finish(a), _finish(b)
    finally:
        _kill(a, b)
    assert sorted([code_a, code_b]) == [0, 1], (err_a[-2000:], err_b[-2000:])
    loser, winner = (a, b) if code_a == 1 else (b, a)
    line = one_line(err_a if loser is a else err_b)
    assert "another beamvec run is writing to" in line and f"pid {winner.pid}" in line, line
    _assert_complete(store, texts)


@pytest.mark.slow
def test_a_launcher_killed_and_rerun_at_once(store, emulator):
    """kill -9, and a rerun on the same host at once (its holder is gone, the
    lease not expired): the rerun takes over and completes."""
    texts = store.write_inputs()
    a = _start(store, emulator)
    try:
        _wait(lambda: store.committed() >= 1, a, "A's first commit")
        os.kill(a.pid, signal.SIGKILL)
        b = _start(store, emulator)  # A not even reaped yet: a zombie holds nothing
        code_b, err_b = _finish(b)
    finally:
        _kill(a)
    assert code_b == 0, err_b[-3000:]
    _assert_complete(store, texts)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_renewal_racing_a_takeover_never_overwrites_it(where, request, tmp_path):
    """A holder renewing as fast as it can while another run breaks the
    lease: the renewal never writes over the new holder's lease, and the
    holder is told once that it lost it."""
    if where == "local":
        output = Output(str(tmp_path / "out"))
    else:
        options = request.getfixturevalue("s3_server")
        output = Output(f"{request.getfixturevalue('s3_bucket')}/out", options)
    lost: list[float] = []
    with pytest.raises(Exception, match="another run took over"), \
            hold_lease(output, renew_every=0.01, check_every=0.01, on_lost=lambda: lost.append(1)):
        time.sleep(0.1)
        taker = acquire(output, break_lease=True)  # same process, so only --break-lease frees it
        deadline = time.monotonic() + 30
        while not lost and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(20):  # renewals that would overwrite it had ample time
            assert lease_file.read(output).lease == taker
            time.sleep(0.01)
    assert lost == [1]
    assert lease_file.read(output).lease == taker
    assert taker.generation == 2



class _RemoteJob:
    """A PipelineResult of a remote runner, as far as a stopping launcher uses it."""

    def __init__(self, cancels: bool) -> None:
        self.cancels = cancels
        self.state = "RUNNING"
        self.calls: list[str] = []

    def cancel(self) -> None:
        self.calls.append("cancel")
        if not self.cancels:
            raise RuntimeError("cancel refused by the service")
        self.state = "CANCELLED"

    def wait_until_finish(self, duration: int | None = None) -> str:
        self.calls.append(f"wait {duration}")
        return self.state


def test_a_stopped_launcher_cancels_its_remote_job_or_says_it_goes_on(capsys):
    from beamvec.driver.job import CANCEL_WAIT_S, _cancel_remote

    capsys.readouterr()  # what importing Beam's runners may print
    job = _RemoteJob(cancels=True)
    _cancel_remote(job)
    assert job.calls == ["cancel", f"wait {CANCEL_WAIT_S * 1000}"]
    assert capsys.readouterr().err == ""  # cancelled: the lease may go
    stuck = _RemoteJob(cancels=False)
    _cancel_remote(stuck)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("beamvec run: the remote job is not cancelled"), err
    assert "goes on" in lines[0] and "cancel it" in lines[0]
