"""The Batch API's per-record work runs in Beam stages (pipeline/batch_stage.py):
the workers read result files into checkpoints and hand the driver small
reports, against the emulator through the real google-genai SDK."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beamvec.batchapi.journal import BatchJournal
from beamvec.batchapi.run import run_batch
from beamvec.emulator import Emulator
from beamvec.errors import SystemicError
from beamvec.pipeline.batch_stage import BatchTarget, collect_on_workers

from test_batch_api import FAST, KEY, SPEC, client_for, corpus, want

os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1,localhost"]))

FINGERPRINT = "fp-workers"


class KeyOnly:
    """The one thing the stage asks of the backend on a worker: the API key."""

    def read_api_key(self) -> str:
        return KEY


def target(out, emu, run_id="r1") -> BatchTarget:
    return BatchTarget(str(out), SPEC, FINGERPRINT, SPEC.dimension, run_id, base_url=emu.url)


def checkpoint_vectors(out) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    for path in sorted(out.glob(f"_partial/{FINGERPRINT}/batch-*.parquet")):
        table = pq.read_table(path)
        for key, vec in zip(table.column("content_hash").to_pylist(), table.column("vector").to_pylist(), strict=True):
            assert key not in found  # one checkpoint row a key
            found[key] = np.asarray(vec, np.float32)
    return found


def test_workers_read_the_result_files_the_driver_never_downloads(tmp_path):
    todo = corpus(shards=2, per_shard=150)
    out = tmp_path / "out"
    options = PipelineOptions(["--runner=DirectRunner"])
    calls: list[int] = []
    with Emulator(api_key=KEY, batch_job_s=0.2, batch_line_error_rate=0.1) as emu:
        stage = target(out, emu)
        client = client_for(emu)

        def refuse(name):  # the driver's own client: it must never read a result file
            raise AssertionError(f"the driver downloaded {name}")

        client.download = refuse  # type: ignore[method-assign]

        def on_workers(jobs):
            calls.append(len(jobs))
            return collect_on_workers(jobs, KeyOnly(), stage, options)

        settings = dataclasses.replace(FAST, max_line_retries=6)
        outcome = run_batch(todo, client, BatchJournal(str(out)), SPEC, settings, reader=on_workers)
        stats = emu.stats()["batch"]
    texts = {r.key: r.text for reqs in todo.values() for r in reqs}
    assert outcome.complete and not outcome.failures and not outcome.vectors  # none held by the driver
    got = checkpoint_vectors(out)
    assert set(got) == set(texts)
    for key, text in texts.items():
        np.testing.assert_allclose(got[key], want(text), rtol=0, atol=1e-6)
    assert stats["lines_failed"] > 0 and outcome.lines_failed == stats["lines_failed"]  # retried
    assert stats["texts_billed"] == 300 and stats["texts"]["billed_more_than_once"] == 0
    assert outcome.texts_billed == 300 and sum(calls) == stats["jobs"]["created"]
    assert not list(out.glob("_batch/staging/r1/reports/*"))  # reports read, then removed


def test_a_result_file_unreadable_for_now_is_read_next_pass(tmp_path):
    from beamvec.batchapi.results import BUSY, JobReport

    todo = corpus(shards=1, per_shard=20)
    out = tmp_path / "out"
    options = PipelineOptions(["--runner=DirectRunner"])
    passes: list[int] = []
    with Emulator(api_key=KEY, batch_job_s=0) as emu:
        stage = target(out, emu)

        def flaky(jobs):
            passes.append(len(jobs))
            if len(passes) == 1:  # as a worker reports a 503 on download
                return {job.id: JobReport(job.id, BUSY) for job in jobs}
            return collect_on_workers(jobs, KeyOnly(), stage, options)

        outcome = run_batch(todo, client_for(emu), BatchJournal(str(out)), SPEC, FAST, reader=flaky)
        assert emu.stats()["batch"]["jobs"]["created"] == 1  # not resubmitted
    assert outcome.complete and passes == [1, 1]
    assert set(checkpoint_vectors(out)) == {r.key for r in todo["shard-0"]}


class WrongKey:
    def read_api_key(self) -> str:
        return "wrong-key-on-the-worker"


def test_a_key_the_service_refuses_on_a_worker_is_one_line_on_the_driver(tmp_path):
    todo = corpus(shards=1, per_shard=5)
    out = tmp_path / "out"
    options = PipelineOptions(["--runner=DirectRunner"])
    with Emulator(api_key=KEY, batch_job_s=0) as emu:
        stage = target(out, emu)
        with pytest.raises(SystemicError) as info:
            run_batch(todo, client_for(emu), BatchJournal(str(out)), SPEC, FAST,
                      reader=lambda jobs: collect_on_workers(jobs, WrongKey(), stage, options))
    message = str(info.value)
    assert "\n" not in message and "API key" in message and "wrong-key" not in message


# -- request files written by the workers --------------------------------------


def test_workers_write_each_text_once_across_splits_and_buckets(tmp_path, monkeypatch):
    from test_batch_pipeline import write_corpus

    from beamvec.batchapi.journal import BatchJournal
    from beamvec.driver.batch_phase import batch_target, write_requests
    from beamvec.driver.resolve import parse_options, resolve_inputs
    from beamvec.pipeline import batch_requests
    from beamvec.records import content_hash
    from beamvec.write.sink import Output

    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setattr(batch_requests, "BUCKET_INPUT_BYTES", 8_000)  # several buckets
    texts = write_corpus(tmp_path / "in", shards=3, per_shard=300)  # one text in every shard
    out = tmp_path / "out"
    options = parse_options([
        "--input", str(tmp_path / "in" / "*.jsonl"), "--output", str(out), "--backend", "gemini",
        "--api-base-url", "http://127.0.0.1:9", "--task-type", "RETRIEVAL_DOCUMENT",
        "--output-dimensionality", "64", "--batch-api", "--batch-max-requests-per-file", "50",
        "--split-bytes", "4096", "--runner=DirectRunner",
    ])  # fmt: skip
    inputs = resolve_inputs(options)
    output = Output(str(out), run_id="r1")
    by_hash = {content_hash(t): t for t in texts.values()}
    held = sorted(by_hash)[:25]  # a killed run's job holds these: counted, never written again
    BatchJournal(str(out)).new_job(held, ["part-0.jsonl"])
    target = batch_target(inputs, output)

    files, distinct = write_requests(output, inputs, inputs.shards, target)
    assert distinct == len(by_hash) == 3 * 297 + 1
    written: list[str] = []
    for staged in files:
        lines = [json.loads(x) for x in Path(staged.requests).read_text().splitlines()]
        keys = Path(staged.keys).read_text().split()
        assert [x["key"] for x in lines] == keys and len(keys) == staged.count <= 50
        for line in lines:
            assert line["request"]["content"]["parts"][0]["text"] == by_hash[line["key"]]
        written += keys
    assert len(written) == len(set(written))  # each text in one file, once
    assert set(written) == set(by_hash) - set(held)
    assert len({s.requests.rsplit("/", 1)[-1][:5] for s in files}) > 1  # more than one bucket

    again, _ = write_requests(output, inputs, inputs.shards, target)  # as a retried stage
    assert again == files  # the same files at the same derived paths


def test_never_more_jobs_on_the_service_than_the_cap(tmp_path):
    """Files beyond ``max_concurrent_jobs`` wait in the journal, uploaded only
    when a job finishes: the service never refuses one (its cap is the same)."""
    todo = corpus(shards=1, per_shard=80)
    settings = dataclasses.replace(FAST, max_requests_per_file=20, max_concurrent_jobs=1)
    with Emulator(api_key=KEY, batch_job_s=0.2, batch_max_concurrent=1) as emu:
        client = client_for(emu)
        outcome = run_batch(todo, client, BatchJournal(str(tmp_path)), SPEC, settings)
        stats = emu.stats()["batch"]
    assert outcome.complete and len(outcome.vectors) == 80
    assert stats["jobs"]["rejected_concurrency"] == 0 and client.create_429s == 0
    assert stats["jobs"]["created"] == stats["files"]["uploaded"] == 4
    assert stats["texts"]["submitted_more_than_once"] == 0


def test_a_run_over_many_splits_bills_each_text_once_and_leaves_no_staging(tmp_path, capsys, monkeypatch):
    from test_batch_pipeline import KEY as RUN_KEY
    from test_batch_pipeline import args, check_vectors, never_billed_twice, write_corpus

    from helpers import assert_reconciled, beam_run, read_output

    monkeypatch.setenv("GEMINI_API_KEY", RUN_KEY)
    texts = write_corpus(tmp_path / "in", shards=2, per_shard=300)  # one text in every shard
    out = tmp_path / "out"
    with Emulator(api_key=RUN_KEY, batch_job_s=0.2) as emu:
        code, _, err = beam_run(capsys, *args(tmp_path / "in", out, emu, "--split-bytes", "2048"))
        stats = emu.stats()
    assert code == 0, err
    result = read_output(str(out))
    assert_reconciled(result)
    check_vectors(result, texts)
    assert stats["batch"]["texts_billed"] == len(set(texts.values())) and stats["texts_embedded"] == 0
    never_billed_twice(stats)
    assert not (out / "_batch" / "staging").exists() or not any((out / "_batch" / "staging").rglob("*.*"))
