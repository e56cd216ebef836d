"""Stopping a run: on Ctrl-C, SIGTERM, a worker's fault or a stall; promptly, truthfully.

One process-wide ``STOP``. Whoever decides the run must end (the signal
handler, the driver after a failed pipeline, the lease's watchdog) requests
it; every worker thread of the process looks at it where it would start new
work (reading a record, cutting a request, sending one, retrying) and winds
down: no new request leaves, requests in flight land, shards whose every
text has landed commit, the others are aborted (their staged files removed).
The driver then waits at most ``SETTLE_S`` for the shards to settle,
``freeze``s commits (none after it: the count it prints is the truth) and
counts what is committed.

A second Ctrl-C (or SIGTERM) exits at once (``os._exit``): every commit is
atomic (a rename, or one object upload), so the output is never damaged; the
lease is released on the way out when that takes under a second, else it is
taken over by the next run (same host: its holder's pid is gone; elsewhere:
once it expires).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from beamvec.errors import Interrupted

#: Seconds the driver waits, after a stop, for shards to commit or abort.
SETTLE_S = 5.0
#: Seconds a second press waits for the lease to be released before exiting.
HARD_EXIT_RELEASE_S = 1.0
SIGNAL_NAMES = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


class Terminated(Interrupted):
    """SIGTERM during a run (exit 143); otherwise as Ctrl-C."""


class Stop:
    """Whether this process's run is stopping, and why; who is still working."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._cond = threading.Condition()
        self._active = 0  # shards between start and commit or abort
        self._frozen = False
        self.reason = ""
        self.signum: int | None = None
        self._on_hard_exit: list[Callable[[], None]] = []

    def reset(self) -> None:
        """A new run in this process (tests run several)."""
        with self._cond:
            self._event.clear()
            self._frozen = False
            self.reason = ""
            self.signum = None

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, reason: str, signum: int | None = None) -> None:
        """Stop taking new work; the first reason is kept."""
        with self._cond:
            if not self._event.is_set():
                self.reason, self.signum = reason, signum
            self._event.set()
            self._cond.notify_all()

    def check(self) -> None:
        """Raise ``Interrupted`` when the run is stopping (where new work would start)."""
        if self._event.is_set():
            raise Interrupted(f"the run is stopping ({self.reason})")

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking when a stop is requested; True if it was."""
        return self._event.wait(seconds)

    # -- shards --------------------------------------------------------------------

    @contextlib.contextmanager
    def shard(self) -> Iterator[None]:
        """Around one shard's work: the driver's ``settle`` waits for it."""
        with self._cond:
            self._active += 1
        with self._counted():
            yield

    @contextlib.contextmanager
    def committing(self) -> Iterator[None]:
        """Around a shard's commit: none starts after ``freeze``."""
        with self._cond:
            if self._frozen:
                raise Interrupted("the run stopped before this shard was committed")
            self._active += 1  # counted again: freeze waits for the commit to end
        with self._counted():
            yield

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        """Work counted in ``_active`` (by the caller): uncounted when it ends."""
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def settle(self, timeout: float = SETTLE_S) -> bool:
        """Wait until no shard works (True) or ``timeout`` passes; then no commit starts."""
        with self._cond:
            settled = self._cond.wait_for(lambda: self._active == 0, timeout)
            self._frozen = True
            return settled

    # -- second press ----------------------------------------------------------------

    def on_hard_exit(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` (briefly, best effort) before a second press exits;
        returns what removes it."""
        self._on_hard_exit.append(callback)
        return lambda: self._on_hard_exit.remove(callback) if callback in self._on_hard_exit else None

    def hard_exit(self, code: int) -> None:
        for callback in list(self._on_hard_exit):
            thread = threading.Thread(target=callback, daemon=True)
            thread.start()
            thread.join(HARD_EXIT_RELEASE_S)
        with contextlib.suppress(Exception):
            sys.stderr.flush()
            sys.stdout.flush()
        os._exit(code)


STOP = Stop()


def _on_signal(signum: int, frame: object) -> None:
    what = SIGNAL_NAMES.get(signum, "interrupted")
    if STOP.requested and STOP.signum is not None:
        print(f"beamvec run: {what} again; exiting now. Committed shards stay committed; "
              "rerun the same command to embed the rest", file=sys.stderr)
        STOP.hard_exit(128 + signum)
    STOP.request(what, signum)
    raise (Terminated if signum == signal.SIGTERM else Interrupted)()


@contextlib.contextmanager
def signals_handled() -> Iterator[None]:
    """Ctrl-C and SIGTERM stop the run (first) or exit at once (second);
    only in the main thread, where Python delivers signals."""
    STOP.reset()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _on_signal) for sig in SIGNAL_NAMES}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
