"""``OUTPUT/_lease.json``: the record of who writes an output, and the
store's atomic operations on it.

A takeover or a renewal must never overwrite a lease it did not read, so each
is conditional on the version it read:

- local disk: under an exclusive ``flock`` of the output's directory, held
  for the read, the compare and the write (and, by ``contract.fence``, for
  every fenced commit);
- S3: ``If-None-Match: *`` to create, ``If-Match: <ETag>`` to replace;
- GCS: ``ifGenerationMatch`` (0 to create, the generation read to replace);
- memory:// : a lock of this process.

Any other store gets "read, compare, write": two runs may then both go ahead
within the same second, and the second one's next check finds it lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any

from beamvec.contract.layout import LEASE
from beamvec.contract.output import Output
from beamvec.errors import SystemicError

#: A lease not renewed for this long is stale: its holder is gone.
TTL_S = 120.0
#: How long a run waits for the output's lock before saying who may hold it.
LOCK_WAIT_S = 60.0
#: Stores whose fsspec filesystem turns ``pipe_file(mode="create")`` into an
#: atomic conditional create (the store refuses it when the object exists).
ATOMIC_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "memory"})
_MEMORY_LOCK = threading.RLock()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


@dataclass(frozen=True)
class Lease:
    """Who holds an output, and until when (ISO-8601 UTC, to the second).

    ``owner`` is the run's fencing token; ``generation`` counts the
    takeovers of this output's lease (1 for a lease created on a free output)."""

    owner: str
    host: str
    pid: int
    started: str
    expires: str
    generation: int = 1

    @classmethod
    def new(cls, ttl: float = TTL_S, now: float | None = None, generation: int = 1) -> Lease:
        now = time.time() if now is None else now
        return cls(uuid.uuid4().hex, socket.gethostname(), os.getpid(), _iso(now), _iso(now + ttl),
                   generation)

    def renewed(self, ttl: float = TTL_S) -> Lease:
        return replace(self, expires=_iso(time.time() + ttl))

    def stale(self, now: float | None = None) -> bool:
        return _epoch(self.expires) <= (time.time() if now is None else now)

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, since {self.started}, generation {self.generation}"

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Lease | None:
        """None for anything that is not a lease (then it is treated as stale)."""
        try:
            data = json.loads(raw)
            lease = cls(str(data["owner"]), str(data["host"]), int(data["pid"]),
                        str(data["started"]), str(data["expires"]), int(data.get("generation", 1)))
            _epoch(lease.started), _epoch(lease.expires)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return lease


@dataclass(frozen=True)
class Read:
    """The lease as read, with the store's version of the object (ETag, GCS
    generation; None where the store has none or a lock stands for it)."""

    lease: Lease | None
    exists: bool
    version: str | None = None


def _protocols(output: Output) -> tuple[str, ...]:
    protocol = output.fs.protocol
    return protocol if isinstance(protocol, tuple) else (protocol,)


def _kind(output: Output) -> str:
    if output.renames:
        return "local"
    names = set(_protocols(output))
    if names & {"s3", "s3a"}:
        return "s3"
    if names & {"gs", "gcs"}:
        return "gcs"
    return "memory" if "memory" in names else "other"


@contextlib.contextmanager
def locked(output: Output, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Exclusive access to the output's lease among the processes of this
    host (local disk) or the threads of this process (memory://); nothing
    elsewhere, where the store's preconditions do the job."""
    kind = _kind(output)
    if kind == "memory":
        with _MEMORY_LOCK:
            yield
        return
    if kind != "local":
        yield
        return
    os.makedirs(output.root, exist_ok=True)
    fd = os.open(output.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SystemicError(
                        f"{output.url} has been locked for {wait_s:.0f} s by another "
                        "process of this host (a beamvec run paused with Ctrl-Z or SIGSTOP?); "
                        "resume or end that run and rerun"
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # releases the lock


def read(output: Output) -> Read:
    """The lease and its version: the version first, then the content, so a
    replace conditional on that version never overwrites a newer lease."""
    path = output.path(LEASE)
    with contextlib.suppress(AttributeError, TypeError):
        output.fs.invalidate_cache(path)
    kind = _kind(output)
    version = None
    try:
        if kind in ("s3", "gcs"):
            info = output.fs.info(path)
            version = str(info.get("ETag") if kind == "s3" else info.get("generation") or "") or None
        # One GET, no cached ETag: a file object would check the ETag it saw at
        # open, and the holder may rewrite the lease (renewal) in between.
        raw = output.fs.cat_file(path)
    except FileNotFoundError:
        return Read(None, False)
    return Read(Lease.decode(raw), True, version)


def create(output: Output, data: bytes, path: str | None = None) -> bool:
    """Create the lease (or ``path``) holding ``data`` unless it exists; True
    when this call created it. Atomic on local disk (under ``locked`` or not:
    a hard link of a fully written file), S3, GCS and memory://."""
    path = path or output.path(LEASE)
    if output.renames:
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
    fs = output.fs
    with contextlib.suppress(AttributeError, TypeError):
        fs.invalidate_cache(path)
    if fs.exists(path):  # also where a store would ignore the precondition
        return False
    if ATOMIC_PROTOCOLS.intersection(_protocols(output)):
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True
    fs.pipe_file(path, data)
    return True


def replace_if(output: Output, seen: Read, lease: Lease) -> bool:
    """Write ``lease`` over the one ``seen``, unless the lease changed since:
    True when written. Local disk and memory:// must be inside ``locked``."""
    path = output.path(LEASE)
    data = lease.encode()
    kind = _kind(output)
    if kind == "local":
        staged = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(staged, "wb") as fh:
            fh.write(data)
        os.replace(staged, path)
        return True
    if kind in ("s3", "gcs") and seen.version:
        try:
            _conditional_put(output, kind, path, data, seen.version)
        except OSError:
            # A refused precondition (the lease moved) or a passing fault: the
            # caller reads the lease again and decides.
            return False
        return True
    if kind != "memory" and read(output).lease != seen.lease:
        return False
    output.fs.pipe_file(path, data)
    return True


def _conditional_put(output: Output, kind: str, path: str, data: bytes, version: str) -> None:
    fs: Any = output.fs
    if kind == "s3":
        bucket, key, _ = fs.split_path(path)
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=version)
    else:  # gcsfs's own multipart upload, with the generation it read as precondition
        bucket, key, _ = fs.split_path(path)
        head = json.dumps({"name": key})
        body = (f"--==0==\nContent-Type: application/json; charset=UTF-8\n\n{head}\n--==0==\n"
                "Content-Type: application/octet-stream\n\n").encode() + data + b"\n--==0==--"
        fs.call("POST", f"{fs._location}/upload/storage/v1/b/{{}}/o", bucket, uploadType="multipart",
                ifGenerationMatch=version, data=body,
                headers={"Content-Type": 'multipart/related; boundary="==0=="'})
    fs.invalidate_cache(path)


def remove_if(output: Output, owner: str | None, seen: Lease | None = None) -> bool:
    """Remove the lease when it is still ``owner``'s (or still ``seen``, an
    unreadable one): inside ``locked``, atomic on local disk and memory://;
    elsewhere read, compare, delete."""
    now = read(output)
    if not now.exists:
        return False
    if owner is not None and (now.lease is None or now.lease.owner != owner):
        return False
    if owner is None and now.lease != seen:
        return False
    output.remove(output.path(LEASE))
    return True
