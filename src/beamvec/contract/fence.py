"""Fenced writes: a write that changes what an output means happens only
while the writing run still holds the output's lease.

A run's fencing token is its lease's ``owner``. Before each such write (a
part's commit, the manifest and its commits table, ``_SUCCESS``, pruning, a
batch journal, export state) the lease is read and compared with the token:

- on local disk under the lock that takeovers and renewals take too
  (``lease_file.locked``), so no takeover falls between the check and the
  write: a run that lost the lease cannot write at all;
- on object stores immediately before the write: the window is the one
  request between the check and the write.

A run that finds its token stale requests the process-wide STOP (it sends
nothing more) and raises ``LeaseLostError`` naming the holder: exit 1.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from beamvec.contract.lease_file import Lease, locked, read
from beamvec.contract.output import Output
from beamvec.errors import SystemicError
from beamvec.interrupt import STOP

#: STOP's reason when this run lost the output's lease.
LOST = "another run took over the output"
_HELD: dict[str, str] = {}  # output url -> the token this process holds it with
_HELD_LOCK = threading.Lock()
_SEEN: dict[str, Lease | None] = {}  # output url -> who held it when this process found it lost


class LeaseLostError(SystemicError):
    """This run's lease was taken over: it may write nothing more."""

    def __init__(self, url: str, holder: Lease | None) -> None:
        who = f"the run on {holder.describe()}" if holder else "no run: the lease was removed"
        super().__init__(
            f"another run took over {url} ({who}); this run stopped and committed nothing more "
            "after that: let that run finish, then rerun if anything is missing"
        )
        self.holder = holder


def hold_token(url: str, owner: str) -> None:
    """This process holds ``url``'s lease with ``owner``: its writes there are fenced."""
    with _HELD_LOCK:
        _HELD[url.rstrip("/")] = owner
        _SEEN.pop(url.rstrip("/"), None)


def drop_token(url: str) -> None:
    with _HELD_LOCK:
        _HELD.pop(url.rstrip("/"), None)


def token_for(url: str) -> str | None:
    with _HELD_LOCK:
        return _HELD.get(url.rstrip("/"))


def lost_to(url: str, holder: Lease | None) -> None:
    """Record who held ``url`` when this process found its lease lost (the
    first finding stands: by the time the run has stopped, that run may be done)."""
    with _HELD_LOCK:
        _SEEN.setdefault(url.rstrip("/"), holder)


def lost_error(output: Output) -> LeaseLostError:
    """The one line of a run that lost ``output``: naming who took it over."""
    with _HELD_LOCK:
        if output.url in _SEEN:
            return LeaseLostError(output.url, _SEEN[output.url])
    return LeaseLostError(output.url, read(output).lease)


def check(output: Output, owner: str) -> Lease:
    """The lease, when it is still ``owner``'s; else STOP and LeaseLostError."""
    held = read(output).lease
    if held is None or held.owner != owner:
        lost_to(output.url, held)
        STOP.request(LOST)
        raise LeaseLostError(output.url, held)
    return held


@contextlib.contextmanager
def fenced(output: Output, owner: str | None = None) -> Iterator[None]:
    """Around a write that changes what the output means: refused (module
    doc) unless ``owner`` (by default the token this process holds the
    output with) still holds the lease. Unfenced where no token is known (a
    command working on an output no run holds, a test of the contract)."""
    token = owner or token_for(output.url)
    if not token:
        yield
        return
    with locked(output):
        check(output, token)
        yield
