"""A tiny forward proxy on 127.0.0.1 for the transport tests: absolute-form HTTP requests are forwarded
(one upstream connection per request), ``CONNECT host:port`` is tunnelled. It records what it was asked
(method, target, headers) so a test can tell that a request went through it."""

from __future__ import annotations

import select
import socket
import threading
from dataclasses import dataclass
from typing import Self
from urllib.parse import urlsplit

from ._faultserver import _Reader, read_body, read_head

_HOP = {"proxy-connection", "proxy-authorization", "connection", "keep-alive"}


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]


class ForwardProxy:
    def __init__(self) -> None:
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self._listener = socket.socket()
        self._thread: threading.Thread | None = None

    @property
    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._accept_loop, name="ForwardProxy", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(30)
        reader = _Reader(conn)
        try:
            while not self.stopped.is_set():
                head = read_head(reader)
                if head is None:
                    return
                line, headers = head
                method, target, _ = line.split(" ", 2)
                with self._lock:
                    self._seen.append(Seen(method, target, headers))
                if method == "CONNECT":
                    host, _, port = target.rpartition(":")
                    up = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
                    conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    if reader.buf:
                        up.sendall(bytes(reader.buf))
                    _pipe(conn, up, self.stopped)
                    return
                body = read_body(reader, headers)
                if body is None:
                    return
                self._forward(conn, method, target, headers, body)
        except OSError:
            pass
        finally:
            conn.close()

    def _forward(self, conn: socket.socket, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        url = urlsplit(target)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        lines = [f"{method} {path} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k not in _HOP and k != "content-length"]
        lines += [f"Content-Length: {len(body)}", "Connection: close"]
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=30) as up:
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            up.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            while chunk := up.recv(65536):  # the upstream closes after its answer (Connection: close)
                conn.sendall(chunk)


def _pipe(a: socket.socket, b: socket.socket, stopped: threading.Event) -> None:
    try:
        while not stopped.is_set():
            ready, _, _ = select.select([a, b], [], [], 0.2)
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)
    finally:
        b.close()
