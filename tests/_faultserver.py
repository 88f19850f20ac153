"""A raw-socket HTTP/1.1 server on 127.0.0.1 that misbehaves on purpose, for the transport fault suite.

Each request is answered by one :class:`Action` (taken from a FIFO script, else from the responder), which
writes whatever bytes it likes on the socket: a proper chat completion, an error, a redirect, a gzip body,
a ``100 Continue`` first, garbage, a byte every half second, a reset, nothing at all. The server records
every request it parsed completely (``requests`` / ``request_count``) and counts accepted connections.

Also here: :class:`Blackhole` (a listener whose accept queue is full, so a connect never completes) and
:func:`closed_port` (a port nothing listens on). Every socket is on 127.0.0.1, with TCP_NODELAY.
"""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Self

__all__ = [
    "Answer",
    "BadJSON",
    "Blackhole",
    "Close",
    "Drip",
    "Error",
    "FaultServer",
    "Hang",
    "Raw",
    "Redirect",
    "Request",
    "Reset",
    "Truncate",
    "closed_port",
    "completion",
]


@dataclass
class Request:
    """One request the server parsed completely. ``headers`` keys are lower-case."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    received_at: float

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def text(self) -> str:
        """The text of the last user message ("" if none)."""
        body = self.json
        messages = body.get("messages") if isinstance(body, dict) else None
        for message in reversed(messages or []):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, list):
                    return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
                return str(content)
        return ""


def completion(content: str | dict[str, Any], finish_reason: str = "stop", model: str = "fake-model") -> bytes:
    """The JSON body of an OpenAI chat completion answering ``content``."""
    text = content if isinstance(content, str) else json.dumps(content)
    return json.dumps(
        {
            "id": "chatcmpl-fault",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }
    ).encode()


def response_bytes(
    status: int, body: bytes, headers: dict[str, str] | None = None, *, content_type: str = "application/json"
) -> bytes:
    """A complete HTTP/1.1 response (Content-Length framing, keep-alive)."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Whatever"
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Action:
    """How the server answers one request. ``perform`` returns True to keep the connection open."""

    def perform(self, conn: socket.socket, req: Request, server: FaultServer) -> bool:
        raise NotImplementedError

    def payload(self, req: Request) -> bytes:
        """The bytes of the answer, for actions that have one (used by :class:`Drip`)."""
        raise NotImplementedError


@dataclass
class Answer(Action):
    """A chat completion answering ``content`` (optionally gzip/deflate-encoded, or after a ``100 Continue``)."""

    content: str | dict[str, Any]
    finish_reason: str = "stop"
    headers: dict[str, str] = field(default_factory=dict)
    encoding: str | None = None
    continue_first: bool = False
    delay: float = 0.0

    def payload(self, req: Request) -> bytes:
        body = completion(self.content, self.finish_reason)
        headers = dict(self.headers)
        if self.encoding == "gzip":
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        elif self.encoding == "deflate":
            body = zlib.compress(body)
            headers["Content-Encoding"] = "deflate"
        head = b"HTTP/1.1 100 Continue\r\n\r\n" if self.continue_first else b""
        return head + response_bytes(200, body, headers)

    def perform(self, conn: socket.socket, req: Request, server: FaultServer) -> bool:
        if self.delay and server.stopped.wait(self.delay):
            return False
        conn.sendall(self.payload(req))
        return True


@dataclass
class Error(Action):
    """An HTTP error: ``body`` bytes are sent as they are, a str UTF-8 encoded, a dict as JSON."""

    status: int
    body: bytes | str | dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def payload(self, req: Request) -> bytes:
        body = self.body
        if body is None:
            body = {"error": {"message": f"fault server says {self.status}", "type": "server_error"}}
        if isinstance(body, dict):
            data = json.dumps(body).encode()
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
        return response_bytes(self.status, data, self.headers)

    def perform(self, conn: socket.socket, req: Request, server: FaultServer) -> bool:
        conn.sendall(self.payload(req))
        return True


