"""The output lease (lease.py): one writer per output, on every store.

Local disk, memory://, and real S3 and GCS protocol servers on 127.0.0.1
(moto through s3fs, gcp-storage-emulator through gcsfs; servers.py).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beamvec.driver.lease import (
    LEASE,
    Lease,
    LeaseHeldError,
    acquire,
    create_if_absent,
    hold_lease,
    read_lease,
    release,
)
from beamvec.errors import SystemicError
from beamvec.write.sink import Output, ParquetShardWriter

pytest_plugins = ["servers"]


@pytest.fixture(params=["local", "memory", "s3", "gcs"])
def output(request, tmp_path) -> Output:
    if request.param == "local":
        return Output(str(tmp_path / "out"))
    if request.param == "memory":
        return Output(f"memory://lease-{uuid.uuid4().hex}/out")
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        return Output(f"{request.getfixturevalue('s3_bucket')}/out", server)
    server = request.getfixturevalue("gcs_server")
    return Output(f"{request.getfixturevalue('gcs_bucket')}/out", server)


def _raw(output: Output) -> dict:
    output.fs.invalidate_cache()
    # one GET: the lease may be rewritten (renewed) between a file's open and its read
    return json.loads(output.fs.cat_file(output.path(LEASE)))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plant(output: Output, **fields) -> Lease:
    """Another run's lease, as that run would have written it."""
    now = time.time()
    data = {"owner": uuid.uuid4().hex, "host": "other-host", "pid": 4242,
            "started": _iso(now - 600), "expires": _iso(now + 120), **fields}
    output.makedirs(output.root)
    output.fs.pipe_file(output.path(LEASE), json.dumps(data).encode())
    output.fs.invalidate_cache()
    return Lease(**data)


def test_create_if_absent_creates_once(output):
    path = output.path(LEASE)
    assert create_if_absent(output, path, b"first") is True
    assert create_if_absent(output, path, b"second") is False
    output.fs.invalidate_cache()
    assert output.fs.cat_file(path) == b"first"


def test_the_second_run_is_refused_naming_the_holder(output):
    with hold_lease(output) as mine:
        held = _raw(output)
        assert held["owner"] == mine.owner and held["pid"] == os.getpid()
        assert held["host"] == socket.gethostname()
        with pytest.raises(LeaseHeldError) as refused:
            acquire(output)
        message = str(refused.value)
        assert "\n" not in message
        assert f"host {socket.gethostname()}" in message and f"pid {os.getpid()}" in message
        assert f"since {mine.started}" in message and "--break-lease" in message and "wait" in message
        assert output.url in message
    # released at the end: the next run gets it
    assert read_lease(output) == (None, False)
    with hold_lease(output):
        pass


def test_released_on_failure_and_on_ctrl_c(output):
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)), hold_lease(output):
            assert read_lease(output)[1]
            raise error
        assert read_lease(output) == (None, False)


def test_a_stale_lease_is_taken_over_with_a_warning(output, caplog):
    old = _plant(output, expires=_iso(time.time() - 5))
    with caplog.at_level(logging.WARNING, logger="beamvec"), hold_lease(output) as mine:
        assert _raw(output)["owner"] == mine.owner != old.owner
    lines = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert len(lines) == 1 and "other-host" in lines[0] and "expired" in lines[0], lines


