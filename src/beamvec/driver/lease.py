"""One writer per output: a lease object that a run creates atomically and
renews while it works.

Two runs on one output (a cron overlap, two people) would wipe each other's
staged files, bill the same texts twice and leave a manifest naming only one
run's shards. So `beamvec run` first creates ``OUTPUT/_lease.json``
(owner, host, pid, started, expires) with a "create if absent" that the store
makes atomic:

- local disk: a hard link of a fully written file (fails if the name exists),
  or an exclusive create (``open(path, "xb")``) where links are refused;
- S3 (s3fs): a conditional PUT, ``If-None-Match: *``;
- GCS (gcsfs): ``ifGenerationMatch=0``;
- memory:// : an exclusive create in the process.

Every store is looked at first (one request), and the lease read back after
the create. Elsewhere (any other fsspec store) that "look, write, read back"
is all there is: two runs starting within the same second may both go ahead,
as they may on an S3-compatible store or a GCS emulator that ignores the
precondition (gcp-storage-emulator does); the first one's renewal then finds
the lease taken and the run ends in an error that says so. The
holder renews the lease from a daemon thread (read, compare the owner, write)
only while the run makes progress, and releases it at the end, also on
failure, Ctrl-C and SIGTERM. A run that made no progress for ``STALL_S`` is
told to stop (``on_stall``) and renews no more: if it cannot even stop, the
lease expires ``TTL_S`` later and the next run takes it over. A lease past its
expiry (its holder died without releasing it), or one whose holder process
on this very host is gone (kill -9), is taken over with a warning;
``--break-lease`` takes over a live-looking one (its holder is known dead).
Expiry is judged on the reader's clock: hosts must agree on the time to well
within the lease's two minutes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from beamvec.contract.layout import LEASE as LEASE
from beamvec.errors import SystemicError, unwritable
from beamvec.interrupt import STOP
from beamvec.write.sink import Output

LOG = logging.getLogger("beamvec")
#: A lease not renewed for this long is stale: its holder is gone.
TTL_S = 120.0
RENEW_S = 30.0
#: A run whose progress has not moved for this long is stuck: it loses the lease.
STALL_S = 180.0
#: Stores whose fsspec filesystem turns ``pipe_file(mode="create")`` into an
#: atomic conditional create (the store refuses it when the object exists).
ATOMIC_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "memory"})


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


@dataclass(frozen=True)
class Lease:
    """Who holds an output, and until when (ISO-8601 UTC, to the second)."""

    owner: str
    host: str
    pid: int
    started: str
    expires: str

    @classmethod
    def new(cls, ttl: float = TTL_S, now: float | None = None) -> Lease:
        now = time.time() if now is None else now
        return cls(uuid.uuid4().hex, socket.gethostname(), os.getpid(), _iso(now), _iso(now + ttl))

    def renewed(self, ttl: float = TTL_S) -> Lease:
        return Lease(self.owner, self.host, self.pid, self.started, _iso(time.time() + ttl))

    def stale(self, now: float | None = None) -> bool:
        return _epoch(self.expires) <= (time.time() if now is None else now)

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, since {self.started}"

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Lease | None:
        """None for anything that is not a lease (then it is treated as stale)."""
        try:
            data = json.loads(raw)
            lease = cls(str(data["owner"]), str(data["host"]), int(data["pid"]),
                        str(data["started"]), str(data["expires"]))
            _epoch(lease.started), _epoch(lease.expires)
        except (ValueError, KeyError, TypeError):
            return None
        return lease


class LeaseHeldError(SystemicError):
    """Another run holds the output's lease."""

    def __init__(self, url: str, holder: Lease) -> None:
        super().__init__(
            f"another beamvec run is writing to {url} ({holder.describe()}, lease until "
            f"{holder.expires}); wait for it to finish, or pass --break-lease if that run is dead"
        )
        self.holder = holder


