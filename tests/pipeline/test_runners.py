"""The same job on three local runners, and the runner configs that select them.

The in-process DirectRunner, the DirectRunner with two worker processes
(``runner_configs/local-multiprocess.yaml``) and the PortableRunner with
Beam's embedded job server and LOOPBACK workers (``runner_configs/portable.yaml``,
the Runner API path that Flink, Spark and Dataflow take) must write the same
rows and the same dead letters for the same corpus.

Typical times on the 2-core reference machine: in-process ~2 s, two worker
processes ~4 s (each process starts a Beam SDK harness and loads the ONNX
model), portable ~2 s.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
)

from beamvec.cli import main
from beamvec.driver.job import parse_options
from beamvec.driver.options import BeamvecOptions, expand_config

from helpers import ROOT, assert_reconciled, read_output, vectors_by_id

CONFIGS = ROOT / "runner_configs"

#: Good records per shard; the bad ones are added to shard 1 and 2.
PER_SHARD = 15
SHARDS = 4
BAD = {
    # shard -> lines appended after the good ones
    1: [
        '{"id": "broken", "text": ',  # invalid JSON
        '{"id": "blank", "text": "   "}',  # empty text
        '{"id": "s1-3", "text": "the same id again"}',  # duplicate id
    ],
    2: [
        '{"id": "notext"}',  # missing text
        '{"id": "number", "text": 42}',  # not a string
    ],
}
EXPECTED_REASONS = {
    "invalid_json": 1, "empty_text": 1, "duplicate_id": 1, "missing_text": 1, "non_string_text": 1,
}


def _text(shard: int, i: int) -> str:
    topics = ["rivers", "compilers", "bread", "orbits", "chess", "glaciers", "printing presses"]
    # Two records share a text in every shard: the in-shard dedup path runs too.
    j = i if i != PER_SHARD - 1 else 0
    return f"Note {j} from shard {shard}: a short paragraph about {topics[(shard + j) % len(topics)]}."


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for shard in range(SHARDS):
        lines = [json.dumps({"id": f"s{shard}-{i}", "text": _text(shard, i), "n": i}) for i in range(PER_SHARD)]
        lines += BAD.get(shard, [])
        (root / f"part-{shard:02d}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def run(corpus: Path, output: Path, *flags: str) -> tuple[int, str]:
    """``beamvec run`` in this process, as a user would call it; (exit code, stdout)."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["run", "--input", str(corpus / "*.jsonl"), "--output", str(output), *flags])
    return code, stdout.getvalue()


