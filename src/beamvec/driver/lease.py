"""One writer per output, fenced: a lease object that a run creates
atomically, renews conditionally while it works, and that every write which
changes what the output means is checked against (``contract.fence``).

Two runs on one output (a cron overlap, two people) would wipe each other's
staged files, bill the same texts twice and leave a manifest naming only one
run's shards. So `beamvec run` first creates ``OUTPUT/_lease.json`` (owner,
host, pid, started, expires, generation) with a "create if absent" that the
store makes atomic, and replaces it only conditionally on the version it read
(``contract.lease_file``: a lock on local disk, ``If-Match`` on S3,
``ifGenerationMatch`` on GCS).

The holder checks the lease every ``CHECK_S`` and renews it every ``RENEW_S``
from a daemon thread, only while the run makes progress; it releases it at
the end, also on failure, Ctrl-C and SIGTERM. A run that finds its lease
taken (it was paused, or its clock ran slow) is told at once (``on_lost``):
it sends nothing more and every later commit of it is refused. A run that
made no progress for ``STALL_S`` is told to stop (``on_stall``) and renews no
more.

Taking over: a holder on this very host is judged by its process alone: a
live one (even paused, even with the lease past its expiry by a skewed clock)
is never taken over but with ``--break-lease``; a dead one (kill -9) at once.
A holder on another host is taken over once its lease expired, judged on the
reader's clock: hosts must agree on the time to well within ``TTL_S``.
Each takeover bumps the lease's generation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from typing import Any

from beamvec.contract import lease_file
from beamvec.contract.fence import LeaseLostError, drop_token, hold_token, lost_to
from beamvec.contract.layout import LEASE as LEASE
from beamvec.contract.lease_file import ATOMIC_PROTOCOLS as ATOMIC_PROTOCOLS
from beamvec.contract.lease_file import TTL_S as TTL_S
from beamvec.contract.lease_file import Lease as Lease
from beamvec.contract.lease_file import locked
from beamvec.errors import SystemicError, unwritable
from beamvec.interrupt import STOP
from beamvec.write.sink import Output

LOG = logging.getLogger("beamvec")
RENEW_S = 30.0
#: How often the holder looks whether its lease is still its own.
CHECK_S = 2.0
#: A run whose progress has not moved for this long is stuck: it loses the lease.
STALL_S = 180.0


class LeaseHeldError(SystemicError):
    """Another run holds the output's lease."""

    def __init__(self, url: str, holder: Lease) -> None:
        super().__init__(
            f"another beamvec run is writing to {url} ({holder.describe()}, lease until "
            f"{holder.expires}); wait for it to finish, or pass --break-lease if that run is dead"
        )
        self.holder = holder


