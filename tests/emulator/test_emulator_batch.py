"""The emulator serves the Gemini Batch API as the real google-genai SDK calls it:
resumable upload, asyncBatchEmbedContent from a file or inlined requests, job
states, result files (shuffled, with per-line errors), cancel, delete, list,
the concurrency cap, failed jobs and the batch stats."""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import pytest
from google import genai
from google.genai import errors, types

from beamvec.emulator import Emulator, expected_vector
from beamvec.emulator.cli import build_parser
from beamvec.records import content_hash

os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1,localhost"]))
pytestmark = pytest.mark.filterwarnings("ignore:batches.create_embeddings")

KEY = "emu-batch-key"
MODEL = "gemini-embedding-001"  # native size 3072, as Google publishes


def sdk(emu: Emulator, key: str = KEY) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=emu.url))


def jsonl(texts, dim=8, task="RETRIEVAL_DOCUMENT", snake=False) -> bytes:
    rows = []
    for i, text in enumerate(texts):
        request = {"content": {"parts": [{"text": text}]}}
        if snake:
            request.update(output_dimensionality=dim, task_type=task)
        else:
            request.update(outputDimensionality=dim, taskType=task)
        rows.append(json.dumps({"key": f"k{i}", "request": request}))
    return ("\n".join(rows) + "\n").encode()


def upload(client, data: bytes, name: str = "input"):
    return client.files.upload(
        file=io.BytesIO(data), config={"mime_type": "jsonl", "display_name": name}
    )


def wait_done(client, name, timeout=10.0):
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        job = client.batches.get(name=name)
        seen.append(job.state.name)
        if job.done or time.monotonic() > deadline:
            return job, seen
        time.sleep(0.05)


def test_file_job_goes_pending_running_succeeded_with_the_online_vectors():
    texts = [f"text number {i}" for i in range(40)]
    with Emulator(api_key=KEY, batch_job_s=0.6) as emu:
        client = sdk(emu)
        file = upload(client, jsonl(texts, snake=True))
        assert file.name.startswith("files/") and file.size_bytes == len(jsonl(texts, snake=True))
        assert file.source.name == "UPLOADED"
        job = client.batches.create_embeddings(
            model=MODEL, src={"file_name": file.name}, config={"display_name": "d1"}
        )
        assert job.name.startswith("batches/") and job.state.name == "JOB_STATE_PENDING"
        assert job.display_name == "d1"
        job, seen = wait_done(client, job.name)
        assert seen[0] == "JOB_STATE_PENDING" and "JOB_STATE_RUNNING" in seen
        assert job.state.name == "JOB_STATE_SUCCEEDED"
        lines = [json.loads(x) for x in client.files.download(file=job.dest.file_name).splitlines()]
        assert sorted(x["key"] for x in lines) == sorted(f"k{i}" for i in range(40))
        assert [x["key"] for x in lines] != [f"k{i}" for i in range(40)]  # shuffled by default
        for line in lines:
            got = np.asarray(line["response"]["embedding"]["values"], dtype=np.float32)
            want = expected_vector(MODEL, "RETRIEVAL_DOCUMENT", 8, texts[int(line["key"][1:])])
            assert np.array_equal(got, want)
        stats = emu.stats()["batch"]
        assert stats["texts_billed"] == 40 and stats["texts"]["billed_more_than_once"] == 0
        assert stats["text_counts"][content_hash("text number 3")] == 1
        assert stats["jobs"]["by_state"] == {"SUCCEEDED": 1}
        assert stats["files"]["uploaded"] == 1 and stats["files"]["results"] == 1


def test_no_shuffle_keeps_input_order_and_native_size_by_default():
    with Emulator(api_key=KEY, batch_job_s=0, batch_shuffle=False) as emu:
        client = sdk(emu)
        data = b"".join(
            json.dumps(
                {"key": f"k{i}", "request": {"content": {"parts": [{"text": f"t{i}"}]}}}
            ).encode()
            + b"\n"
            for i in range(5)
        )
        job = client.batches.create_embeddings(
            model=MODEL, src={"file_name": upload(client, data).name}
        )
        job, _ = wait_done(client, job.name)
        lines = [json.loads(x) for x in client.files.download(file=job.dest.file_name).splitlines()]
        assert [x["key"] for x in lines] == [f"k{i}" for i in range(5)]
        assert len(lines[0]["response"]["embedding"]["values"]) == 3072


