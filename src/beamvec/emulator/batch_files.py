"""The Files API of the emulated Batch mode: resumable uploads, stored files, downloads.

Input files arrive as google-genai uploads them (``POST /upload/{v}/files``
with ``X-Goog-Upload-Protocol: resumable``: a start that announces the size,
then chunks at explicit offsets, the last one with ``finalize``); result files
are written by finished jobs and are the only ones that can be downloaded.
A missing file answers 404 to a read and 403 PERMISSION_DENIED to a delete, as
the service does. As Google's Files API states, a file is kept 48 hours
(``batch_file_ttl_s``) after it is created, then deleted: reads of it are
404 and a job created from it is refused; ``batch_clock_s`` moves the
emulator's clock forward so a test need not wait. Not thread-safe: ``BatchService`` calls it under its lock.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

from beamvec.emulator import protocol
from beamvec.emulator.batch_shapes import Answer, StoredFile, json_answer, not_found, pick


class FileStore:
    """Files by name, the upload sessions in progress, and their counters."""

    def __init__(self) -> None:
        self.files: dict[str, StoredFile] = {}
        self._uploads: dict[str, tuple[dict[str, Any], int, bytearray]] = {}
        self.ttl_s = 48 * 3600.0
        self.clock_s = 0.0
        self.reset()

    def reset(self) -> None:
        """Forget the counters (files stay)."""
        self.uploaded = 0
        self.results = 0
        self.deleted = 0
        self.expired = 0
        self.peak_bytes = self._stored_bytes()

    def _stored_bytes(self) -> int:
        return sum(len(f.data) for f in self.files.values())

    def _add(self, file: StoredFile) -> None:
        self.files[file.name] = file
        self.peak_bytes = max(self.peak_bytes, self._stored_bytes())

    def now(self) -> float:
        """The emulator's clock: the wall clock moved forward by ``batch_clock_s``."""
        return time.time() + self.clock_s

    def tick(self, ttl_s: float, clock_s: float) -> None:
        """Take the settings' lifetime and clock, and delete the files past their lifetime."""
        self.ttl_s, self.clock_s = ttl_s, clock_s
        now = self.now()
        for name in [n for n, f in self.files.items() if f.expires <= now]:
            del self.files[name]
            self.expired += 1

    def get(self, name: str) -> StoredFile | None:
        return self.files.get(name)

    def resources(self) -> list[dict[str, Any]]:
        return [f.resource() for f in self.files.values()]

    def add_result(self, name: str, data: bytes) -> None:
        """A finished job's result file (downloadable)."""
        self._add(StoredFile(name, None, "application/jsonl", data, "GENERATED", self.now(), self.ttl_s))
        self.results += 1

    def upload_start(self, path: str, headers: Mapping[str, str], body: bytes) -> Answer:
        if (headers.get("x-goog-upload-protocol") or "").lower() != "resumable" or (
            headers.get("x-goog-upload-command") or ""
        ).lower() != "start":
            raise protocol.invalid("Only resumable uploads are supported here.")
        try:
            size = int(headers.get("x-goog-upload-header-content-length") or "")
            meta = (json.loads(body or b"{}") or {}).get("file") or {}
        except (ValueError, AttributeError):
            raise protocol.invalid("Invalid upload start request.") from None
        meta["mimeType"] = (
            headers.get("x-goog-upload-header-content-type")
            or pick(meta, "mimeType", "mime_type")
            or "application/octet-stream"
        )
        upload_id = secrets.token_hex(12)
        self._uploads[upload_id] = (meta, size, bytearray())
        host = headers.get("host", "127.0.0.1")
        url = f"http://{host}{path}?upload_id={upload_id}&upload_protocol=resumable"
        return json_answer(200, {}, {"x-goog-upload-url": url, "x-goog-upload-status": "active"})

    def upload_chunk(self, upload_id: str, headers: Mapping[str, str], body: bytes) -> Answer:
        command = (headers.get("x-goog-upload-command") or "").lower()
        session = self._uploads.get(upload_id)
        if session is None:
            raise not_found("Upload session")
        meta, size, data = session
        if int(headers.get("x-goog-upload-offset") or 0) != len(data):
            raise protocol.invalid(f"Upload offset must be {len(data)}.")
        data.extend(body)
        if "finalize" not in command:
            return json_answer(200, {}, {"x-goog-upload-status": "active"})
        del self._uploads[upload_id]
        if len(data) != size:
            raise protocol.invalid(f"Uploaded {len(data)} bytes, announced {size}.")
        name = meta.get("name") or f"files/{secrets.token_hex(6)}"
        if name in self.files:
            raise protocol.ApiError(409, "ALREADY_EXISTS", f"File {name} already exists.")
        file = StoredFile(
            name,
            pick(meta, "displayName", "display_name"),
            meta["mimeType"],
            bytes(data),
            "UPLOADED",
            self.now(),
            self.ttl_s,
        )
        self._add(file)
        self.uploaded += 1
        return json_answer(200, {"file": file.resource()}, {"x-goog-upload-status": "final"})

    def answer(self, method: str, name: str, download: bool) -> Answer:
        """``GET|DELETE /{v}/files/{id}`` and ``GET …:download``."""
        file = self.files.get(name)
        if file is None:
            raise protocol.ApiError(
                403 if method == "DELETE" else 404,
                "PERMISSION_DENIED" if method == "DELETE" else "NOT_FOUND",
                f"You do not have permission to access the File {name.split('/')[1]} or it may "
                "not exist.",
            )
        if download and method == "GET":
            if file.source != "GENERATED":
                raise protocol.invalid("Only generated files can be downloaded.")
            return Answer(200, file.data, {}, "application/octet-stream")
        if method == "GET" and not download:
            return json_answer(200, file.resource())
        if method == "DELETE" and not download:
            del self.files[name]
            self.deleted += 1
            return json_answer(200, {})
        raise protocol.ApiError(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed here.")

    def stats(self) -> dict[str, Any]:
        files = list(self.files.values())
        return {
            "uploaded": self.uploaded,
            "results": self.results,
            "deleted": self.deleted,
            "expired": self.expired,
            "stored": sorted(f.name for f in files),
            "stored_bytes": sum(len(f.data) for f in files),
            "peak_stored_bytes": self.peak_bytes,
        }
