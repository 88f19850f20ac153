"""The HTTP side of :class:`~dspydantic.testing.FakeLLMServer`: a threaded ``http.server`` on ``127.0.0.1``
(Nagle off) speaking the chat-completions, models, Files and Batches endpoints; the answers come from its
:class:`~dspydantic.testing._script.Script`."""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from ._script import (
    _CHAT_PATHS,
    _MODELS_PATHS,
    Fault,
    RecordedRequest,
    Reply,
    Script,
    _content_text,
    _error_body,
    _Headers,
)

log = logging.getLogger("dspydantic.testing")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: FakeLLMServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints every handler exception to stderr. A client that went away mid-request (a reset
        # or a broken pipe: tests of timeouts, cancellations and dropped connections do that on purpose) is
        # normal here; anything else goes to the log, where a test run shows it only when that test fails
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            return
        log.warning("FakeLLMServer: error handling a request from %s", client_address, exc_info=True)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), which may do a slow reverse DNS lookup.
        # socketserver.TCPServer.server_bind is called explicitly to skip that.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "dspydantic-fake-llm/1"
    sys_version = ""
    server: _HTTPServer

    # ------------------------------------------------------------------ plumbing
    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # silent: never log requests (they may contain credentials)

    def _send(
        self,
        status: int,
        payload: bytes,
        content_type: str = "application/json",
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Status"
        lines = [
            f"HTTP/1.1 {status} {reason}",
            f"Server: {self.server_version}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(payload)}",
            "Connection: close" if self.close_connection else "Connection: keep-alive",
        ]
        if extra_headers:
            lines.extend(f"{k}: {v}" for k, v in extra_headers.items())
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # the request stops counting as in flight before its answer leaves: a client that has read the
        # answer then never sees it still counted (max_in_flight / in_flight are race-free for tests)
        self._finish_request()
        try:
            self.wfile.write(head + payload)
        except OSError:
            self.close_connection = True

    def _send_json(self, status: int, obj: Any, extra_headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), extra_headers=extra_headers)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until an empty line
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def _record(self, path: str, body: dict[str, Any]) -> None:
        self.server.owner._record(
            RecordedRequest(
                path=path,
                body=body,
                headers=_Headers(self.headers.items()),
                received_at=time.time(),
                method=self.command,
            )
        )

    # ------------------------------------------------------------------ methods
    def _start_request(self) -> None:
        self._in_flight_counted = True
        self.server.owner._enter()

    def _finish_request(self) -> None:
        if getattr(self, "_in_flight_counted", False):
            self._in_flight_counted = False
            self.server.owner._leave()

    def do_GET(self) -> None:
        owner = self.server.owner
        self._start_request()
        try:
            path = self._path()
            if owner.batches.handles(path):  # the Files and Batches APIs (testing_batches.py)
                self._batch_api(owner, path, b"")
                return
            self._record(path, {})
            if path in _MODELS_PATHS:
                self._send_json(
                    200,
                    {
                        "object": "list",
                        "data": [
                            {"id": owner.model_name, "object": "model", "created": 0, "owned_by": "fake"}
                        ],
                    },
                )
            else:
                self._send_json(404, _error_body(404, f"Unknown path: GET {path}"))
        finally:
            self._finish_request()

    def do_POST(self) -> None:
        owner = self.server.owner
        self._start_request()
        try:
            self._handle_post(owner)
        finally:
            self._finish_request()

    def _handle_post(self, owner: FakeLLMServer) -> None:
        try:
            raw = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        path = self._path()
        if owner.batches.handles(path):  # the Files and Batches APIs (testing_batches.py)
            self._batch_api(owner, path, raw)
            return
        try:
            decoded = json.loads(raw) if raw else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            decoded = None
        body: dict[str, Any] = decoded if isinstance(decoded, dict) else {}
        self._record(path, body)
        if path not in _CHAT_PATHS:
            self._send_json(404, _error_body(404, f"Unknown path: POST {path}"))
            return
        if not isinstance(decoded, dict):
            self._send_json(400, _error_body(400, "Request body is not a JSON object"))
            return

        spec = owner._next_spec(body)
        delay = spec.delay if spec.delay is not None else owner.latency
        if delay and delay > 0:
            time.sleep(delay)

        if isinstance(spec, Fault):
            self._send_fault(spec)
            return
        if spec.status >= 400:
            self._send_json(spec.status, _error_body(spec.status, _content_text(spec.content)))
            return
        if body.get("stream"):
            self._send_stream(owner, body, spec)
        else:
            self._send_json(spec.status, owner._completion(body, spec))

    def _batch_api(self, owner: FakeLLMServer, path: str, raw: bytes) -> None:
        status, payload, content_type, recorded = owner.batches.handle(
            self.command, path, self.headers.get("Content-Type", ""), raw
        )
        self._record(path, recorded)
        self._send(status, payload, content_type=content_type)

    def _send_fault(self, fault: Fault) -> None:
        if fault.drop_connection:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if isinstance(fault.body, dict):
            payload: Any = fault.body
        else:
            message = fault.body if fault.body is not None else f"Fake server error (status {fault.status})"
            payload = _error_body(fault.status, message)
        self._send_json(fault.status, payload, extra_headers=fault.headers)

    def _send_stream(self, owner: FakeLLMServer, body: dict[str, Any], spec: Reply) -> None:
        full = owner._completion(body, spec)
        choice = full["choices"][0]
        base = {
            "id": full["id"],
            "object": "chat.completion.chunk",
            "created": full["created"],
            "model": full["model"],
        }
        events = [
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": choice["message"]["content"]},
                        "finish_reason": None,
                    }
                ],
            },
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]},
        ]
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            events.append({**base, "choices": [], "usage": full["usage"]})
        text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        self._send(200, text.encode("utf-8"), content_type="text/event-stream")

class FakeLLMServer(Script):
    """A scriptable OpenAI-compatible server on ``127.0.0.1`` (see :mod:`dspydantic.testing`).

    ``latency`` (seconds) is slept before every answer unless the answer carries its own ``delay``;
    it can be changed at any time through the ``latency`` attribute.
    """

    def __init__(self, latency: float = 0.0, port: int = 0, *, model_name: str = "fake-model") -> None:
        super().__init__(model_name=model_name)
        self.latency = latency
        self._port = port
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        from ..testing_batches import FakeBatchAPI

        #: the OpenAI Files and Batches APIs this server also serves (see :mod:`dspydantic.testing_batches`)
        self.batches = FakeBatchAPI(self)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        """Bind and serve in a daemon thread. Returns ``self``."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer(("127.0.0.1", self._port), self)
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="FakeLLMServer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and every open client connection. Idempotent."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = None
        self._thread = None
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeLLMServer is not running; call start() or use it as a context manager")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` -- pass it as ``api_base``/``base_url`` to a client."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def url(self) -> str:
        """Alias of :attr:`base_url`."""
        return self.base_url

    # ------------------------------------------------------------------ internals (handler side)
    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)