def Redirect(status: int, location: str) -> Error:
    """A redirect to ``location`` (an empty body)."""
    return Error(status, b"", {"Location": location})


@dataclass
class Raw(Action):
    """Send ``data`` as the whole answer, then close (e.g. a garbage status line)."""

    data: bytes

    def payload(self, req: Request) -> bytes:
        return self.data

    def perform(self, conn: socket.socket, req: Request, server: FaultServer) -> bool:
        conn.sendall(self.data)
        return False


@dataclass
class Reset(Action):
    """Send ``partial`` (the start of a response, by default), then reset the connection (RST)."""

    partial: bytes = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"id\": \"chat"

    def perform(self, conn: socket.socket, req: Request, server: FaultServer) -> bool:
        if self.partial:
            conn.sendall(self.partial)
            time.sleep(0.02)  # let the bytes leave before the reset
        _reset(conn)
        return False


@dataclass
class Close(Action):
    """Close the connection without answering."""

    def perform(self, conn: socket.socket, req: Request, server: FaultServer) -> bool:
        return False


@dataclass
class Hang(Action):
    """Read the request, answer nothing for ``seconds`` (or until the server stops), then close."""

    seconds: float = 60.0

    def perform(self, conn: socket.socket, req: Request, server: FaultServer) -> bool:
        server.stopped.wait(self.seconds)
        return False


@dataclass
class Drip(Action):
    """Send the answer of ``inner`` one byte every ``interval`` seconds; ``skip_head=True`` sends the headers
    at once and drips only the body."""

    inner: Action = field(default_factory=lambda: Answer({"vendor": "Acme", "total": 1.0}))
    interval: float = 0.5
    skip_head: bool = False

    def perform(self, conn: socket.socket, req: Request, server: FaultServer) -> bool:
        data = self.inner.payload(req)
        start = 0
        if self.skip_head:
            start = data.index(b"\r\n\r\n") + 4
            conn.sendall(data[:start])
        for i in range(start, len(data)):
            if server.stopped.wait(self.interval):
                return False
            conn.sendall(data[i : i + 1])
        return True


@dataclass
class Truncate(Action):
    """A 200 whose Content-Length promises the whole completion; only ``fraction`` of the body is sent,
    then the connection is closed."""

    content: str | dict[str, Any] = field(default_factory=lambda: {"vendor": "Acme", "total": 1.0})
    fraction: float = 0.5

    def perform(self, conn: socket.socket, req: Request, server: FaultServer) -> bool:
        data = response_bytes(200, completion(self.content))
        head = data.index(b"\r\n\r\n") + 4
        cut = head + int((len(data) - head) * self.fraction)
        conn.sendall(data[:cut])
        return False