def create_if_absent(output: Output, path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists; True when this call
    created it. Atomic on local disk, S3, GCS and memory:// (module doc)."""
    fs = output.fs
    if output.renames:  # local disk
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        staged = os.path.join(folder, f".{uuid.uuid4().hex}.lease")
        with open(staged, "wb") as fh:
            fh.write(data)
        try:
            os.link(staged, path)  # atomic, and never shows a half-written file
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links
            try:
                with open(path, "xb") as fh:
                    fh.write(data)
                return True
            except FileExistsError:
                return False
        finally:
            os.remove(staged)
    with contextlib.suppress(AttributeError, TypeError):
        fs.invalidate_cache(path)
    if fs.exists(path):  # also where a store would ignore the precondition
        return False
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if ATOMIC_PROTOCOLS.intersection(protocols):
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True
    fs.pipe_file(path, data)
    return True


def read_lease(output: Output) -> tuple[Lease | None, bool]:
    """(the lease, whether a lease file exists at all)."""
    path = output.path(LEASE)
    with contextlib.suppress(AttributeError, TypeError):
        output.fs.invalidate_cache(path)
    try:
        # One GET, no cached ETag: a file object would check the ETag it saw at
        # open, and the holder may rewrite the lease (renewal) in between.
        raw = output.fs.cat_file(path)
    except FileNotFoundError:
        return None, False
    return Lease.decode(raw), True


def _write(output: Output, lease: Lease) -> None:
    """Overwrite the lease (renewal): atomic replace on local disk."""
    path = output.path(LEASE)
    if output.renames:
        staged = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(staged, "wb") as fh:
            fh.write(lease.encode())
        os.replace(staged, path)
    else:
        output.fs.pipe_file(path, lease.encode())


def acquire(output: Output, break_lease: bool = False, ttl: float = TTL_S) -> Lease:
    """Take the output's lease, or raise LeaseHeldError naming its holder."""
    for _ in range(5):
        mine = Lease.new(ttl)
        try:
            created = create_if_absent(output, output.path(LEASE), mine.encode())
        except OSError as exc:
            raise unwritable(output.url, exc) from None
        held, exists = read_lease(output)
        if created:
            if held is not None and held.owner == mine.owner:
                return mine
            if held is not None:  # a store that ignored the precondition: the other won
                raise LeaseHeldError(output.url, held)
            continue
        if not exists:
            continue  # released between our create and our read: try again
        why = _why_free(held, break_lease)
        if held is not None and why is None:
            raise LeaseHeldError(output.url, held)
        if held is None:
            LOG.warning("%s/%s is not a beamvec lease; replacing it", output.url, LEASE)
        else:
            LOG.warning("taking over the lease of %s (%s): %s", output.url, held.describe(), why)
        _remove_if(output, held)
    raise SystemicError(
        f"could not take the lease {output.url}/{LEASE}: other runs keep taking it; "
        "wait for them to finish and rerun"
    )


def _why_free(held: Lease | None, break_lease: bool) -> str | None:
    """Why another run's lease may be taken over, or None when it is live."""
    if held is None:
        return "it is unreadable"
    if held.stale():
        return f"it expired at {held.expires}"
    if held.host == socket.gethostname() and held.pid != os.getpid() and not _alive(held.pid):
        return f"process {held.pid} on this host is gone"
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


def _remove_if(output: Output, expected: Lease | None) -> bool:
    """Remove the lease when it is still ``expected`` (read, compare, delete:
    two runs taking over one stale lease at once race here, narrowly)."""
    held, exists = read_lease(output)
    if not exists or held != expected:
        return False
    output.remove(output.path(LEASE))
    return True


def release(output: Output, lease: Lease) -> None:
    """Remove our lease; never another run's."""
    try:
        held, _ = read_lease(output)
        if held is not None and held.owner == lease.owner:
            output.remove(output.path(LEASE))
    except OSError as exc:
        LOG.warning("could not release the lease %s/%s (%s); the next run takes it over "
                    "once it expires", output.url, LEASE, exc)


class _Renewer(threading.Thread):
    """Rewrites ``expires`` every ``every`` seconds while the run makes
    progress: ``progress()`` returns something else than the time before
    within ``stall_s``. Past that, it calls ``on_stall`` once and renews no more."""

    def __init__(
        self, output: Output, lease: Lease, ttl: float, every: float,
        progress: Callable[[], object] | None = None, stall_s: float = STALL_S,
        on_stall: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name="beamvec-lease", daemon=True)
        self.output = output
        self.lease = lease
        self.ttl = ttl
        self.every = every
        self.progress = progress
        self.stall_s = stall_s
        self.on_stall = on_stall
        self.stopped = threading.Event()
        self.lost: Lease | None = None
        self.stalled = False

    def _moving(self, seen: object, moved: float) -> tuple[object, float]:
        """(what progress says now, when it last changed)."""
        if self.progress is None:
            return seen, time.monotonic()
        now = self.progress()
        return now, (time.monotonic() if now != seen else moved)

    def run(self) -> None:
        seen, moved = self._moving(object(), 0.0)
        while not self.stopped.wait(self.every):
            seen, moved = self._moving(seen, moved)
            if time.monotonic() - moved > self.stall_s:
                self.stalled = True
                LOG.debug("no progress for %.0f s: the lease of %s is no longer renewed",
                          self.stall_s, self.output.url)
                if self.on_stall is not None:
                    self.on_stall()
                return
            try:
                held, _ = read_lease(self.output)
                if held is None or held.owner != self.lease.owner:
                    self.lost = held or self.lease
                    LOG.error("the lease of %s was taken by another run (%s) while this one "
                              "ran", self.output.url, held.describe() if held else "removed")
                    return
                self.lease = self.lease.renewed(self.ttl)
                _write(self.output, self.lease)
            except OSError as exc:  # a passing storage fault: try again next time
                LOG.warning("could not renew the lease of %s: %s", self.output.url, exc)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=30)


@contextlib.contextmanager
def hold_lease(
    output: Output, break_lease: bool = False, ttl: float = TTL_S, renew_every: float = RENEW_S,
    progress: Callable[[], object] | None = None, stall_s: float = STALL_S,
    on_stall: Callable[[], None] | None = None,
) -> Iterator[Lease]:
    """Hold the output's lease for the ``with`` block: taken on entry (or
    LeaseHeldError), renewed while ``progress()`` moves (always, without it),
    released on exit whatever happens, and on a second Ctrl-C's way out."""
    existed = output.renames and os.path.isdir(output.root)
    lease = acquire(output, break_lease, ttl)
    renewer = _Renewer(output, lease, ttl, renew_every, progress, stall_s, on_stall)
    renewer.start()
    forget = STOP.on_hard_exit(lambda: release(output, renewer.lease))
    try:
        yield lease
    finally:
        forget()
        renewer.stop()
        release(output, renewer.lease)
        if output.renames and not existed:  # leave no empty directory behind a refused run
            with contextlib.suppress(OSError):
                os.rmdir(output.root)
    if renewer.lost is not None:
        raise SystemicError(
            f"another run took over the lease of {output.url} while this one ran; run "
            f"`beamvec verify {output.url}` and rerun to repair what the two runs wrote"
        )


def lease_info(output: Output) -> dict[str, Any] | None:
    """The lease as JSON for `inspect`, or None."""
    held, exists = read_lease(output)
    if not exists:
        return None
    return asdict(held) if held is not None else {"owner": "unreadable"}
