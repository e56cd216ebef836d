"""A worker's systemic failure, carried to the driver through the output.

In-process runners re-raise a worker's exception with its chain, so the CLI
finds the ``SystemicError`` there. Multi-process and portable runners (and
Dataflow, Flink, Spark) hand the driver only text: a traceback formatted on
the worker. Rather than scrape that text, the worker writes its one-line
message to ``<output>/_failures/`` before re-raising, and the driver reads
it back when the pipeline fails. The output is the one place every worker
and the driver can reach.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fsspec

from beamvec.contract.layout import FAILURES_DIR as FAILURES_DIR
from beamvec.errors import SystemicError

LOG = logging.getLogger("beamvec")


def _dir(output_url: str, storage_options: dict[str, Any]) -> tuple[Any, str]:
    fs, root = fsspec.core.url_to_fs(output_url, **storage_options)
    return fs, f"{root.rstrip('/')}/{FAILURES_DIR}"


def record_failure(output_url: str, storage_options: dict[str, Any], message: str) -> None:
    """Write ``message`` (one line) under the output. Never raises: it runs on
    an error path, and must not hide the error it reports."""
    line = " ".join(str(message).split())[:2000]
    body = {"message": line, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    try:
        fs, folder = _dir(output_url, storage_options)
        fs.makedirs(folder, exist_ok=True)
        # Names sort by time, so the first failure is read first.
        name = f"{folder}/{time.time_ns():020d}-{uuid.uuid4().hex}.json"
        with fs.open(name, "wb") as fh:
            fh.write(json.dumps(body).encode())
    except Exception as exc:  # noqa: BLE001 - best effort; the worker's error still propagates
        # and says what is wrong (a full disk refuses this record too): no second line
        LOG.debug("could not record the failure under %s: %s", output_url, type(exc).__name__)


def read_failures(output_url: str, storage_options: dict[str, Any]) -> list[str]:
    """The recorded messages, oldest first; [] when there are none or they cannot be read."""
    try:
        fs, folder = _dir(output_url, storage_options)
        paths = sorted(p for p in fs.find(folder) if p.endswith(".json"))
    except (OSError, ValueError):
        return []
    messages = []
    for path in paths:
        try:
            with fs.open(path, "rb") as fh:
                message = json.loads(fh.read()).get("message")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(message, str) and message:
            messages.append(message)
    return messages


def clear_failures(output_url: str, storage_options: dict[str, Any]) -> None:
    """Forget earlier runs' failures (before a run starts, and after it succeeds)."""
    try:
        fs, folder = _dir(output_url, storage_options)
        if fs.exists(folder):
            fs.rm(folder, recursive=True)
    except FileNotFoundError:
        pass


@contextmanager
def systemic_failures_recorded(output_url: str, storage_options: dict[str, Any]) -> Iterator[None]:
    """Around a worker's work: a SystemicError is recorded, then re-raised."""
    try:
        yield
    except SystemicError as exc:
        record_failure(output_url, storage_options, str(exc))
        raise


def raise_recorded_failure(
    output_url: str, storage_options: dict[str, Any], cause: BaseException
) -> None:
    """On the driver, after the pipeline failed with ``cause``: raise the first
    recorded SystemicError, if a worker recorded one; else return (the caller
    re-raises ``cause``)."""
    messages = read_failures(output_url, storage_options)
    if messages:
        raise SystemicError(messages[0]) from cause
