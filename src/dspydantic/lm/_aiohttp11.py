"""A lean asyncio HTTP/1.1 client for JSON POSTs: keep-alive pool per event loop, Content-Length and
chunked bodies. It exists because the general-purpose async clients cost several times the CPU per request
of the whole rest of an extraction (measured in bench/bench_runtime.py).
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections import deque
from collections.abc import AsyncGenerator


class AsyncHTTPError(OSError):
    """Transport failure (connect, reset, malformed response)."""


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


async def _closer(idle: deque[_Conn]) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        while idle:
            idle.pop().close()


class AsyncPool:
    """Keep-alive connections to one host, per event loop."""

    def __init__(self, host: str, port: int, https: bool, timeout: float) -> None:
        self.host = host
        self.port = port
        self.https = https
        self.timeout = timeout
        self._idle: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, deque[_Conn]] = (
            weakref.WeakKeyDictionary()
        )
        self._closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = (
            weakref.WeakKeyDictionary()
        )
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if https else None

    async def _idle_for(self, loop: asyncio.AbstractEventLoop) -> deque[_Conn]:
        idle = self._idle.get(loop)
        if idle is None:
            idle = self._idle[loop] = deque()
            # an async generator started in this loop is closed by the loop's shutdown (asyncio.run does
            # it): that is when the idle keep-alive connections of this loop get closed
            closer = self._closers[loop] = _closer(idle)
            await closer.__anext__()
        return idle

    async def _open(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self._ssl, limit=1 << 22)
        return _Conn(reader, writer)

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        idle = await self._idle_for(asyncio.get_running_loop())
        head = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        for attempt in (0, 1):
            reused = bool(idle)
            conn = idle.pop() if reused else await self._open()
            try:
                status, data, keep = await asyncio.wait_for(self._exchange(conn, request), self.timeout)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                conn.close()
                if reused and attempt == 0:  # the server closed an idle keep-alive connection
                    continue
                raise AsyncHTTPError(f"{type(exc).__name__}: {exc}") from None
            except BaseException:
                conn.close()
                raise
            if keep:
                idle.append(conn)
            else:
                conn.close()
            return status, data
        raise AssertionError("unreachable")

    @staticmethod
    async def _exchange(conn: _Conn, request: bytes) -> tuple[int, bytes, bool]:
        conn.writer.write(request)
        reader = conn.reader
        status_line = await reader.readline()
        if not status_line:
            raise asyncio.IncompleteReadError(b"", None)
        parts = status_line.split(None, 2)
        status = int(parts[1])
        length = -1
        chunked = False
        keep = not status_line.startswith(b"HTTP/1.0")
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection":
                keep = value.strip().lower() == b"keep-alive" or (keep and value.strip().lower() != b"close")
        if chunked:
            body = bytearray()
            while True:
                size = int((await reader.readline()).split(b";")[0].strip(), 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                body += await reader.readexactly(size)
                await reader.readexactly(2)
            return status, bytes(body), keep
        if length >= 0:
            return status, await reader.readexactly(length), keep
        return status, await reader.read(), False

    def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle = weakref.WeakKeyDictionary()
