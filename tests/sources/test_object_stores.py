"""Buckets for real: gs:// and s3:// end to end, with object-store semantics.

Input and output live on real protocol servers on 127.0.0.1 (moto's S3 server
through s3fs, gcp-storage-emulator through gcsfs; see servers.py):

- a run killed with SIGKILL mid-way and rerun ends with one row per record,
  ``_SUCCESS`` only at the end, no orphan object, and never a torn Parquet
  object, while re-sending at most the batches that were in flight;
- listing 10,000 shards takes their size and version from the listing alone;
- a missing bucket, wrong credentials or a permission denial stop the run
  early, before any text is sent, with one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow.parquet as pq
import pytest

from beamvec.contract import read_footer
from beamvec.emulator.server import Emulator
from beamvec.records import content_hash
from beamvec.sources import list_shards

from helpers import (
    API_KEY,
    assert_reconciled,
    beam_run,
    billed_texts,
    jsonl,
    one_line,
    pause_when,
    read_output,
    vectors_by_id,
)

pytest_plugins = ["servers"]

S3_REGION = "us-east-1"  # as servers.py's fixtures
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": S3_REGION,
}
#: Everything a finished output may hold: no _tmp/, no _partial/, no probe.
FINAL_OBJECT = re.compile(
    r"(_manifest\.json|_SUCCESS|(vectors|dead_letters)/[^/]+\.parquet|_runs/[^/]+/timeline\.jsonl)"
)


@dataclass
class Store:
    """One bucket on one protocol server, and how beamvec is pointed at it."""

    name: str
    bucket: str  # "s3://name" or "gs://name"
    fs: fsspec.AbstractFileSystem
    options: dict[str, Any]  # for reading the output back in this process
    flags: list[str]  # --storage-option flags for `beamvec run`
    env: dict[str, str] = field(default_factory=dict)  # credentials: environment only

    @property
    def root(self) -> str:
        """The bucket without its protocol, as fs.find and fs.pipe take it."""
        return self.bucket.split("://", 1)[1]

    def objects(self, prefix: str) -> list[str]:
        """Every object under ``prefix`` (relative names), straight from the server."""
        self.fs.invalidate_cache()
        base = f"{self.root}/{prefix}"
        try:
            return sorted(p[len(base) + 1 :] for p in self.fs.find(base))
        except FileNotFoundError:
            return []


@pytest.fixture(params=["s3", "gcs"])
def store(request, monkeypatch) -> Store:
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        for name, value in AWS_ENV.items():
            monkeypatch.setenv(name, value)
        flags = ["--storage-option", f"client_kwargs.endpoint_url={server['endpoint_url']}"]
        return Store("s3", bucket, fsspec.filesystem("s3", **server), server, flags, dict(AWS_ENV))
    server = request.getfixturevalue("gcs_server")
    bucket = request.getfixturevalue("gcs_bucket")
    flags = [
        "--storage-option", f"endpoint_url={server['endpoint_url']}",
        "--storage-option", "token=anon",
    ]
    return Store("gcs", bucket, fsspec.filesystem("gs", **server), server, flags)


def _write_corpus(store: Store, prefix: str, shards: int, records: int) -> dict[str, str]:
    texts: dict[str, str] = {}
    files = {}
    for s in range(shards):
        rows = {f"s{s}-r{i}": f"shard {s} line {i} of the object store test" for i in range(records)}
        texts.update(rows)
        files[f"{store.root}/{prefix}/s{s}.jsonl"] = jsonl(rows).encode()
    store.fs.pipe(files)
    store.fs.invalidate_cache()
    return texts


def _gemini_flags(emu: Emulator) -> list[str]:
    return ["--backend", "gemini", "--api-base-url", emu.url, "--output-dimensionality", "768"]


def _forget_filesystems() -> None:
    """Forget cached s3fs/gcsfs instances: credentials are read when one is made."""
    for protocol in ("s3", "gs"):
        fsspec.get_filesystem_class(protocol).clear_instance_cache()


def _assert_complete_parquet(store: Store, prefix: str, names: list[str]) -> None:
    """Every visible vector object is a whole Parquet file that agrees with its
    footer, and every checkpoint object is a whole Parquet file."""
    for name in names:
        path = f"{store.root}/{prefix}/{name}"
        with store.fs.open(path, "rb") as fh:
            table = pq.read_table(fh)
        if name.startswith("vectors/"):
            footer = read_footer(store.fs, path)
            assert footer["shard"]["embedded"] == table.num_rows, name


# --------------------------------------------------------------------------- kill -9


@pytest.mark.slow
def test_kill_9_then_rerun_on_a_bucket(store):
    """Input and output on the bucket; the run is killed with SIGKILL once some
    shards are committed and others are half done, then run again."""
    texts = _write_corpus(store, "corpus", shards=6, records=300)
    out = f"{store.bucket}/out"
    env = {
        **os.environ,
        **store.env,
        "GEMINI_API_KEY": API_KEY,
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
    max_in_flight, concurrent_shards = 2, 2
    with Emulator(api_key=API_KEY, latency_ms=150) as emu:
        cmd = [
            sys.executable, "-m", "beamvec.cli", "run", "--runner=DirectRunner",
            "--input", f"{store.bucket}/corpus/*.jsonl", "--output", out, *store.flags,
            *_gemini_flags(emu),
            "--max-in-flight", str(max_in_flight), "--concurrent-shards", str(concurrent_shards),
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

        def mid_run() -> bool:  # two shards committed and another half done
            seen = store.objects("out")
            return sum(n.startswith("vectors/") for n in seen) >= 2 and any(
                n.startswith("_partial/") for n in seen)

        pause_when(proc, mid_run, "two committed shards and a checkpoint")
        proc.send_signal(signal.SIGKILL)  # in the state mid_run saw: it was paused
        _, stderr = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, stderr[-2000:]
        first = billed_texts(emu)
        assert 0 < sum(first.values()) < len(texts)  # at most 4 of the 6 shards were begun

        # Right after the kill: no _SUCCESS, and nothing torn is visible.
        after_kill = store.objects("out")
        assert "_SUCCESS" not in after_kill
        visible = [n for n in after_kill if n.startswith(("vectors/", "_partial/"))]
        assert any(n.startswith("vectors/") for n in visible), after_kill
        _assert_complete_parquet(store, "out", visible)

        emu.reset()
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        second = billed_texts(emu)
    print(f"{store.name}: killed with {after_kill}; texts sent {sum(first.values())} + {sum(second.values())}")

    # Every object under the output is a final one: no orphans.
    final = store.objects("out")
    orphans = [n for n in final if not FINAL_OBJECT.fullmatch(n)]
    assert not orphans, orphans
    assert "_SUCCESS" in final and "_manifest.json" in final
    if store.name == "s3":  # nor any multipart upload left open by the kill
        uploads = store.fs.call_s3("list_multipart_uploads", Bucket=store.root)
        assert not uploads.get("Uploads"), uploads["Uploads"]

    # Exactly one row per record.
    store.fs.invalidate_cache()
    output = read_output(out, store.options)
    assert_reconciled(output)
    assert set(vectors_by_id(output)) == set(texts)
    assert sum(t.num_rows for t in output["vectors"].values()) == len(texts)

    # The rerun re-sent at most what was in flight at the kill.
    resent = set(first) & set(second)
    assert len(resent) <= max_in_flight * concurrent_shards * 100, len(resent)
    assert set(first) | set(second) == {content_hash(t) for t in texts.values()}


@pytest.mark.slow
def test_crash_between_commit_and_checkpoint_cleanup_leaves_no_orphan(
    s3_server, s3_bucket, emulator, capsys, monkeypatch
):
    """The window a kill can land in between a shard's vector commit and the
    removal of its checkpoints (and before the manifest): the rerun, which
    skips that shard as committed, must still leave no `_partial/` object."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GEMINI_API_KEY", API_KEY)
    flags = ["--storage-option", f"client_kwargs.endpoint_url={s3_server['endpoint_url']}"]
    store = Store("s3", s3_bucket, fsspec.filesystem("s3", **s3_server), s3_server, flags)
    texts = _write_corpus(store, "corpus", shards=3, records=20)
    args = [
        "--input", f"{s3_bucket}/corpus/*.jsonl", "--output", f"{s3_bucket}/out", *flags,
        *_gemini_flags(emulator),
    ]
    emulator.reset()
    code, _, err = beam_run(capsys, *args)
    assert code == 0, err
    first = store.objects("out")
    assert all(FINAL_OBJECT.fullmatch(n) for n in first), first  # uninterrupted: no leftovers

    # What such a kill leaves behind: the shard's checkpoint, no manifest, no _SUCCESS.
    vector = next(n for n in first if n.startswith("vectors/"))
    shard = vector.removeprefix("vectors/").removesuffix(".parquet")
    with store.fs.open(f"{store.root}/out/{vector}", "rb") as fh:
        checkpoint = pq.read_table(fh, columns=["content_hash", "vector"])
    with store.fs.open(f"{store.root}/out/_partial/{shard}/000000-0badf00d.parquet", "wb") as fh:
        pq.write_table(checkpoint, fh)
    store.fs.rm([f"{store.root}/out/_manifest.json", f"{store.root}/out/_SUCCESS"])
    _forget_filesystems()

    emulator.reset()
    code, _, err = beam_run(capsys, *args)
    assert code == 0, err
    assert billed_texts(emulator) == {}
    final = store.objects("out")
    orphans = [n for n in final if not FINAL_OBJECT.fullmatch(n)]
    assert not orphans, orphans
    assert "_SUCCESS" in final
    output = read_output(f"{s3_bucket}/out", s3_server)
    assert_reconciled(output)
    assert set(vectors_by_id(output)) == set(texts)