def test_line_errors_and_bad_lines_are_error_objects_not_billed():
    texts = [f"t{i}" for i in range(200)] + ["x" * 13_000]  # 2167 tokens (a Latin word: one per 6 letters) > 2048
    with Emulator(api_key=KEY, batch_job_s=0, batch_line_error_rate=0.1) as emu:
        client = sdk(emu)
        job = client.batches.create_embeddings(
            model=MODEL, src={"file_name": upload(client, jsonl(texts)).name}
        )
        job, _ = wait_done(client, job.name)
        lines = {
            x["key"]: x
            for x in map(json.loads, client.files.download(file=job.dest.file_name).splitlines())
        }
        errors_ = {k: v["error"] for k, v in lines.items() if "error" in v}
        assert lines["k200"]["error"]["code"] == 3 and "token" in lines["k200"]["error"]["message"]
        assert 5 <= len(errors_) - 1 <= 40  # ~10 % of 200 drawn as INTERNAL
        assert all(e["code"] == 13 for k, e in errors_.items() if k != "k200")
        stats = emu.stats()["batch"]
        assert stats["texts_billed"] == 201 - len(errors_)
        assert stats["lines_failed"] == len(errors_)


def test_inlined_requests_come_back_in_order():
    with Emulator(api_key=KEY, batch_job_s=0) as emu:
        client = sdk(emu)
        src = types.EmbeddingsBatchJobSource(
            inlined_requests=types.EmbedContentBatch(
                contents=["alpha", "beta", "gamma"],
                config=types.EmbedContentConfig(task_type="CLUSTERING", output_dimensionality=16),
            )
        )
        job = client.batches.create_embeddings(model=MODEL, src=src)
        job, _ = wait_done(client, job.name)
        responses = job.dest.inlined_embed_content_responses
        for text, response in zip(["alpha", "beta", "gamma"], responses, strict=True):
            got = np.asarray(response.response.embedding.values, dtype=np.float32)
            assert np.array_equal(got, expected_vector(MODEL, "CLUSTERING", 16, text))


def test_failed_and_expired_jobs_have_no_output_and_bill_nothing():
    with Emulator(api_key=KEY, batch_job_s=0, batch_fail_first=1, batch_expire_rate=1.0) as emu:
        client = sdk(emu)
        states = []
        for _ in range(2):
            job = client.batches.create_embeddings(
                model=MODEL, src={"file_name": upload(client, jsonl(["a", "b"])).name}
            )
            job, _ = wait_done(client, job.name)
            states.append(job.state.name)
            assert job.dest is None
        assert states == ["JOB_STATE_FAILED", "JOB_STATE_EXPIRED"]
        stats = emu.stats()["batch"]
        assert stats["texts_billed"] == 0 and stats["jobs"]["by_state"] == {
            "EXPIRED": 1,
            "FAILED": 1,
        }


def test_concurrency_cap_answers_429_and_frees_when_jobs_end():
    with Emulator(api_key=KEY, batch_job_s=0.5, batch_max_concurrent=2) as emu:
        client = sdk(emu)
        name = upload(client, jsonl(["a"])).name
        first = client.batches.create_embeddings(model=MODEL, src={"file_name": name})
        client.batches.create_embeddings(model=MODEL, src={"file_name": name})
        with pytest.raises(errors.ClientError) as info:
            client.batches.create_embeddings(model=MODEL, src={"file_name": name})
        assert info.value.code == 429 and info.value.status == "RESOURCE_EXHAUSTED"
        wait_done(client, first.name)
        client.batches.create_embeddings(model=MODEL, src={"file_name": name})
        stats = emu.stats()["batch"]["jobs"]
        assert stats["created"] == 3 and stats["rejected_concurrency"] == 1


