"""Systemic failures recorded under the output, read back by the driver."""

from __future__ import annotations

import pytest

from beamvec.contract.failures import (
    clear_failures,
    raise_recorded_failure,
    read_failures,
    record_failure,
    systemic_failures_recorded,
)
from beamvec.errors import SystemicError


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_record_read_clear(tmp_path, kind):
    url = str(tmp_path / "out") if kind == "local" else f"memory://failures-{tmp_path.name}/out"
    assert read_failures(url, {}) == []
    clear_failures(url, {})  # nothing there: fine
    record_failure(url, {}, "gemini: the API key was rejected\n(second line)")
    record_failure(url, {}, "second failure")
    assert read_failures(url, {}) == ["gemini: the API key was rejected (second line)", "second failure"]
    clear_failures(url, {})
    assert read_failures(url, {}) == []


def test_the_context_manager_records_systemic_errors_only(tmp_path):
    url = str(tmp_path / "out")
    with pytest.raises(ValueError), systemic_failures_recorded(url, {}):
        raise ValueError("a bug stays a bug")
    assert read_failures(url, {}) == []
    with pytest.raises(SystemicError), systemic_failures_recorded(url, {}):
        raise SystemicError("vertex: no project")
    assert read_failures(url, {}) == ["vertex: no project"]
    cause = RuntimeError("worker text")
    with pytest.raises(SystemicError, match="^vertex: no project$") as info:
        raise_recorded_failure(url, {}, cause)
    assert info.value.__cause__ is cause
    clear_failures(url, {})
    raise_recorded_failure(url, {}, cause)  # nothing recorded: returns, the caller re-raises


def test_recording_never_raises(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    record_failure(str(blocker / "out"), {}, "message")  # cannot be written: logged, not raised
