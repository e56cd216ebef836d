"""The pipeline with input and output on real bucket protocol servers on
127.0.0.1: moto's S3 server through s3fs, gcp-storage-emulator through gcsfs."""

from __future__ import annotations

import json

import fsspec
import pytest

from helpers import assert_reconciled, beam_run, read_output, vectors_by_id

pytest_plugins = ["servers"]

RECORDS = [{"id": f"r{i}", "text": f"sentence number {i} about buckets"} for i in range(25)]


def _corpus(fs: fsspec.AbstractFileSystem, bucket: str) -> None:
    for part in range(3):
        lines = [json.dumps(r) for r in RECORDS[part::3]]
        fs.pipe(f"{bucket}/corpus/dt=2026-11-20/part-{part}.jsonl", ("\n".join(lines) + "\n").encode())
    fs.invalidate_cache()


@pytest.mark.slow
def test_s3_in_and_out(s3_server, s3_bucket, capsys, monkeypatch):
    # Credentials come from the environment, never from flags or options.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    fs = fsspec.filesystem("s3", **s3_server)
    _corpus(fs, s3_bucket.removeprefix("s3://"))
    endpoint = s3_server["endpoint_url"]
    code, stdout, err = beam_run(
        capsys, "--input", f"{s3_bucket}/corpus/*/*.jsonl", "--output", f"{s3_bucket}/out",
        "--storage-option", f"client_kwargs.endpoint_url={endpoint}",
    )
    assert code == 0, err
    out = read_output(f"{s3_bucket}/out", {"client_kwargs": {"endpoint_url": endpoint}})
    assert_reconciled(out)
    assert set(vectors_by_id(out)) == {r["id"] for r in RECORDS}
    assert not any("_tmp" in f for f in out["files"])
    assert "testing" not in json.dumps(out["manifest"])
    versions = {s["input_version"] for s in out["manifest"]["shards"].values()}
    assert all(versions) and len(versions) == 3  # ETags, not mtimes


@pytest.mark.slow
def test_gcs_in_and_out(gcs_server, gcs_bucket, capsys):
    fs = fsspec.filesystem("gs", **gcs_server)
    _corpus(fs, gcs_bucket.removeprefix("gs://"))
    code, stdout, err = beam_run(
        capsys, "--input", f"{gcs_bucket}/corpus/*/*.jsonl", "--output", f"{gcs_bucket}/out",
        "--storage-option", f"endpoint_url={gcs_server['endpoint_url']}", "--storage-option", "token=anon",
    )
    assert code == 0, err
    out = read_output(f"{gcs_bucket}/out", gcs_server)
    assert_reconciled(out)
    assert set(vectors_by_id(out)) == {r["id"] for r in RECORDS}
    assert not any("_tmp" in f for f in out["files"])
