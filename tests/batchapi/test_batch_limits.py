"""The Batch API within the service's limits, counted at the emulator through the
real google-genai SDK: the project's file storage (Google: 20 GB a project),
files deleted 48 hours after upload, and the request stage's held keys read
once per worker process."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest
from apache_beam.internal import pickler

from beamvec.batchapi.client import BatchClient
from beamvec.batchapi.journal import BatchJournal, StagedFile
from beamvec.batchapi.jsonl import BatchRequest, request_files, request_key
from beamvec.batchapi.room import needed_bytes
from beamvec.batchapi.run import cleanup_jobs, run_batch, run_batch_staged
from beamvec.emulator import Emulator
from beamvec.errors import SystemicError
from beamvec.pipeline.batch_requests import RequestPlan, WriteRequestFiles
from beamvec.retry import RetryPolicy

from test_batch_api import FAST, KEY, MODEL, SPEC, assert_all_vectors, client_for, corpus

os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1,localhost"]))

HOUR = 3600.0
#: Google's Files API: a file is deleted 48 hours after it is uploaded.
FILE_LIFETIME_H = 48


def later(hours: float):
    """A wall clock ``hours`` ahead: what a journal sees when a run starts that much later."""
    return lambda: time.time() + hours * HOUR


def test_files_on_the_service_stay_under_the_byte_cap_and_waiting_files_never_deadlock(tmp_path):
    """With room for one job's files at a time (though 100 jobs may run), the
    files wait in the journal and go one after the other: the run finishes
    before any shard is committed, because a settled job's files are deleted
    at once instead of at the commit."""
    todo = corpus(shards=1, per_shard=80)  # 4 files of 20
    one_job = needed_bytes(20 * 400, 20, SPEC.dimension)  # a request line is well under 400 bytes
    settings = dataclasses.replace(FAST, max_requests_per_file=20, max_service_bytes=int(1.5 * one_job))
    journal = BatchJournal(str(tmp_path))
    with Emulator(api_key=KEY, batch_job_s=0.1) as emu:
        client = client_for(emu)
        outcome = run_batch(todo, client, journal, SPEC, settings)
        stats = emu.stats()["batch"]
        assert cleanup_jobs(outcome.jobs, client, journal, ["shard-0"]) == 4  # the commit
        after = emu.stats()["batch"]
    assert_all_vectors(outcome, todo)
    files = stats["files"]
    assert 0 < files["peak_stored_bytes"] <= settings.max_service_bytes
    assert stats["jobs"]["created"] == files["uploaded"] == 4 and files["results"] == 4
    assert files["stored"] == [] and files["deleted"] == 8 and stats["jobs"]["deleted"] == 4
    assert stats["texts"]["submitted_more_than_once"] == 0 and stats["texts_billed"] == 80
    assert after["files"]["deleted"] == 8 and after["jobs"]["deleted"] == 4  # nothing left to delete
    assert journal.pending() == [] and all(job.files_deleted for job in journal.jobs())


def test_staged_files_wait_in_order_under_the_byte_cap(tmp_path):
    """Request files the workers wrote: recorded, then uploaded one after the
    other as the room of the one before is freed."""
    todo = corpus(shards=1, per_shard=80)["shard-0"]
    staging = tmp_path / "staging"
    staging.mkdir()
    staged = []
    for i, file in enumerate(request_files(todo, SPEC, max_requests=20)):
        (staging / f"{i}.requests.jsonl").write_bytes(file.data)
        (staging / f"{i}.keys").write_text("\n".join(file.keys) + "\n")
        staged.append(StagedFile(str(staging / f"{i}.requests.jsonl"), str(staging / f"{i}.keys"),
                                 len(file.keys), ("shard-0",), len(file.data)))  # fmt: skip
    one_job = needed_bytes(max(f.size for f in staged), 20, SPEC.dimension)
    settings = dataclasses.replace(FAST, max_service_bytes=int(1.5 * one_job))
    with Emulator(api_key=KEY, batch_job_s=0.1) as emu:
        outcome = run_batch_staged(staged, 80, client_for(emu), BatchJournal(str(tmp_path / "out")), SPEC, settings)
        stats = emu.stats()["batch"]
    assert_all_vectors(outcome, {"shard-0": todo})
    assert 0 < stats["files"]["peak_stored_bytes"] <= settings.max_service_bytes
    assert stats["jobs"]["created"] == stats["files"]["uploaded"] == 4 and stats["files"]["stored"] == []
    jobs = BatchJournal(str(tmp_path / "out")).jobs()
    assert [j.size for j in jobs] == [f.size for f in staged]  # recorded in the workers' order
    assert all(j.name and j.files_deleted for j in jobs)


def test_the_byte_cap_holds_all_files_without_it(tmp_path):
    """The same run with Google's 20 GB: every file goes at once (the cap above bites)."""
    todo = corpus(shards=1, per_shard=80)
    settings = dataclasses.replace(FAST, max_requests_per_file=20, wait=False)
    with Emulator(api_key=KEY, batch_job_s=30) as emu:
        run_batch(todo, client_for(emu), BatchJournal(str(tmp_path)), SPEC, settings)
        stats = emu.stats()["batch"]
    assert stats["jobs"]["active"] == stats["files"]["uploaded"] == 4


