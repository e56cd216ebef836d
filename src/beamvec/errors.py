"""What can go wrong, and who decides what it means: the bottom of the import graph.

Three kinds of error reach the user, each with one exit code (README):

- ``UsageError`` (exit 2): something the user asked for is wrong; one line
  that names the flag or file and says what to do.
- ``SystemicError`` (exit 1): a fault no retry or dead letter can fix: bad
  credentials, unknown model, unwritable output. The run stops.
- ``BackendError``: one call to an embedding backend failed. The backend,
  which understands its API's errors, says what *kind* of failure it is
  (``ErrorKind``); retry, bisection, the embedder, the preflight and the CLI
  read that kind and never look at statuses or messages themselves.

This module imports nothing from beamvec, so every other module may import it.
"""

from __future__ import annotations

import enum
import errno
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit


def reason_of(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has
    none): the part of a library's error that fits in our one-line messages."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """``url`` without its secrets: the password of its userinfo and every
    query value (signed URLs and ``?token=``) become ``***``. Inputs are
    recorded (manifest, ``source_shard``, messages) only this way."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc and not parts.query:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
    query = "&".join(
        f"{pair.split('=', 1)[0]}=***" if "=" in pair else pair for pair in parts.query.split("&")
    ) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_urls(text: str) -> str:
    """Every URL in ``text`` through ``redact_url`` (for messages)."""
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def unwritable(where: str, exc: BaseException, what: str = "") -> SystemicError:
    """The one line a write that the store refused ends the run in: a full
    disk, a denied grant, a store answering 503 after every retry."""
    target = f"{what} to {where}" if what else f"to the output {where}"
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some space"
    else:
        advice = ("check that the bucket exists and that the credentials in the environment "
                  "may create and delete objects in it")
    return SystemicError(f"cannot write {target}: {reason_of(exc)}; {advice}"
                         + ("; committed shards stay committed: rerun the same command" if what else ""))


class ErrorKind(enum.Enum):
    """What a failed backend call means for the request that caused it."""

    TRANSIENT = "transient"  # the same request may succeed later: retry with backoff
    BAD_INPUT = "bad_input"  # this request's texts are refused: bisect, dead-letter the culprits
    SYSTEMIC = "systemic"  # no request will succeed: stop the run


class UsageError(Exception):
    """A problem with what the user asked for: one line, and what to do next."""


class NoInputError(UsageError):
    """An input pattern matched no file: almost always a typo or a missing grant."""


class SystemicError(Exception):
    """A fault no retry or dead letter can fix. The run stops with this message."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, with one line saying what stays committed (exit 130)."""


class InputAccessError(PermissionError):
    """An input could not be listed: wrong credentials or a missing grant."""


class InputVanishedError(FileNotFoundError):
    """An input listed at the start of the run no longer exists when read.

    The message is one line naming the file. A FileNotFoundError, so code that
    treats a missing file as a transport fault (fail the shard, never commit it
    half read) keeps doing so; the worker core turns it into a failed shard.
    """

    def __init__(self, path: str) -> None:
        super().__init__(
            f"input {path} no longer exists (it was listed when the run started); "
            "restore it, or rerun so that the listing no longer includes it"
        )
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path,))


class BackendError(Exception):
    """One backend call failed.

    ``kind`` is decided by the backend where the error is understood;
    ``status`` is the HTTP-like status when there is one (for counting and
    messages only); ``retry_after`` is the server's hint in seconds;
    ``throttled`` says the server refused for rate (a quota 429), so a limiter
    should slow down; ``quota`` which of its limits it hit ("requests",
    "tokens", None: not said), and ``hint_floor`` that ``retry_after`` was
    rounded down to whole seconds (the wait is at least that, less than a
    second more). Messages must never carry secrets.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        status: int | None = None,
        retry_after: float | None = None,
        throttled: bool = False,
        quota: str | None = None,
        hint_floor: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.throttled = throttled
        self.quota = quota
        self.hint_floor = hint_floor

    @property
    def retryable(self) -> bool:
        return self.kind is ErrorKind.TRANSIENT

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields: rebuild through a helper so it survives pickling
        # (Beam ships worker errors back to the driver pickled).
        return (
            _rebuild_backend_error,
            (str(self), self.kind.value, self.status, self.retry_after, self.throttled, self.quota,
             self.hint_floor),
        )


def _rebuild_backend_error(
    message: str, kind: str, status: int | None, retry_after: float | None, throttled: bool = False,
    quota: str | None = None, hint_floor: bool = False,
) -> BackendError:
    return BackendError(
        message, kind=ErrorKind(kind), status=status, retry_after=retry_after, throttled=throttled,
        quota=quota, hint_floor=hint_floor,
    )
