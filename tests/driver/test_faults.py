"""Never stuck: a store that refuses writes ends the run.

A full disk (a 3 MB tmpfs mounted as the output) and an S3 store that answers
503 to every write under ``_partial/`` (moto behind a small proxy that refuses
them) each end a real `beamvec run` subprocess with one line and exit 1
(the subprocess timeout guards against a hang; a store that retries gives up
after a bounded number of refused writes), leave no lease behind, and the
next run, once the store takes writes again, completes the output.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fsspec
import pytest

from helpers import assert_reconciled, child_env, one_line, read_output, vectors_by_id

pytest_plugins = ["servers"]

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
#: How often s3fs (its default, a class attribute) and botocore (2 here, set
#: through the storage options; its default 5 takes a minute a write against a
#: store answering 503) try one write.
S3FS_TRIES, BOTOCORE_TRIES = 5, 2
pytestmark = pytest.mark.slow  # each test runs `beamvec run` twice as a subprocess


@pytest.fixture
def emulator_settings() -> dict[str, float]:
    return {"latency_ms": 20}


def _rows(shards: int, records: int) -> dict[str, dict[str, str]]:
    return {f"s{s}": {f"s{s}-{i}": f"shard {s} record {i} of the fault test, {i * 7919 % 997}"
                      for i in range(records)} for s in range(shards)}


def _jsonl(rows: dict[str, str]) -> bytes:
    return "".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in rows.items()).encode()


def _run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """A `beamvec run` subprocess; a run that never ends fails at the timeout."""
    result = subprocess.run(
        [sys.executable, "-m", "beamvec.cli", "run", "--runner=DirectRunner", "--quiet", *args],
        env=child_env(**env),
        capture_output=True, text=True, timeout=600,
    )
    return result.returncode, result.stderr


# --------------------------------------------------------------------------- full disk


@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Path]:
    """A 3 MB tmpfs (needs root and mount); grown to 64 MB by ``_grow``."""
    mount = shutil.which("mount")
    where = tmp_path / "disk"
    where.mkdir()
    if mount is None or os.geteuid() != 0:
        pytest.skip("a full disk needs root and mount(8) for a 3 MB tmpfs")
    done = subprocess.run([mount, "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _grow(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)


def test_a_full_disk_ends_the_run_in_one_line_and_the_next_run_completes(tiny_disk, tmp_path, emulator):
    corpus = _rows(shards=4, records=400)  # 1,600 vectors of 768 floats: over 3 MB twice
    (tmp_path / "in").mkdir()
    for name, rows in corpus.items():
        (tmp_path / "in" / f"{name}.jsonl").write_bytes(_jsonl(rows))
    out = tiny_disk / "out"
    args = ["--input", str(tmp_path / "in" / "*.jsonl"), "--output", str(out),
            "--backend", "gemini", "--api-base-url", emulator.url, "--output-dimensionality", "768"]
    code, err = _run(args, {})
    assert code == 1, err[-3000:]
    line = one_line(err)
    assert "No space left on device" in line and "free some space" in line, line
    assert str(out) in line, line
    assert not (out / "_lease.json").exists()
    assert not (out / "_SUCCESS").exists()

    _grow(tiny_disk)
    code, err = _run(args, {})
    assert code == 0, err[-3000:]
    output = read_output(str(out))
    assert_reconciled(output)
    assert set(vectors_by_id(output)) == {k for rows in corpus.values() for k in rows}


# --------------------------------------------------------------------------- S3 503


class _Refusing(BaseHTTPRequestHandler):
    """Forwards to moto, but answers 503 to every write under ``_partial/``
    while ``server.refusing`` is set (and counts them)."""

    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size)
                self.rfile.readline()
                if not size:
                    return b"".join(chunks)
                chunks.append(chunk)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self) -> None:
        body = self._body()
        if self.server.refusing and self.command in ("PUT", "POST") and "/_partial/" in self.path:
            self.server.refused += 1
            payload = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ServiceUnavailable"
                       b"</Code><Message>Please reduce your request rate.</Message></Error>")
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
        headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(key, value)
        # a HEAD's length is the object's, not that of the (empty) body
        length = response.getheader("Content-Length") if self.command == "HEAD" else len(data)
        self.send_header("Content-Length", str(length or 0))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


@pytest.fixture
def refusing_s3(s3_server) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    host, port = s3_server["endpoint_url"].removeprefix("http://").split(":")
    server.upstream = (host, int(port))
    server.refusing = True
    server.refused = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_a_store_refusing_checkpoints_ends_the_run_and_the_next_run_completes(
    refusing_s3, s3_server, s3_bucket, emulator
):
    fs = fsspec.filesystem("s3", **s3_server)
    corpus = _rows(shards=3, records=300)
    for name, rows in corpus.items():
        fs.pipe(f"{s3_bucket.removeprefix('s3://')}/in/{name}.jsonl", _jsonl(rows))
    endpoint = f"http://127.0.0.1:{refusing_s3.server_address[1]}"
    out = f"{s3_bucket}/out"
    args = ["--input", f"{s3_bucket}/in/*.jsonl", "--output", out,
            "--storage-option", f"client_kwargs.endpoint_url={endpoint}",
            "--storage-option", f"config_kwargs.retries.total_max_attempts={BOTOCORE_TRIES}",
            "--storage-option", "config_kwargs.retries.mode=standard",
            "--backend", "gemini", "--api-base-url", emulator.url, "--output-dimensionality", "16"]
    code, err = _run(args, AWS_ENV)
    print(f"S3 503 on _partial/: exit {code}, {refusing_s3.refused} PUTs refused")
    assert code == 1, err[-3000:]
    line = one_line(err)
    assert "cannot write a checkpoint to" in line and f"{out}/_partial/" in line, line
    # each write was tried as often as s3fs x botocore allow, then the run gave up:
    # 900 texts in requests of 100: at most 9 checkpoints, each tried that often
    assert S3FS_TRIES * BOTOCORE_TRIES <= refusing_s3.refused <= 9 * S3FS_TRIES * BOTOCORE_TRIES
    fs.invalidate_cache()
    root = out.removeprefix("s3://")
    assert not fs.exists(f"{root}/_lease.json") and not fs.exists(f"{root}/_SUCCESS")

    refusing_s3.refusing = False
    code, err = _run(args, AWS_ENV)
    assert code == 0, err[-3000:]
    fs.invalidate_cache()
    output = read_output(out, s3_server)
    assert_reconciled(output)
    assert set(vectors_by_id(output)) == {k for rows in corpus.values() for k in rows}