def _created_one_of_two(tmp_path, emu: Emulator) -> tuple[dict, BatchJournal]:
    """A no-wait run whose second job was uploaded but refused (the service's
    job cap, 429): its record holds its input file, the job is not created."""
    todo = corpus(shards=1, per_shard=40)
    journal = BatchJournal(str(tmp_path))
    impatient = BatchClient.connect(KEY, MODEL, base_url=emu.url, retry=RetryPolicy(max_attempts=1))
    no_wait = dataclasses.replace(FAST, max_requests_per_file=20, wait=False)
    first = run_batch(todo, impatient, journal, SPEC, no_wait)
    assert first.jobs_submitted == 1
    (waiting,) = [job for job in journal.jobs() if job.name is None]
    assert waiting.state == "CREATING" and waiting.input_file and waiting.uploaded_at
    return todo, journal


def test_an_upload_near_its_48_hours_is_uploaded_again_before_its_job_is_created(tmp_path):
    with Emulator(api_key=KEY, batch_job_s=30, batch_max_concurrent=1) as emu:
        todo, journal = _created_one_of_two(tmp_path, emu)
        ((waiting_id, old),) = [(job.id, job.input_file) for job in journal.jobs() if job.name is None]
        hours = FILE_LIFETIME_H - 0.5  # the file is still there, but may be gone before the job runs
        emu.update(batch_clock_s=hours * HOUR, batch_job_s=0.1)
        rerun = BatchJournal(str(tmp_path), clock=later(hours))
        outcome = run_batch(todo, client_for(emu), rerun, SPEC, FAST)
        stats = emu.stats()["batch"]
    assert_all_vectors(outcome, todo)
    assert stats["files"]["uploaded"] == 3  # the second file twice
    assert stats["jobs"]["created"] == 2 and stats["jobs"]["rejected_missing_file"] == 0
    assert stats["files"]["expired"] == 0 and old not in stats["files"]["stored"]
    (again,) = [job for job in rerun.jobs() if job.id == waiting_id]
    assert again.name and again.input_file != old and again.files_deleted
    assert stats["texts"]["submitted_more_than_once"] == 0


