"""`plan` and the driver's preflight follow the run's refusals: a text the
API refused for good is not counted as sent under `--retry-dead-letters`,
nor picked as the preflight's billed text; and `plan --force` with a new
configuration that does not cover the output says a run would be refused."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest

from beamvec.backends.base import PREFLIGHT_TEXT
from beamvec.backends.local import LocalBackend
from beamvec.contract import read_state
from beamvec.driver.preflight import first_text_to_send
from beamvec.driver.resolve import (
    parse_options,
    resolve_inputs,
    retry_reasons,
    retry_refusals,
    split_work,
)
from beamvec.errors import BackendError, ErrorKind
from beamvec.write.sink import Output

from helpers import beam_run, read_output, run_cli

POISON = "this one text is refused by the API for good"
FLAKY = "this text only meets 503s on the first run"
GOOD = [f"an ordinary sentence number {i} about rivers and hills" for i in range(4)]


@pytest.fixture
def refused_output(tmp_path, capsys, monkeypatch):
    """An output whose one shard holds a bad_request (POISON) and an
    embed_failed (FLAKY) dead letter, POISON routed first of the two."""
    real = LocalBackend.embed
    flaky = {"on": True}

    def embed(self, texts: Sequence[str], titles=None) -> np.ndarray:
        if POISON in texts:
            raise BackendError("400 INVALID_ARGUMENT: unsupported content", kind=ErrorKind.BAD_INPUT, status=400)
        if flaky["on"] and FLAKY in texts and PREFLIGHT_TEXT not in texts:
            raise BackendError("503 UNAVAILABLE", kind=ErrorKind.TRANSIENT, status=503)
        return real(self, texts, titles)

    monkeypatch.setattr(LocalBackend, "embed", embed)
    src = tmp_path / "in" / "a.jsonl"
    src.parent.mkdir()
    rows = [*GOOD[:2], POISON, FLAKY, *GOOD[2:]]
    src.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(rows)))
    args = ["--input", str(src), "--output", str(tmp_path / "out"), "--max-attempts", "1"]
    code, _, err = beam_run(capsys, *args)
    assert code == 0, err
    reasons = [r for t in read_output(str(tmp_path / "out"))["dead"].values() for r in t.column("reason").to_pylist()]
    assert sorted(reasons) == ["bad_request", "embed_failed"]
    return args


@pytest.mark.slow
def test_plan_does_not_count_a_refused_text_as_sent(refused_output, capsys):
    code, stdout, err = run_cli(capsys, "plan", "--json", *refused_output, "--retry-dead-letters")
    assert code == 0, err
    plan = json.loads(stdout)
    assert plan["shards_to_embed"] == 1
    assert plan["sent"] == 1  # FLAKY only: POISON is dead-lettered again, unsent
    assert plan["reused"] == len(GOOD)
    assert plan["dead_letters_by_reason"] == {"bad_request": 1}

    # asking for bad_request too: the plan counts it as sent, as the run sends it
    code, stdout, err = run_cli(capsys, "plan", "--json", *refused_output,
                                "--retry-dead-letters", "embed_failed,bad_request")
    assert code == 0, err
    plan = json.loads(stdout)
    assert plan["sent"] == 2 and plan["dead_letters_by_reason"] == {}


def _retry_run(refused_output):
    """What a `--retry-dead-letters` run resolves: inputs, output, state, the
    shards to redo and the texts kept refused."""
    options = parse_options([*refused_output, "--retry-dead-letters"])
    inputs = resolve_inputs(options)
    output = Output(inputs.bv.output)
    state = read_state(output)
    fingerprint = inputs.description.config_fingerprint
    retry = retry_reasons(inputs.bv.retry_dead_letters)
    work = split_work(inputs.shards, state, fingerprint, False, retry)
    return inputs, output, state, work, retry_refusals(output, state, work.todo, fingerprint, retry)


@pytest.mark.slow
def test_the_preflight_never_picks_a_refused_text(refused_output):
    inputs, output, state, work, refusals = _retry_run(refused_output)
    assert len(refusals) == 1

    record, _, _ = first_text_to_send(output, inputs, work.todo, True, state, refusals)
    assert record is not None and record.text == FLAKY
    record, _, _ = first_text_to_send(output, inputs, work.todo, True, state)  # without: the refused one
    assert record is not None and record.text == POISON


@pytest.mark.slow
def test_plan_force_with_a_new_configuration_on_part_of_the_inputs_says_a_run_is_refused(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b", "c"):
        (src / f"{name}.jsonl").write_text(json.dumps({"id": name, "text": f"a  text  {name}"}) + "\n")
    out = tmp_path / "out"
    assert beam_run(capsys, "--input", str(src / "*.jsonl"), "--output", str(out))[0] == 0

    partial = ["--input", str(src / "[ab].jsonl"), "--output", str(out), "--normalization", "collapse", "--force"]
    code, run_out, run_err = beam_run(capsys, *partial)
    assert code == 2 and "c.jsonl" in run_err  # the run's refusal
    code, stdout, err = run_cli(capsys, "plan", "--json", *partial)
    assert code == 0, err
    existing = json.loads(stdout)["output"]
    assert existing["refused"] is True
    assert "a run would be refused" in existing["conflict"] and "c.jsonl" in existing["conflict"]
    code, stdout, _ = run_cli(capsys, "plan", *partial)
    assert "WARNING" in stdout and "a run would be refused" in stdout and "c.jsonl" in stdout

    whole = ["--input", str(src / "*.jsonl"), "--output", str(out), "--normalization", "collapse", "--force"]
    existing = json.loads(run_cli(capsys, "plan", "--json", *whole)[1])["output"]
    assert existing["refused"] is False and "--force: a run would replace them" in existing["conflict"]


@pytest.mark.slow
def test_the_batch_api_never_lists_a_refused_text(refused_output):
    """`--batch-api` routes as the workers do: a text kept refused is not put
    in a request file (it would be billed again at the batch rate)."""
    from beamvec.driver.batch_phase import collect_requests

    inputs, output, state, work, refusals = _retry_run(refused_output)
    listed = collect_requests(output, inputs, work.todo, True, state=state, refusals=refusals)
    assert [r.text for reqs in listed.values() for r in reqs] == [FLAKY]
    unrefused = collect_requests(output, inputs, work.todo, True, state=state)
    assert sorted(r.text for reqs in unrefused.values() for r in reqs) == sorted([POISON, FLAKY])
