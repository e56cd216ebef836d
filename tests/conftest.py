"""Fixtures shared by the test modules: the Gemini emulator and its key.

``emulator`` is a fresh emulator per test (its /stats count only that test's
calls); a module that needs other settings overrides ``emulator_settings``,
and one whose tests may share a server (and its counts) takes
``module_emulator``. ``key_env`` puts the emulator's key where the client
looks for it. Plain helpers (running the CLI, reading an output back, the
billed texts without the preflight probe) are in helpers.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from beamvec.emulator import Emulator
from beamvec.interrupt import STOP

from helpers import API_KEY


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> str:
    """GEMINI_API_KEY set to the emulator's key, GOOGLE_API_KEY (which wins) unset."""
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", API_KEY)
    return API_KEY


@pytest.fixture
def emulator_settings() -> dict[str, Any]:
    """Emulator settings (latency, quota, faults) for ``emulator``; override per module."""
    return {}


@pytest.fixture
def emulator(emulator_settings: dict[str, Any]) -> Iterator[Emulator]:
    """An emulator for one test, accepting ``API_KEY`` only."""
    with Emulator(api_key=API_KEY, **emulator_settings) as emu:
        yield emu


@pytest.fixture(scope="module")
def module_emulator() -> Iterator[Emulator]:
    """One emulator for a whole module (default settings, ``API_KEY``)."""
    with Emulator(api_key=API_KEY) as emu:
        yield emu


@pytest.fixture(autouse=True)
def _no_stop_left_over() -> Iterator[None]:
    """A run that stopped (a worker failed, Ctrl-C) leaves this process's STOP
    set until the next run resets it; a test that works a shard in process
    without a run would read it as its own stop and raise ``Interrupted``,
    which pytest takes for Ctrl-C and ends the whole session."""
    STOP.reset()
    yield
