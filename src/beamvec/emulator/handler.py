"""The emulator's HTTP server: it speaks the Gemini API and Vertex AI embedding
REST protocol, with real limits, quotas, latency and injected faults.

Point google-genai at it with ``http_options=HttpOptions(base_url=emu.url)``.
Per request, in order: route (404) -> auth (Gemini: 403 missing key, 400
API_KEY_INVALID wrong key; Vertex: 401 without credentials) -> model on this
endpoint (404/400) -> strict body and limits (400) -> quota (429, metered and
hinted as the config says; countTokens is free) -> latency
-> an injected fault, or the vectors. ``GET /stats`` and ``POST /stats/reset``
report and reset what it saw; ``GET /stats/received`` lists every request it
parsed (texts, task types and titles as sent, tokens, status), as
``Emulator.received()`` does in process.

The stdlib ThreadingHTTPServer (one daemon thread per connection, HTTP/1.1
keep-alive) is enough: the work per request is small and tests need no extra
dependency.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from beamvec.emulator import protocol
from beamvec.emulator.config import EmulatorConfig
from beamvec.emulator.encode import corrupt, fill_vectors, placeholders
from beamvec.emulator.limits import apply_limits
from beamvec.emulator.state import State
from beamvec.emulator.stats import Received, content_hash
from beamvec.emulator.tokens import count_tokens
from beamvec.emulator.vectors import Item

MAX_BODY_BYTES = 64 << 20


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], state: State) -> None:
        self.state = state
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (timeout, kill -9) is normal here, not news.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self.state.lock:
            self.state.connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.state.lock:
                self.state.connections.discard(request)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes
    server_version = "beamvec-emulator"
    timeout = 120  # idle keep-alive connections end after this
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    # -- plumbing ------------------------------------------------------------

    def _send_json(
        self,
        code: int,
        body: Any,
        headers: dict[str, str] | None = None,
        vectors: list[list[float]] | None = None,
    ) -> None:
        text = json.dumps(body, allow_nan=True, separators=(",", ":"))
        if vectors is not None:
            text = fill_vectors(text, vectors)
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, error: protocol.ApiError) -> None:
        self._send_json(error.code, error.body(), error.headers)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise protocol.ApiError(
                413, "INVALID_ARGUMENT", "Request payload size exceeds the limit."
            )
        return self.rfile.read(length) if length else b""

    def _reset_connection(self) -> None:
        """Close with RST and no answer, as a dropped connection looks."""
        self.close_connection = True
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            fd = sock.detach()  # the server's own shutdown() would send a FIN first
            socket.close(fd)
        except OSError:
            pass

    # -- routes --------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        url = urlsplit(self.path)
        state = self.server.state
        if url.path == "/stats":
            with_texts = parse_qs(url.query).get("texts", ["1"])[0].lower() not in (
                "0",
                "false",
                "no",
            )
            self._send_json(200, state.snapshot(with_texts))
        elif url.path == "/stats/received":
            with state.lock:
                log = [dataclasses.asdict(r) for r in state.stats.log]
            self._send_json(200, {"received": log})
        elif self._batch("GET"):
            pass
        elif url.path in ("/", "/healthz"):
            self._send_json(200, {"ok": True})
        else:
            self._send_error(
                protocol.ApiError(
                    404, "NOT_FOUND", f"The requested URL {url.path} was not found on this server."
                )
            )

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        url = urlsplit(self.path)
        state = self.server.state
        if url.path == "/stats/reset":
            self._read_body()
            state.reset()
            self._send_json(200, {"ok": True})
            return
        try:
            body = self._read_body()
        except protocol.ApiError as exc:
            self.close_connection = True
            self._send_error(exc)
            return
        if self._batch("POST", body):
            return
        outcome = self._embed(url.path, url.query, body)
        if outcome is None:
            return
        code, payload, headers, vectors = outcome
        with state.lock:
            state.stats.answered(code)
        self._send_json(code, payload, headers, vectors)

    def _embed(self, path: str, query: str, raw: bytes) -> _Outcome | None:
        """The answer to an embedding call, or None when a fault ate it."""
        state = self.server.state
        config = state.config
        try:
            route = protocol.parse_route(path)
        except protocol.ApiError as exc:
            with state.lock:
                state.stats.arrived(time.monotonic(), "unknown")
            return exc.code, exc.body(), exc.headers, None
        with state.lock:
            state.stats.arrived(time.monotonic(), route.name)
        req: protocol.EmbedRequest | None = None
        sent: list[str] = []
        try:
            self._authorize(route, query, config)
            spec = protocol.find_model(route)
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                raise protocol.invalid("Invalid JSON payload received.") from None
            if route.method == "countTokens":
                return self._count(route, body)
            req = protocol.parse_body(route, body, spec)
            sent = [item.text for item in req.items]
            apply_limits(req, config)
            with state.lock:  # wall-clock time: fixed windows start on the minute
                ok, wait, limit = state.quota.try_acquire(time.time(), req.tokens)
                if ok:
                    state.stats.accepted(time.monotonic())
            if not ok:
                raise protocol.quota_exceeded(route.api, limit, wait, config)
        except protocol.ApiError as exc:
            self._log(route, req, sent, exc.code)
            return exc.code, exc.body(), exc.headers, None
        return self._answer(req, sent)

    def _answer(self, req: protocol.EmbedRequest, sent: list[str]) -> _Outcome | None:
        """Latency, then an injected fault or the vectors."""
        state = self.server.state
        config = state.config
        route = req.route
        fault, latency, kind = state.faults.draw(config)
        if latency and state.stopping.wait(latency):
            return None
        if fault in ("fail_500", "fail_503"):
            with state.lock:
                state.stats.fault(fault)
            error = protocol.server_error(500 if fault == "fail_500" else 503)
            self._log(route, req, sent, error.code)
            return error.code, error.body(), error.headers, None
        if fault in ("hang", "reset"):
            with state.lock:
                state.stats.fault(fault)
                state.stats.answered(fault)
            self._log(route, req, sent, fault)
            if fault == "reset":
                self._reset_connection()
                return None
            state.stopping.wait(config.hang_s)
            self.close_connection = True
            return None
        vectors = self._vectors(req)
        if fault == "malformed":
            vectors = corrupt(vectors, kind or "missing")
            with state.lock:
                state.stats.fault(f"malformed_{kind}")
        else:
            hashes = [content_hash(i.text) for i in req.items]
            with state.lock:
                state.stats.embedded(time.monotonic(), route.model, hashes, req.tokens)
        self._log(route, req, sent, 200)
        return 200, protocol.render(req, placeholders(len(vectors))), {}, vectors

    def _count(self, route: protocol.Route, body: Any) -> _Outcome:
        """Gemini API countTokens: free, and outside the embedding quota
        (the billing FAQ: token counting is not charged or metered as inference)."""
        texts = protocol.parse_count(body)
        counts = [count_tokens(t) for t in texts]
        record = Received.of(route.name, route.model, texts, [], 200)
        record = dataclasses.replace(record, tokens=tuple(counts), truncated=(False,) * len(texts))
        with self.server.state.lock:
            self.server.state.stats.received(record)
        return 200, protocol.render_count(sum(counts)), {}, None

    def _log(
        self,
        route: protocol.Route,
        req: protocol.EmbedRequest | None,
        sent: list[str],
        status: int | str,
    ) -> None:
        items = req.items if req is not None else []
        record = Received.of(route.name, route.model, sent, items, status)
        with self.server.state.lock:
            self.server.state.stats.received(record)

    def do_DELETE(self) -> None:  # noqa: N802 - stdlib name
        self._read_body()
        if not self._batch("DELETE"):
            self._send_error(protocol.ApiError(404, "NOT_FOUND", "Not found."))

    def _batch(self, method: str, body: bytes = b"") -> bool:
        """Serve a Batch API or Files API call (emulator/batch.py), if it is one."""
        state = self.server.state
        answer = state.batch.handle(method, self.path, self.headers, body, state.config)
        if answer is not None:
            self.send_response(answer.code)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(answer.body)
        return answer is not None

    def _authorize(self, route: protocol.Route, query: str, config: EmulatorConfig) -> None:
        key = self.headers.get("x-goog-api-key") or parse_qs(query).get("key", [None])[0]
        bearer = self.headers.get("Authorization", "")
        token = bearer[7:].strip() if bearer.lower().startswith("bearer ") else ""
        if route.api == "vertex" and route.project is not None and not key:
            # Project paths take OAuth tokens (ADC); we cannot verify real ones.
            if not token:
                raise protocol.missing_key("vertex")
            if config.bearer_token is not None and token != config.bearer_token:
                raise protocol.bad_token()
            return
        if config.api_key is None:
            return
        if not key:
            raise protocol.missing_key(route.api)
        if key != config.api_key:
            raise protocol.bad_key(route.api)

    def _vectors(self, req: protocol.EmbedRequest) -> list[list[float]]:
        items = [Item(i.text, i.task_type, i.title) for i in req.items]
        full = self.server.state.vectors.native(req.route.model, items)
        native = req.spec.dimension
        return [
            full[row, : (item.dimension or native)].tolist() for row, item in enumerate(req.items)
        ]


_Outcome = tuple[int, Any, dict[str, str], "list[list[float]] | None"]