def create_if_absent(output: Output, path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists (``lease_file.create``)."""
    return lease_file.create(output, data, path)


def read_lease(output: Output) -> tuple[Lease | None, bool]:
    """(the lease, whether a lease file exists at all)."""
    seen = lease_file.read(output)
    return seen.lease, seen.exists


def acquire(output: Output, break_lease: bool = False, ttl: float = TTL_S) -> Lease:
    """Take the output's lease, or raise LeaseHeldError naming its holder."""
    for _ in range(5):
        mine = Lease.new(ttl)
        try:
            with locked(output):
                taken = _try_take(output, mine, break_lease)
        except OSError as exc:
            raise unwritable(output.url, exc) from None
        if taken is not None:
            return taken
    raise SystemicError(
        f"could not take the lease {output.url}/{LEASE}: other runs keep taking it; "
        "wait for them to finish and rerun"
    )


def _try_take(output: Output, mine: Lease, break_lease: bool) -> Lease | None:
    """One attempt: our lease, or None to try again; LeaseHeldError when held."""
    if lease_file.create(output, mine.encode()):
        held = lease_file.read(output).lease
        if held is not None and held.owner == mine.owner:
            return mine
        if held is not None:  # a store that ignored the precondition: the other won
            raise LeaseHeldError(output.url, held)
        return None
    seen = lease_file.read(output)
    if not seen.exists:
        return None  # released between our create and our read: try again
    why = _why_free(seen.lease, break_lease)
    if seen.lease is not None and why is None:
        raise LeaseHeldError(output.url, seen.lease)
    if seen.lease is None:
        LOG.warning("%s/%s is not a beamvec lease; replacing it", output.url, LEASE)
    else:
        LOG.warning("taking over the lease of %s (%s): %s", output.url, seen.lease.describe(), why)
    ours = replace(mine, generation=(seen.lease.generation if seen.lease else 0) + 1)
    if not lease_file.replace_if(output, seen, ours):
        return None  # another run took it over first: look again
    held = lease_file.read(output).lease
    if held is not None and held.owner == ours.owner:
        return ours
    if held is not None:
        raise LeaseHeldError(output.url, held)
    return None


def _why_free(held: Lease | None, break_lease: bool) -> str | None:
    """Why another run's lease may be taken over, or None when it is live.
    On this host the holder's process decides, never a clock."""
    if held is None:
        return "it is unreadable"
    if held.host == socket.gethostname() and held.pid != os.getpid():
        if not _alive(held.pid):
            return f"process {held.pid} on this host is gone"
        return "--break-lease was passed" if break_lease else None
    if held.stale():
        return f"it expired at {held.expires}"
    if break_lease:
        return "--break-lease was passed"
    return None


def _alive(pid: int) -> bool:
    """Whether a process of this host still runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def release(output: Output, lease: Lease) -> None:
    """Remove our lease; never another run's."""
    try:
        with locked(output, wait_s=5.0):
            lease_file.remove_if(output, lease.owner)
    except (OSError, SystemicError) as exc:
        LOG.warning("could not release the lease %s/%s (%s); the next run takes it over "
                    "once it expires", output.url, LEASE, exc)


class _Renewer(threading.Thread):
    """Looks every ``check_every`` seconds whether the lease is still ours
    (``on_lost`` once, at once, when it is not) and renews it every ``every``
    seconds while the run makes progress: ``progress()`` returns something
    else than the time before within ``stall_s``. Past that, it calls
    ``on_stall`` once and renews no more. A renewal is conditional on the
    lease it read (``lease_file.replace_if``)."""

    def __init__(
        self, output: Output, lease: Lease, ttl: float, every: float,
        progress: Callable[[], object] | None = None, stall_s: float = STALL_S,
        on_stall: Callable[[], None] | None = None, on_lost: Callable[[], None] | None = None,
        check_every: float = CHECK_S,
    ) -> None:
        super().__init__(name="beamvec-lease", daemon=True)
        self.output = output
        self.lease = lease
        self.ttl = ttl
        self.every = every
        self.check_every = min(check_every, every)
        self.progress = progress
        self.stall_s = stall_s
        self.on_stall = on_stall
        self.on_lost = on_lost
        self.stopped = threading.Event()
        self.lost: Lease | None = None
        self.holder: Lease | None = None
        self.stalled = False

    def _moving(self, seen: object, moved: float) -> tuple[object, float]:
        """(what progress says now, when it last changed)."""
        if self.progress is None:
            return seen, time.monotonic()
        now = self.progress()
        return now, (time.monotonic() if now != seen else moved)

    def run(self) -> None:
        seen, moved = self._moving(object(), 0.0)
        renewed = time.monotonic()
        while not self.stopped.wait(self.check_every):
            seen, moved = self._moving(seen, moved)
            stalled = time.monotonic() - moved > self.stall_s
            due = not stalled and time.monotonic() - renewed >= self.every
            try:
                if not self._keep(renew=due):
                    return
            except (OSError, SystemicError) as exc:  # a passing storage fault: try again
                LOG.warning("could not renew the lease of %s: %s", self.output.url, exc)
                continue
            if due:
                renewed = time.monotonic()
            if stalled and not self.stalled:
                self.stalled = True
                LOG.debug("no progress for %.0f s: the lease of %s is no longer renewed",
                          self.stall_s, self.output.url)
                if self.on_stall is not None:
                    self.on_stall()
                return

    def _keep(self, renew: bool) -> bool:
        """Whether the lease is still ours (renewed when ``renew``); calls
        ``on_lost`` when it is not."""
        with locked(self.output):
            seen = lease_file.read(self.output)
            if seen.lease is not None and seen.lease.owner == self.lease.owner:
                if not renew:
                    return True
                fresh = self.lease.renewed(self.ttl)
                if lease_file.replace_if(self.output, seen, fresh):
                    self.lease = fresh
                    return True
                seen = lease_file.read(self.output)  # refused: moved by whom?
                if seen.lease is not None and seen.lease.owner == self.lease.owner:
                    return True  # a passing fault: renewed next time
        self.lost = self.lease
        self.holder = seen.lease
        lost_to(self.output.url, seen.lease)
        LOG.debug("the lease of %s was taken by another run (%s) while this one ran",
                  self.output.url, seen.lease.describe() if seen.lease else "removed")
        if self.on_lost is not None:
            self.on_lost()
        return False

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=30)


@contextlib.contextmanager
def hold_lease(
    output: Output, break_lease: bool = False, ttl: float = TTL_S, renew_every: float = RENEW_S,
    progress: Callable[[], object] | None = None, stall_s: float = STALL_S,
    on_stall: Callable[[], None] | None = None, on_lost: Callable[[], None] | None = None,
    check_every: float = CHECK_S,
) -> Iterator[Lease]:
    """Hold the output's lease for the ``with`` block: taken on entry (or
    LeaseHeldError), checked and renewed while ``progress()`` moves (always,
    without it), released on exit whatever happens, and on a second Ctrl-C's
    way out. While held, this process's writes to the output are fenced
    (``contract.fence``); a lease lost on the way ends in LeaseLostError."""
    existed = output.renames and os.path.isdir(output.root)
    lease = acquire(output, break_lease, ttl)
    hold_token(output.url, lease.owner)
    renewer = _Renewer(output, lease, ttl, renew_every, progress, stall_s, on_stall, on_lost,
                       check_every)
    renewer.start()
    forget = STOP.on_hard_exit(lambda: release(output, renewer.lease))
    try:
        yield lease
    finally:
        forget()
        renewer.stop()
        drop_token(output.url)
        release(output, renewer.lease)
        if output.renames and not existed:  # leave no empty directory behind a refused run
            with contextlib.suppress(OSError):
                os.rmdir(output.root)
    if renewer.lost is not None:
        raise LeaseLostError(output.url, renewer.holder)


def lease_info(output: Output) -> dict[str, Any] | None:
    """The lease as JSON for `inspect`, or None."""
    held, exists = read_lease(output)
    if not exists:
        return None
    return asdict(held) if held is not None else {"owner": "unreadable"}
