"""google-genai's Files and Batches services, as one small client for batch embedding.

``client.files.upload`` (resumable), ``client.batches.create_embeddings``
(REST ``models/{m}:asyncBatchEmbedContent``; experimental in the SDK),
``client.batches.get``, ``client.files.download`` (streamed to disk),
``client.batches.delete`` and ``client.files.delete``. Errors are read by
``google_errors`` as for online calls, and calls retried by the same
``RetryPolicy`` (transient: 408, 409, 425, 429, 5xx but 501, timeouts, broken
connections; the server's hint honoured; ``RetriesExhausted`` when it
persists). Job creation backs off on 429 (too many concurrent jobs) and,
before each retry, looks the job up by display name so a create whose answer
was lost is never made twice. Bad credentials become one-line
``SystemicError``s; the API key never reaches a message.
"""

from __future__ import annotations

import inspect
import io
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from beamvec.backends import genai_auth
from beamvec.backends.google_errors import from_exception, scrub
from beamvec.batchapi.journal import BatchJob
from beamvec.errors import BackendError, ErrorKind, SystemicError
from beamvec.retry import RetryPolicy

T = TypeVar("T")
MIME_TYPE = "jsonl"  # what Google's Batch API guide passes to files.upload
#: A job's calls: longer waits than an online batch's (the concurrency cap frees
#: as jobs finish, in minutes), and no worker held meanwhile.
BATCH_RETRY = RetryPolicy(max_attempts=8, base_delay=2.0, max_delay=120.0, deadline=900.0)


@dataclass(frozen=True)
class JobStatus:
    """What the service says of a job now."""

    name: str
    state: str  # PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, EXPIRED, or MISSING
    result_file: str | None = None
    display_name: str | None = None
    error: str | None = None


def _state(job: Any) -> str:
    state = getattr(job, "state", None)
    value = getattr(state, "value", state) or "UNSPECIFIED"
    return str(value).removeprefix("JOB_STATE_")


def _status(job: Any, secret: str | None = None) -> JobStatus:
    dest = getattr(job, "dest", None)
    error = getattr(job, "error", None)
    message = getattr(error, "message", None) if error else None
    return JobStatus(
        name=str(job.name),
        state=_state(job),
        result_file=getattr(dest, "file_name", None),
        display_name=getattr(job, "display_name", None),
        error=scrub(str(message), secret) if message else None,  # Google's text: no key in it
    )


def _streams(download: Callable[..., Any]) -> bool:
    """Whether ``files.download`` writes to a ``destination`` in chunks."""
    try:
        return "destination" in inspect.signature(download).parameters
    except (TypeError, ValueError):  # pragma: no cover - a builtin or a mock
        return False