def test_a_job_whose_input_file_expired_is_uploaded_again_once(tmp_path):
    """The file is gone when the job is created (the service deleted it after
    48 h): it is uploaded again from the journal and the job created from it."""
    todo = corpus(shards=1, per_shard=40)
    settings = dataclasses.replace(FAST, max_requests_per_file=20)
    with Emulator(api_key=KEY, batch_job_s=0.1) as emu:
        client = client_for(emu)
        create = client.create
        expired: list[str] = []

        def expire_first(input_file: str, display_name: str):
            if not expired:  # 49 h pass between the upload and the job's creation
                expired.append(input_file)
                emu.update(batch_clock_s=(FILE_LIFETIME_H + 1) * HOUR)
            return create(input_file, display_name)

        client.create = expire_first  # type: ignore[method-assign]
        outcome = run_batch(todo, client, BatchJournal(str(tmp_path)), SPEC, settings)
        stats = emu.stats()["batch"]
    assert_all_vectors(outcome, todo)
    assert stats["jobs"]["rejected_missing_file"] == 1 and stats["files"]["expired"] == 1
    assert stats["files"]["uploaded"] == 3 and stats["jobs"]["created"] == 2
    assert stats["texts"]["submitted_more_than_once"] == 0


def test_a_file_gone_twice_is_one_line(tmp_path):
    """Uploaded again once only: a service that loses every file stops the run with one line."""
    todo = {"shard-0": [BatchRequest(request_key("a", None, SPEC), "a")]}
    with Emulator(api_key=KEY, batch_job_s=0.1, batch_file_ttl_s=1e-6) as emu:
        with pytest.raises(SystemicError) as info:
            run_batch(todo, client_for(emu), BatchJournal(str(tmp_path)), SPEC, FAST)
        stats = emu.stats()["batch"]
    assert str(info.value).startswith("gemini batch: cannot create a batch job")
    assert "\n" not in str(info.value) and KEY not in str(info.value)
    assert stats["files"]["uploaded"] == 2 and stats["jobs"]["rejected_missing_file"] == 2


def test_a_404_not_about_the_file_uploads_nothing_again(tmp_path):
    """A job refused for its model (a 404 that names no file) is one line at
    once: the file is there, and uploading it again would change nothing."""
    todo = {"shard-0": [BatchRequest(request_key("a", None, SPEC), "a")]}
    with Emulator(api_key=KEY, batch_job_s=0.1) as emu:
        fast = RetryPolicy(base_delay=0.05, max_delay=0.3)
        client = BatchClient.connect(KEY, "gemini-embedding-404", base_url=emu.url, retry=fast)
        with pytest.raises(SystemicError) as info:
            run_batch(todo, client, BatchJournal(str(tmp_path)), SPEC, FAST)
        stats = emu.stats()["batch"]
    assert str(info.value).startswith("gemini batch: cannot create a batch job")
    assert "gemini-embedding-404" in str(info.value) and "\n" not in str(info.value)
    assert stats["files"]["uploaded"] == 1 and stats["jobs"]["created"] == 0


def test_held_keys_are_read_once_per_process_whatever_the_copies(tmp_path, monkeypatch):
    """Beam unpickles a DoFn once per thread: the copies share one key set."""
    todo = corpus(shards=1, per_shard=40)
    settings = dataclasses.replace(FAST, max_requests_per_file=20, wait=False)
    with Emulator(api_key=KEY, batch_job_s=30) as emu:
        run_batch(todo, client_for(emu), BatchJournal(str(tmp_path)), SPEC, settings)
    reads: list[str] = []
    keys = BatchJournal.keys
    monkeypatch.setattr(BatchJournal, "keys", lambda self, job: reads.append(job.id) or keys(self, job))
    plan = RequestPlan(str(tmp_path / "_batch" / "staging" / "r1"), SPEC, 1, 20, 1 << 20)
    fn = WriteRequestFiles(plan, str(tmp_path))
    copies = [pickler.loads(pickler.dumps(fn)) for _ in range(3)]
    for copy in copies:
        copy.setup()
    assert len(reads) == 2  # two jobs in the journal, each read once
    assert all(copy.held is copies[0].held for copy in copies)
    assert len(copies[0].held) == 40 and all(r.key in copies[0].held for r in todo["shard-0"])