# --------------------------------------------------------------------------- listing


@pytest.mark.slow
def test_list_10000_shards_on_s3(s3_server, s3_bucket, monkeypatch):
    """Sizes and versions (ETags) come from the listing: no request per object."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from s3fs import S3FileSystem

    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    bucket = s3_bucket.removeprefix("s3://")
    count = 10_000
    bodies = {f"many/part-{i:05d}.txt": f"record {i}\n".encode() * (1 + i % 3) for i in range(count)}
    # 10,000 PUTs over HTTP take ~50 s against the in-process moto server (about
    # 5 ms each, GIL-bound whether s3fs batches them or boto3 threads do), so
    # the objects are stored in that same server's S3 backend directly. What is
    # under test, the listing, still goes through the S3 protocol end to end.
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for key, body in bodies.items():
        backend.put_object(bucket, key, body)
    fs = fsspec.filesystem("s3", **s3_server)
    fs.invalidate_cache()
    sample = fs.info(f"{bucket}/many/part-04321.txt")  # the server serves them like any object
    assert sample["size"] == len(bodies["many/part-04321.txt"])

    calls: Counter[str] = Counter()
    call_s3 = S3FileSystem._call_s3

    async def counting(self, method, *args, **kwargs):
        calls[method] += 1
        return await call_s3(self, method, *args, **kwargs)

    monkeypatch.setattr(S3FileSystem, "_call_s3", counting)
    _forget_filesystems()
    shards = list_shards(
        [f"{s3_bucket}/many/*.txt"], {"client_kwargs": {"endpoint_url": s3_server["endpoint_url"]}}
    )

    assert len(shards) == count
    assert len({s.name for s in shards}) == count
    by_path = {s.path: s for s in shards}
    for key, body in bodies.items():
        shard = by_path[f"s3://{bucket}/{key}"]
        assert shard.size == len(body), key
        assert shard.version == hashlib.md5(body).hexdigest(), key  # the ETag of a single PUT
    # One page per 1,000 keys and no HEAD or GET per object.
    assert calls["head_object"] == calls["get_object"] == 0, calls
    assert sum(calls.values()) <= count // 1000 + 3, calls


# --------------------------------------------------------------------------- early, one line


def test_input_bucket_that_does_not_exist(store, emulator, capsys, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", API_KEY)
    missing = f"{store.bucket.split('://')[0]}://bv-missing-{uuid.uuid4().hex[:12]}"
    emulator.reset()
    code, _, err = beam_run(
        capsys, "--input", f"{missing}/corpus/*.jsonl", "--output", f"{store.bucket}/out",
        *store.flags, *_gemini_flags(emulator),
    )
    line = one_line(err)
    assert code == 2 and missing in line, err
    assert emulator.stats()["requests"] == 0
    assert store.objects("out") == []


def test_output_bucket_that_does_not_exist(store, emulator, capsys, monkeypatch):
    """Found before any text is sent, not when the first shard commits."""
    monkeypatch.setenv("GEMINI_API_KEY", API_KEY)
    _write_corpus(store, "corpus", shards=2, records=5)
    missing = f"{store.bucket.split('://')[0]}://bv-missing-{uuid.uuid4().hex[:12]}"
    emulator.reset()
    code, _, err = beam_run(
        capsys, "--input", f"{store.bucket}/corpus/*.jsonl", "--output", f"{missing}/out",
        *store.flags, *_gemini_flags(emulator),
    )
    line = one_line(err)
    assert code == 1 and missing in line, err
    assert billed_texts(emulator) == {}


def _moto_auth(endpoint: str, value: str) -> None:
    """moto accepts any credentials until told to check signatures and IAM
    policies (its /moto-api/reset-auth switch; "inf" turns checking off again)."""
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=value.encode(), method="POST",
        headers={"Content-Type": "text/plain"},  # a form content type would hide the body
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.fixture
def s3_auth(s3_server, s3_bucket, monkeypatch) -> Iterator[dict[str, tuple[str, str]]]:
    """The S3 server checking credentials and permissions, a corpus in
    ``s3_bucket``, and the keys of two IAM users: one may only read the
    bucket, the other may do nothing."""
    import boto3

    endpoint = s3_server["endpoint_url"]
    fs = fsspec.filesystem("s3", **s3_server)
    fs.pipe(f"{s3_bucket.removeprefix('s3://')}/corpus/a.jsonl", b'{"id": "a", "text": "hello"}\n')
    iam = boto3.client(
        "iam", endpoint_url=endpoint, region_name=S3_REGION,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    suffix = uuid.uuid4().hex[:8]
    keys = {}
    for role, actions in (("reader", ["s3:ListBucket", "s3:GetObject"]), ("nobody", [])):
        user = f"{role}-{suffix}"
        iam.create_user(UserName=user)
        if actions:
            policy = {"Version": "2012-10-17",
                      "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
            iam.put_user_policy(UserName=user, PolicyName="only", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        keys[role] = (key["AccessKeyId"], key["SecretAccessKey"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", S3_REGION)
    _moto_auth(endpoint, "0")
    _forget_filesystems()  # no filesystem instance may keep an earlier session
    try:
        yield keys
    finally:
        _moto_auth(endpoint, "inf")
        _forget_filesystems()


@pytest.mark.parametrize("case", ["unknown key", "wrong secret", "no permission", "read-only output"])
def test_s3_credential_and_permission_errors(case, s3_auth, s3_server, s3_bucket, emulator, capsys,
                                             monkeypatch):
    key_id, secret = {
        "unknown key": ("AKIA" + uuid.uuid4().hex[:16].upper(), "not-a-secret-" + uuid.uuid4().hex),
        "wrong secret": (s3_auth["reader"][0], "wrong-secret-" + uuid.uuid4().hex),
        "no permission": s3_auth["nobody"],
        "read-only output": s3_auth["reader"],
    }[case]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("GEMINI_API_KEY", API_KEY)
    emulator.reset()
    code, _, err = beam_run(
        capsys, "--input", f"{s3_bucket}/corpus/*.jsonl", "--output", f"{s3_bucket}/out",
        "--storage-option", f"client_kwargs.endpoint_url={s3_server['endpoint_url']}",
        *_gemini_flags(emulator),
    )
    line = one_line(err)
    assert code == 1, err
    assert secret not in line
    assert s3_bucket in line, line  # says which input or output it could not use
    assert billed_texts(emulator) == {}  # stopped before any text was sent