@dataclass
class BadJSON(Action):
    """A complete, well-framed 200 whose body is JSON cut in the middle."""

    def payload(self, req: Request) -> bytes:
        body = completion({"vendor": "Acme", "total": 1.0})
        return response_bytes(200, body[: len(body) // 2])

    def perform(self, conn: socket.socket, req: Request, server: FaultServer) -> bool:
        conn.sendall(self.payload(req))
        return True


Responder = Callable[[Request], Action]


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class _Reader:
    """Buffered reads from a socket (plain or TLS) without makefile() (which would keep the fd open)."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buf = bytearray()

    def _fill(self) -> bool:
        chunk = self.conn.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def readline(self, limit: int = 65536) -> bytes | None:
        while b"\n" not in self.buf:
            if len(self.buf) > limit or not self._fill():
                return None
        i = self.buf.index(b"\n") + 1
        line = bytes(self.buf[:i])
        del self.buf[:i]
        return line

    def read(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not self._fill():
                return None
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


def read_head(reader: _Reader) -> tuple[str, dict[str, str]] | None:
    """Request (or status) line and lower-cased headers; None at EOF."""
    line = reader.readline()
    while line is not None and line in (b"\r\n", b"\n"):
        line = reader.readline()
    if not line:
        return None
    headers: dict[str, str] = {}
    while True:
        h = reader.readline()
        if h is None:
            return None
        if h in (b"\r\n", b"\n"):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return line.decode("latin-1").strip(), headers


def read_body(reader: _Reader, headers: dict[str, str]) -> bytes | None:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        while True:
            size_line = reader.readline()
            if size_line is None:
                return None
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while reader.readline() not in (b"\r\n", b"\n", None):
                    pass
                return b"".join(parts)
            chunk = reader.read(size + 2)
            if chunk is None:
                return None
            parts.append(chunk[:-2])
    length = int(headers.get("content-length") or 0)
    return reader.read(length) if length else b""


class FaultServer:
    """The scripted server. ``tls`` serves HTTPS with that server context; ``silent=True`` accepts
    connections and never reads or writes a byte (a TLS handshake that never comes, when used as https)."""

    def __init__(self, *, tls: ssl.SSLContext | None = None, silent: bool = False) -> None:
        self.tls = tls
        self.silent = silent
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._script: deque[Action] = deque()
        self._responder: Responder = lambda req: Answer({"vendor": "Acme", "total": 1.0})
        self._requests: list[Request] = []
        self._conns: set[socket.socket] = set()
        self._open = 0
        self.accepted = 0
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> Self:
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", 0))
        lst.listen(128)
        lst.settimeout(0.05)
        self._listener = lst
        self._thread = threading.Thread(target=self._accept_loop, name="FaultServer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._listener is not None
        return int(self._listener.getsockname()[1])

    @property
    def origin(self) -> str:
        return f"{'https' if self.tls or self.silent else 'http'}://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    # -- scripting -----------------------------------------------------------------------------------
    def add(self, *actions: Action, times: int = 1) -> None:
        """Queue actions (FIFO, one per request) before the responder takes over."""
        with self._lock:
            for _ in range(times):
                self._script.extend(actions)

    def respond(self, responder: Responder | Action) -> None:
        """Answer with ``responder(request)`` (or always this action) once the script is empty."""
        self._responder = responder if not isinstance(responder, Action) else (lambda req: responder)

    # -- observation ---------------------------------------------------------------------------------
    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closed by either side."""
        with self._lock:
            return self._open

    # -- serving -------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self.stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._open += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(30)
        with self._lock:
            self._conns.add(conn)
        try:
            if self.silent:
                self.stopped.wait(120)
                return
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    return  # the client refused our certificate (or went away): no request
                with self._lock:
                    self._conns.add(conn)
            self._loop(conn)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._open -= 1
            try:
                conn.close()
            except OSError:
                pass

    def _loop(self, conn: socket.socket) -> None:
        reader = _Reader(conn)
        while not self.stopped.is_set():
            head = read_head(reader)
            if head is None:
                return
            line, headers = head
            if headers.get("expect", "").lower() == "100-continue":
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = read_body(reader, headers)
            if body is None:
                return
            method, _, rest = line.partition(" ")
            req = Request(method, rest.rsplit(" ", 1)[0], headers, body, time.time())
            with self._lock:
                self._requests.append(req)
                action = self._script.popleft() if self._script else None
            if action is None:
                action = self._responder(req)
            if not action.perform(conn, req, self):
                return
            if headers.get("connection", "").lower() == "close":
                return


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connecting is refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


class Blackhole:
    """A listener that never accepts, with its accept queue filled: a new connect gets no SYN-ACK and waits
    until the client gives up (the "full accept backlog" case)."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._fillers: list[socket.socket] = []

    def __enter__(self) -> Self:
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        port = self.port
        for _ in range(16):
            s = socket.socket()
            s.settimeout(0.3)
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                s.close()
                return self
            self._fillers.append(s)
        raise RuntimeError("the accept queue never filled up")

    def __exit__(self, *exc: object) -> None:
        for s in self._fillers:
            s.close()
        self._listener.close()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"