def rows(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every vector row but the vector, by id."""
    result = {}
    for table in out["vectors"].values():
        for row in table.drop_columns(["vector"]).to_pylist():
            result[row["id"]] = row
    return result


def dead_letters(out: dict[str, Any]) -> list[dict[str, Any]]:
    result = [row for table in out["dead"].values() for row in table.to_pylist()]
    return sorted(result, key=lambda r: (r["source_shard"], r["source_position"]))


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The in-process DirectRunner's output (runner_configs/local.yaml)."""
    output = tmp_path_factory.mktemp("in-process") / "out"
    code, stdout = run(corpus, output, "--config", str(CONFIGS / "local.yaml"), "--quiet")
    assert code == 0, stdout
    return read_output(str(output))


@pytest.mark.slow
def test_in_process_direct_runner(reference: dict[str, Any]) -> None:
    assert_reconciled(reference)
    assert len(reference["vectors"]) == SHARDS
    assert reference["manifest"]["config"]["runner"] == "DirectRunner"
    got = vectors_by_id(reference)
    assert set(got) == {f"s{s}-{i}" for s in range(SHARDS) for i in range(PER_SHARD)}
    for vector in got.values():
        assert vector.shape == (384,) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3
    # The repeated text of each shard got the same vector as its first occurrence.
    np.testing.assert_allclose(got["s0-0"], got[f"s0-{PER_SHARD - 1}"], atol=1e-6)
    reasons: dict[str, int] = {}
    for shard in reference["manifest"]["shards"].values():
        for reason, count in shard["dead_letters_by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    assert reasons == EXPECTED_REASONS
    assert len(dead_letters(reference)) == sum(EXPECTED_REASONS.values())


@pytest.mark.parametrize(
    ("config", "runner"),
    [("local-multiprocess.yaml", "DirectRunner"), ("portable.yaml", "PortableRunner")],
    ids=["multi-process", "portable"],
)
@pytest.mark.slow
def test_runner_writes_what_the_in_process_runner_writes(
    corpus: Path, tmp_path: Path, reference: dict[str, Any], config: str, runner: str, monkeypatch
) -> None:
    started: list[str] = []
    real_popen = subprocess.Popen

    def popen(args, *rest, **kwargs):  # Beam starts SDK workers with subprocess.Popen
        started.append(args if isinstance(args, str) else " ".join(map(str, args)))
        return real_popen(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    code, stdout = run(corpus, tmp_path / "out", "--config", str(CONFIGS / config), "--progress-interval=0")
    assert code == 0, stdout
    workers = [cmd for cmd in started if "sdk_worker_main" in cmd]
    assert len(workers) == (2 if config == "local-multiprocess.yaml" else 0), started
    assert "complete: _SUCCESS written" in stdout
    out = read_output(str(tmp_path / "out"))
    assert_reconciled(out)
    assert out["manifest"]["config"]["runner"] == runner
    assert sorted(out["vectors"]) == sorted(reference["vectors"])
    assert sorted(out["dead"]) == sorted(reference["dead"])
    ours, theirs = vectors_by_id(out), vectors_by_id(reference)
    assert set(ours) == set(theirs)
    for rid, vector in theirs.items():
        assert np.allclose(ours[rid], vector, atol=1e-5), rid
    assert rows(out) == rows(reference)
    assert dead_letters(out) == dead_letters(reference)
    for name, shard in reference["manifest"]["shards"].items():
        mine = out["manifest"]["shards"][name]
        for key in ("read", "embedded", "dead_lettered", "dead_letters_by_reason", "tokens"):
            assert mine[key] == shard[key], (name, key)


# -- --config: files and flags --------------------------------------------------


@pytest.mark.slow
def test_command_line_flags_win_over_the_config_file(corpus: Path, tmp_path: Path) -> None:
    """portable.yaml asks for the PortableRunner; --runner on the command line wins."""
    code, stdout = run(
        corpus, tmp_path / "out", "--config", str(CONFIGS / "portable.yaml"),
        "--runner=DirectRunner", "--quiet",
    )
    assert code == 0, stdout
    out = read_output(str(tmp_path / "out"))
    assert_reconciled(out)
    assert out["manifest"]["config"]["runner"] == "DirectRunner"


def test_config_merging_rules(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump({
            "runner": "DirectRunner",
            "direct_running_mode": "multi_processing",
            "direct_num_workers": 2,
            "quota-workers": 8,  # dashes in the file ...
            "concurrent_shards": 3,
            "normalization": "strip",
            "storage-option": {"auto_mkdir": True},
            "force": True,
        })
    )
    base = ["--input", "in/*.jsonl", "--output", "out"]
    options = parse_options(
        ["--config", str(config), *base,
         "--direct_num_workers", "1",  # space-separated value
         "--quota_workers=3",  # ... underscores on the command line: still the same flag
         "--concurrent-shards=5"]
    )
    direct = options.view_as(DirectOptions)
    bv = options.view_as(BeamvecOptions)
    assert direct.direct_num_workers == 1
    assert direct.direct_running_mode == "multi_processing"  # from the file
    assert bv.quota_workers == 3
    assert bv.concurrent_shards == 5
    assert bv.normalization == "strip"  # from the file
    assert bv.storage_option == ["auto_mkdir=true"]
    assert bv.force is True
    # --config=FILE spelling, and a flag given only on the command line.
    options = parse_options([f"--config={config}", *base, "--normalization", "none"])
    assert options.view_as(BeamvecOptions).normalization == "none"
    assert options.view_as(DirectOptions).direct_num_workers == 2


def test_false_in_a_config_file_reaches_flags_that_take_a_value(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text("checkpoint: false\n")
    options = parse_options(["--config", str(config), "--input", "in/*.jsonl", "--output", "out"])
    assert options.view_as(BeamvecOptions).checkpoint is False


# -- the shipped runner configs -------------------------------------------------

RUNNERS = {
    "local.yaml": "DirectRunner",
    "local-multiprocess.yaml": "DirectRunner",
    "portable.yaml": "PortableRunner",
    "dataflow.yaml": "DataflowRunner",
    "flink.yaml": "FlinkRunner",
    "spark.yaml": "SparkRunner",
}


def test_every_runner_config_is_listed() -> None:
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(RUNNERS)


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_runner_config_uses_only_flags_beam_or_beamvec_knows(name: str) -> None:
    """Every key is a Beam 2.77 or beamvec flag (Beam drops unknown flags with
    only a warning, so a misspelt one would silently do nothing)."""
    path = CONFIGS / name
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and data
    assert path.read_text().lstrip().startswith("#"), f"{name}: start with a comment saying how to use it"
    options = PipelineOptions(expand_config(["--config", str(path)]))
    known = options.get_all_options(retain_unknown_options=False)
    everything = options.get_all_options(retain_unknown_options=True)
    assert set(everything) - set(known) == set(), f"{name}: flags Beam and beamvec do not know"
    assert options.view_as(StandardOptions).runner == RUNNERS[name]
    if name == "portable.yaml":
        portable = options.view_as(PortableOptions)
        assert (portable.job_endpoint, portable.environment_type) == ("embed", "LOOPBACK")
    if name == "local-multiprocess.yaml":
        direct = options.view_as(DirectOptions)
        assert (direct.direct_running_mode, direct.direct_num_workers) == ("multi_processing", 2)
    if name in ("dataflow.yaml", "flink.yaml", "spark.yaml"):
        # The quota is the project's: a distributed runner must say how many share it.
        assert options.view_as(BeamvecOptions).quota_workers > 1


def test_files_the_runner_configs_ship_exist() -> None:
    """setup_file and requirements_file, relative to the repository root (the
    configs say to launch from there)."""
    missing = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        for key in ("setup_file", "requirements_file"):
            if key in data and not (ROOT / data[key]).is_file():
                missing.append(f"{path.name}: {key}: {data[key]}")
    assert not missing, f"files the runner configs name do not exist: {missing}"