def test_a_live_lease_is_refused_unless_broken(output, caplog):
    other = _plant(output)
    with pytest.raises(LeaseHeldError, match="other-host, pid 4242"):
        acquire(output)
    assert _raw(output)["owner"] == other.owner  # untouched
    with caplog.at_level(logging.WARNING, logger="beamvec"), hold_lease(output, break_lease=True) as mine:
        assert _raw(output)["owner"] == mine.owner
    assert any("--break-lease" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_a_dead_process_on_this_host_does_not_hold_the_lease(tmp_path, caplog):
    """kill -9 leaves the lease behind; a rerun on the same host need not wait."""
    output = Output(str(tmp_path / "out"))
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    _plant(output, host=socket.gethostname(), pid=int(proc.stdout))
    with caplog.at_level(logging.WARNING, logger="beamvec"), hold_lease(output):
        pass
    assert any("is gone" in r.getMessage() for r in caplog.records)


def test_only_the_owner_releases(output):
    mine = acquire(output)
    release(output, Lease.new())  # another owner's release leaves it
    assert _raw(output)["owner"] == mine.owner
    release(output, mine)
    assert read_lease(output) == (None, False)


def test_renewed_while_running(output):
    with hold_lease(output, ttl=120, renew_every=0.05) as mine:
        first = _raw(output)["expires"]
        deadline = time.time() + 30
        while _raw(output)["expires"] == first and time.time() < deadline:
            time.sleep(0.1)
        renewed = _raw(output)
        assert renewed["expires"] > first  # ISO-8601 UTC strings sort as times
        assert renewed["owner"] == mine.owner and renewed["started"] == mine.started


def test_a_run_whose_lease_was_taken_ends_in_an_error(output):
    with pytest.raises(SystemicError, match="another run took over"), \
            hold_lease(output, renew_every=0.05):
        _plant(output)  # another run broke it
        deadline = time.time() + 30  # until the renewer has seen it and stopped
        while time.time() < deadline and any(t.name == "beamvec-lease" for t in threading.enumerate()):
            time.sleep(0.05)
    assert _raw(output)["host"] == "other-host"  # never removes another run's lease


@pytest.mark.parametrize("store", ["local", "memory", "s3"])
def test_concurrent_acquires_one_winner(store, request, tmp_path):
    """Stores with an atomic create: of 8 runs starting at once, exactly one holds it."""
    if store == "local":
        output = Output(str(tmp_path / "out"))
    elif store == "memory":
        output = Output(f"memory://lease-{uuid.uuid4().hex}/out")
    else:
        server = request.getfixturevalue("s3_server")
        output = Output(f"{request.getfixturevalue('s3_bucket')}/out", server)
    start = threading.Barrier(8)
    won: list[Lease] = []
    refused: list[LeaseHeldError] = []

    def attempt() -> None:
        out = Output(output.url, output.fs.storage_options) if store != "local" else output
        start.wait()
        try:
            won.append(acquire(out))
        except LeaseHeldError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7
    assert _raw(output)["owner"] == won[0].owner


def test_s3_create_is_a_conditional_put(s3_server, s3_bucket):
    """The guarantee under the lease on S3: If-None-Match: * refused by the
    server itself (moto implements it), not only our look-before-write."""
    fs = fsspec.filesystem("s3", **s3_server)
    path = f"{s3_bucket.removeprefix('s3://')}/x/{LEASE}"
    fs.pipe_file(path, b"one", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(path, b"two", mode="create")
    fs.invalidate_cache()
    assert fs.cat_file(path) == b"one"


def test_unwritable_output_is_one_line(tmp_path):
    """A path that cannot be created (here: under a regular file) stops the
    run with one line naming the output, before anything is sent."""
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(SystemicError) as failed:
        acquire(Output(str(tmp_path / "file" / "out")))
    message = str(failed.value)
    assert "\n" not in message and "cannot write to the output" in message
    assert str(tmp_path / "file" / "out") in message


def test_staging_is_per_run_and_only_dead_runs_are_cleaned(tmp_path):
    """Local disk stages under _tmp/<run id>/: a run never wipes a live run's files."""
    ours = Output(str(tmp_path / "out"), run_id="run-b")
    theirs = Output(str(tmp_path / "out"), run_id="run-a")
    schema = pa.schema([pa.field("x", pa.int64())])
    writer = ParquetShardWriter(ours, ours.path("vectors", "s.parquet"), schema)
    assert writer.staged.startswith(str(tmp_path / "out" / "_tmp" / "run-b") + "/")
    writer.write(pa.table({"x": [1, 2]}, schema=schema))
    live = ParquetShardWriter(theirs, theirs.path("vectors", "t.parquet"), schema)
    live.write(pa.table({"x": [3]}, schema=schema))
    live._fh.flush()

    assert ours.clean_staging() == []  # run-a touched its files just now: alive
    assert os.path.exists(live.staged)
    old = time.time() - 600
    for path in (live.staged, os.path.dirname(live.staged)):
        os.utime(path, (old, old))
    removed = ours.clean_staging()  # now run-a is a dead run's leftover
    assert removed == [str(tmp_path / "out" / "_tmp" / "run-a")]
    assert not os.path.exists(live.staged)

    writer.commit({"k": "v"})
    assert pq.ParquetFile(ours.path("vectors", "s.parquet")).metadata.num_rows == 2
    ours.finish_staging()
    assert not (tmp_path / "out" / "_tmp").exists()



def test_a_stalled_run_is_told_to_stop_and_renews_no_more(tmp_path):
    """Renewed while progress moves; once it has not moved for ``stall_s``,
    on_stall is called once and the lease's expiry stays where it was."""
    output = Output(str(tmp_path / "out"))
    moving = {"count": 0, "on": True}
    stalls: list[float] = []

    def progress() -> int:
        if moving["on"]:
            moving["count"] += 1
        return moving["count"]

    with hold_lease(output, ttl=120, renew_every=0.05, progress=progress, stall_s=0.5,
                    on_stall=lambda: stalls.append(time.time())):
        first = _raw(output)["expires"]
        deadline = time.time() + 30
        while _raw(output)["expires"] == first and time.time() < deadline:
            time.sleep(0.1)
        assert _raw(output)["expires"] > first  # renewed while it moved
        moving["on"] = False
        while not stalls and time.time() < deadline:
            time.sleep(0.05)
        assert len(stalls) == 1
        frozen = _raw(output)["expires"]
        time.sleep(1.2)  # a second passes: a renewal would show in expires
        assert _raw(output)["expires"] == frozen and len(stalls) == 1
    assert read_lease(output) == (None, False)  # still released at the end


@pytest.mark.parametrize("store", ["s3", "gcs"])
def test_a_replace_is_conditional_on_the_version_read(store, request):
    """S3 If-Match on the ETag, GCS ifGenerationMatch: a renewal or takeover
    that read the lease before another run replaced it is refused, and the
    other run's lease stays. The GCS emulator ignores preconditions: there the
    write goes through (the README says so), and only S3 is held to it."""
    from beamvec.contract import lease_file

    server = request.getfixturevalue(f"{store}_server")
    output = Output(f"{request.getfixturevalue(f'{store}_bucket')}/out", server)
    mine = acquire(output)
    seen = lease_file.read(output)
    assert seen.lease == mine and seen.version
    assert lease_file.replace_if(output, seen, mine.renewed())  # unchanged since read: written
    other = _plant(output)  # another run takes it over meanwhile
    refused = not lease_file.replace_if(output, seen, mine.renewed())
    if store == "s3":
        assert refused and _raw(output)["owner"] == other.owner


@pytest.mark.slow
def test_a_live_holder_on_this_host_is_never_taken_over_by_its_clock(tmp_path):
    """A paused holder (SIGSTOP) or one whose clock lags leaves an expired
    lease behind while its process lives: on its host that lease holds."""
    output = Output(str(tmp_path / "out"))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _plant(output, host=socket.gethostname(), pid=holder.pid, expires=_iso(time.time() - 600))
        with pytest.raises(LeaseHeldError, match=f"pid {holder.pid}"):
            acquire(output)
        taken = acquire(output, break_lease=True)
        assert _raw(output)["owner"] == taken.owner and taken.generation == 2
    finally:
        holder.kill()
        holder.wait()