def test_cancel_delete_list_and_file_deletion():
    with Emulator(api_key=KEY, batch_job_s=30) as emu:
        client = sdk(emu)
        file = upload(client, jsonl(["a"]), name="mine")
        job = client.batches.create_embeddings(model=MODEL, src={"file_name": file.name})
        assert [j.name for j in client.batches.list()] == [job.name]
        assert [f.display_name for f in client.files.list()] == ["mine"]
        client.batches.cancel(name=job.name)
        assert client.batches.get(name=job.name).state.name == "JOB_STATE_CANCELLED"
        client.batches.delete(name=job.name)
        with pytest.raises(errors.ClientError) as info:
            client.batches.get(name=job.name)
        assert info.value.code == 404
        client.files.delete(name=file.name)
        assert list(client.files.list()) == []
        stats = emu.stats()["batch"]
        assert stats["files"]["stored"] == [] and stats["files"]["deleted"] == 1
        assert stats["jobs"]["deleted"] == 1 and stats["texts_billed"] == 0


def test_uploaded_files_cannot_be_downloaded_and_missing_ones_are_404():
    with Emulator(api_key=KEY) as emu:
        client = sdk(emu)
        file = upload(client, jsonl(["a"]))
        with pytest.raises(errors.ClientError) as info:
            client.files.download(file=file.name)
        assert info.value.code == 400
        with pytest.raises(errors.ClientError) as info:
            client.batches.create_embeddings(model=MODEL, src={"file_name": "files/nope"})
        assert info.value.code == 404


def test_files_expire_48_hours_after_upload_as_google_states():
    """Google's Files API keeps a file 48 h: past that a get is 404, it is gone
    from the list, and a job cannot be created from it."""
    hours = 3600.0
    with Emulator(api_key=KEY, batch_job_s=0) as emu:
        client = sdk(emu)
        file = upload(client, jsonl(["a", "b"]), name="old")
        created = client.files.get(name=file.name)
        assert (created.expiration_time - created.create_time).total_seconds() == 48 * hours
        emu.update(batch_clock_s=47.9 * hours)  # not yet: it is still there
        assert client.files.get(name=file.name).name == file.name
        fresh = upload(client, jsonl(["c"]), name="fresh")  # uploaded "now", 47.9 h later
        emu.update(batch_clock_s=48 * hours)
        with pytest.raises(errors.ClientError) as info:
            client.files.get(name=file.name)
        assert info.value.code == 404
        assert [f.display_name for f in client.files.list()] == ["fresh"]
        with pytest.raises(errors.ClientError) as info:
            client.batches.create_embeddings(model=MODEL, src={"file_name": file.name})
        assert info.value.code == 404
        job = client.batches.create_embeddings(model=MODEL, src={"file_name": fresh.name})
        assert wait_done(client, job.name)[0].state.name == "JOB_STATE_SUCCEEDED"
        stats = emu.stats()["batch"]
    assert stats["files"]["expired"] == 1 and stats["jobs"]["rejected_missing_file"] == 1
    assert stats["jobs"]["created"] == 1 and stats["texts_billed"] == 1


def test_key_and_model_are_checked():
    with Emulator(api_key=KEY) as emu:
        with pytest.raises(errors.ClientError) as info:
            upload(sdk(emu, key="wrong"), jsonl(["a"]))
        assert info.value.code == 400 and "API key not valid" in info.value.message
        client = sdk(emu)
        name = upload(client, jsonl(["a"])).name
        with pytest.raises(errors.ClientError) as info:
            client.batches.create_embeddings(model="no-such-model", src={"file_name": name})
        assert info.value.code == 404


def test_cli_flags_reach_the_config():
    args = build_parser().parse_args(
        ["--batch-job-s", "1.5", "--batch-no-shuffle", "--batch-line-error-rate", "0.05",
         "--batch-fail-first", "2", "--batch-max-concurrent", "3", "--batch-file-ttl-s", "60"]
    )  # fmt: skip
    assert (args.batch_job_s, args.batch_no_shuffle, args.batch_line_error_rate) == (
        1.5,
        True,
        0.05,
    )
    assert (args.batch_fail_first, args.batch_max_concurrent, args.batch_file_ttl_s) == (2, 3, 60.0)
