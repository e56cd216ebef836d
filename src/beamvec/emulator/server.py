"""The emulator run in this process: ``with Emulator(cfg) as emu: emu.url``.

``Emulator`` starts the HTTP server (``handler``: what each request is
answered) on a daemon thread, reports what it saw (``stats``,
``received``), changes settings while it runs, and stops it, closing
connections that are still open. ``beamvec emulator`` (``cli``) serves the
same from the command line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
from typing import Any

from beamvec.emulator.config import EmulatorConfig
from beamvec.emulator.handler import Server
from beamvec.emulator.state import State
from beamvec.emulator.stats import Received


class Emulator:
    """The emulator in this process, for tests: ``with Emulator(cfg) as emu: emu.url``."""

    def __init__(self, config: EmulatorConfig | None = None, **overrides: Any) -> None:
        config = config or EmulatorConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self._state = State(config)
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def config(self) -> EmulatorConfig:
        return self._state.config

    def start(self) -> Emulator:
        if self._server is not None:
            return self
        c = self._state.config
        self._server = Server((c.host, c.port), self._state)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="beamvec-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the emulator is not running; call start()")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL for ``HttpOptions(base_url=...)``."""
        return f"http://{self._state.config.host}:{self.port}"

    def received(self) -> list[Received]:
        """Every embedding and countTokens request the server parsed, oldest
        first: texts, task types and titles as sent, tokens, status."""
        with self._state.lock:
            return list(self._state.stats.log)

    def stats(self, with_texts: bool = True) -> dict[str, Any]:
        return self._state.snapshot(with_texts)

    def reset(self) -> None:
        """Forget stats and quota windows, and reseed the fault draws."""
        self._state.reset()

    def update(self, **changes: Any) -> None:
        """Change settings while running (quota, latency, fault rates, ...)."""
        self._state.update(**changes)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._state.stopping.set()  # wake hung and sleeping requests
        server.shutdown()
        server.server_close()
        with self._state.lock:
            open_connections = list(self._state.connections)
        for sock in open_connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._state.stopping = threading.Event()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