class BatchClient:
    """The few Files and Batches calls a batch backfill needs, with backoff."""

    def __init__(
        self,
        client: Any,
        model: str,
        *,
        retry: RetryPolicy = BATCH_RETRY,
        sleep: Callable[[float], None] = time.sleep,
        secret: str | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        self._client = client
        self._secret = secret  # the API key, masked in every message the service sends back
        self.model = model
        self._retry = retry
        self._sleep = sleep
        self._timeout_s = timeout_s  # named in a timeout's message
        self.create_429s = 0  # creations the service refused for now (concurrency cap)

    @classmethod
    def connect(
        cls,
        api_key: str,
        model: str,
        base_url: str | None = None,
        api_version: str | None = None,
        timeout_s: float = 120.0,
        **kwargs: Any,
    ) -> BatchClient:
        """A client on the Gemini Developer API (Batch mode has no Vertex form here)."""
        try:
            from google import genai
        except ImportError as exc:
            raise SystemicError(
                "--batch-api needs google-genai; install it with `pip install 'beamvec[genai]'`"
            ) from exc
        client = genai_auth.key_client(
            genai, api_key, vertex=False, api_version=api_version, base_url=base_url, timeout_s=timeout_s
        )
        return cls(client, model, secret=api_key, timeout_s=timeout_s, **kwargs)

    # -- errors and retries --------------------------------------------------

    def _mapped(self, exc: BaseException, what: str) -> BaseException:
        """``exc`` as google_errors reads it (kind, status, hint), except that
        a refused key stops the run, and a 403 or 404 alone means "no such
        file or job" here: the caller decides, so it is not systemic."""
        mapped = from_exception(exc, f"batch {what}", self._timeout_s, self._clean)
        if mapped is None:
            return exc
        message = str(mapped)
        if mapped.status == 401 or (
            mapped.status in (400, 403) and ("API key" in message or "unregistered" in message)
        ):
            return SystemicError(
                f"gemini batch {what}: the API key was refused ({mapped.status}); "
                "set GEMINI_API_KEY or --api-key-file to a key of a project with the Gemini API"
            )
        if mapped.kind is ErrorKind.SYSTEMIC and mapped.status is None:  # a bad URL
            return SystemicError(f"{message}; check --api-base-url")
        if mapped.kind is ErrorKind.SYSTEMIC:
            mapped.kind = ErrorKind.BAD_INPUT
        return mapped

    def _clean(self, text: str) -> str:
        return scrub(text, self._secret)

    def _call(
        self, what: str, fn: Callable[[], T], before_retry: Callable[[], T | None] | None = None
    ) -> T:
        """``fn()`` under the retry policy; ``before_retry`` may answer instead
        of a retry (a create that did happen)."""

        def attempt() -> T:
            try:
                return fn()
            except Exception as exc:
                mapped = self._mapped(exc, what)
                if isinstance(mapped, BackendError) and mapped.status == 429 and what == "create":
                    self.create_429s += 1
                if mapped is exc:
                    raise
                raise mapped from None

        return self._retry.call(attempt, sleep=self._sleep, recover=before_retry)

    # -- files ---------------------------------------------------------------

    def upload(self, data: bytes | BinaryIO, display_name: str) -> str:
        """Upload a JSONL input file (bytes, or a file read from its start, in
        the SDK's chunks); its name (``files/...``)."""
        config = {"mime_type": MIME_TYPE, "display_name": display_name}
        stream = io.BytesIO(data) if isinstance(data, bytes) else data

        def upload() -> Any:
            stream.seek(0)
            return self._client.files.upload(file=stream, config=config)

        file = self._call("upload", upload, lambda: self.find_file(display_name))
        return file if isinstance(file, str) else str(file.name)

    def download(self, file_name: str) -> BinaryIO:
        """A result file, streamed in chunks to a temporary file on disk (read
        from its start; closing it removes it): a result file of 3,072-dim
        vectors is GBs and is never held in memory. SDKs before ``destination=``
        hand over bytes, which are written out at once."""
        spool = tempfile.TemporaryFile(prefix="beamvec-batch-")  # noqa: SIM115 - the caller closes it

        def fetch() -> BinaryIO:
            spool.seek(0)
            spool.truncate()
            if _streams(self._client.files.download):
                self._client.files.download(file=file_name, destination=spool)
            else:
                spool.write(self._client.files.download(file=file_name))
            spool.seek(0)
            return spool

        try:
            return self._call("download", fetch)
        except BaseException:
            spool.close()
            raise

    def file_exists(self, file_name: str) -> bool:
        try:
            self._call("get file", lambda: self._client.files.get(name=file_name))
        except BackendError as exc:
            if exc.status in (403, 404):
                return False
            raise
        return True

    def find_file(self, display_name: str) -> str | None:
        for file in self._call("list files", lambda: list(self._client.files.list())):
            if getattr(file, "display_name", None) == display_name:
                return str(file.name)
        return None

    def delete_file(self, file_name: str) -> None:
        """Delete a file; one already gone (deleted, or expired after 48 h) is fine."""
        self._gone_ok("delete file", lambda: self._client.files.delete(name=file_name))

    # -- jobs ----------------------------------------------------------------

    def create(self, input_file: str, display_name: str) -> JobStatus:
        """Create an embedding batch job over an uploaded file, backing off on 429."""

        def create() -> JobStatus:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning, once per job
                job = self._client.batches.create_embeddings(
                    model=self.model,
                    src={"file_name": input_file},
                    config={"display_name": display_name},
                )
            return _status(job, self._secret)

        return self._call("create", create, lambda: self.find_job(display_name))

    def get(self, name: str) -> JobStatus:
        try:
            return self._call("get", lambda: _status(self._client.batches.get(name=name), self._secret))
        except BackendError as exc:
            if exc.status == 404:
                return JobStatus(name, "MISSING", error="the service no longer knows this job")
            raise

    def find_job(self, display_name: str) -> JobStatus | None:
        """The job created under ``display_name``, if the service has one."""
        jobs = self._call(
            "list jobs", lambda: list(self._client.batches.list(config={"page_size": 100}))
        )
        for job in jobs:
            if getattr(job, "display_name", None) == display_name:
                return _status(job, self._secret)
        return None

    def delete_job(self, name: str) -> None:
        self._gone_ok("delete job", lambda: self._client.batches.delete(name=name))

    def cleanup(self, job: BatchJob) -> None:
        """Delete a job's input file, result file and the job itself from the service
        (files count against the project's 20 GB); call once its shards are committed."""
        for file_name in (job.input_file, job.result_file):
            if file_name:
                self.delete_file(file_name)
        if job.name:
            self.delete_job(job.name)

    def _gone_ok(self, what: str, fn: Callable[[], Any]) -> None:
        try:
            self._call(what, fn)
        except BackendError as exc:
            if exc.status not in (403, 404):
                raise
