"""`--retry-dead-letters` sends transient failures only.

A shard holds a text the API refused for good (a 400 not about quota or
length: ``bad_request``) and texts whose retries ran out (``embed_failed``).
Retrying the transient ones must not send the refused text again; asking for
``bad_request`` too does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest

from beamvec.backends.base import PREFLIGHT_TEXT
from beamvec.backends.local import LocalBackend
from beamvec.errors import BackendError, ErrorKind

from helpers import assert_reconciled, beam_run, read_output

POISON = "this one text is refused by the API for good"
FLAKY = "this text only meets 503s on the first run"
GOOD = [f"an ordinary sentence number {i} about rivers and hills" for i in range(6)]


class Calls:
    def __init__(self) -> None:
        self.sent: list[str] = []  # texts of requests that were answered or refused
        self.flaky = True


@pytest.fixture
def calls(monkeypatch) -> Calls:
    state = Calls()
    real = LocalBackend.embed

    def embed(self, texts: Sequence[str], titles=None) -> np.ndarray:
        if POISON in texts:
            state.sent.extend(texts)
            raise BackendError("400 INVALID_ARGUMENT: unsupported content", kind=ErrorKind.BAD_INPUT, status=400)
        if state.flaky and FLAKY in texts:
            raise BackendError("503 UNAVAILABLE", kind=ErrorKind.TRANSIENT, status=503)
        state.sent.extend(t for t in texts if t != PREFLIGHT_TEXT)  # the local probe is free
        return real(self, texts, titles)

    monkeypatch.setattr(LocalBackend, "embed", embed)
    return state


def _reasons(out: dict) -> dict[str, str]:
    return {i: r for t in out["dead"].values()
            for i, r in zip(t.column("id").to_pylist(), t.column("reason").to_pylist(), strict=True)}


@pytest.mark.slow
def test_retry_sends_transient_failures_only_unless_asked(tmp_path, capsys, calls):
    rows = [*GOOD[:3], POISON, FLAKY, *GOOD[3:]]
    src = tmp_path / "in" / "a.jsonl"
    src.parent.mkdir()
    src.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(rows)))
    args = ["--input", str(src), "--output", str(tmp_path / "out"), "--max-attempts", "1"]

    code, _, err = beam_run(capsys, *args)
    assert code == 0, err
    first = _reasons(read_output(str(tmp_path / "out")))
    assert first["r3"] == "bad_request" and first["r4"] == "embed_failed", first
    failed = {i for i, r in first.items() if r == "embed_failed"}

    calls.flaky, calls.sent = False, []
    code, _, err = beam_run(capsys, *args, "--retry-dead-letters")
    assert code == 0, err
    assert POISON not in calls.sent  # refused for good: not billed again
    assert sorted(calls.sent) == sorted(rows[int(i[1:])] for i in failed)  # each retried text once
    out = read_output(str(tmp_path / "out"))
    assert_reconciled(out)
    assert _reasons(out) == {"r3": "bad_request"}
    (table,) = out["dead"].values()
    assert "unsupported content" in table.column("message")[0].as_py()  # its old reason kept

    calls.sent = []
    code, _, err = beam_run(capsys, *args, "--retry-dead-letters", "bad_request")
    assert code == 0, err
    assert calls.sent.count(POISON) == 1  # asked for: sent again, once
    assert _reasons(read_output(str(tmp_path / "out"))) == {"r3": "bad_request"}
