"""Which maintained HTTP library carries dspydantic's *sync* calls: client CPU per request and the contract.

    .venv/bin/python bench/bench_sync_transport.py [--n 2000]

Candidates, each posting the same ~3 KB chat-completions body to a zero-latency FakeLLMServer running in
another process, on one keep-alive connection, reading the whole answer:

* ``http.client``: the hand-written path this replaces (the floor, not a candidate);
* ``httpx.Client``;
* ``urllib3`` (``HTTPConnectionPool.urlopen``);
* ``aiohttp`` driven from the calling thread on one private event-loop thread
  (``asyncio.run_coroutine_threadsafe``), the same engine as the async path;
* ``aiohttp`` on a private event loop per calling thread (``loop.run_until_complete``);
* ``dspydantic.lm.transport.Transport.post``: what was built from the last one (the loop per calling thread,
  plus two loop turns before each call so a keep-alive connection the server closed is seen and dropped).

CPU is ``time.process_time()`` of this whole process (every thread) per request. Then the one contract item
that separates them: a server that drips one byte every 0.3 s must not hold a call with a 1 s timeout beyond
~1 s (the issue measured 20.5 s on the old client with ``timeout=2``).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

SERVER = """
import sys
from dspydantic.testing import FakeLLMServer
srv = FakeLLMServer().start()
srv.set_responder(lambda body: {"vendor": "Acme GmbH", "total": 1200.5, "currency": "EUR"})
print(srv.port, flush=True)
sys.stdin.read()
"""

BODY = json.dumps(
    {
        "model": "fake",
        "messages": [
            {"role": "system", "content": "Extract the invoice. " * 60},
            {"role": "user", "content": "Invoice INV-1 from Acme GmbH, total 1.200,50 EUR, due 1 March 2024."},
        ],
        "response_format": {"type": "json_schema", "json_schema": {"name": "Invoice", "schema": {
            "type": "object",
            "properties": {"vendor": {"type": "string"}, "total": {"type": "number"}, "currency": {"type": "string"}},
            "required": ["vendor", "total", "currency"],
        }}},
    }
).encode()
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer k"}


def cpu_per_call(fn: Callable[[], Any], n: int) -> float:
    for _ in range(50):
        fn()
    t = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t) / n


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


def candidates(port: int) -> dict[str, tuple[Callable[[str, float], Any], Callable[[], None]]]:
    """name -> (post(url, timeout) returning the body, close)."""
    import aiohttp
    import httpx
    import urllib3

    out: dict[str, tuple[Callable[[str, float], Any], Callable[[], None]]] = {}

    conns: dict[str, http.client.HTTPConnection] = {}

    def stdlib(url: str, timeout: float) -> bytes:
        host, _, rest = url.removeprefix("http://").partition("/")
        conn = conns.get(host)
        if conn is None:
            h, _, p = host.partition(":")
            conn = conns[host] = http.client.HTTPConnection(h, int(p), timeout=timeout)
        conn.request("POST", "/" + rest, body=BODY, headers=HEADERS)
        return conn.getresponse().read()

    out["http.client (old, floor)"] = (stdlib, lambda: [c.close() for c in conns.values()] and None)

    client = httpx.Client(timeout=httpx.Timeout(60.0))

    def hx(url: str, timeout: float) -> bytes:
        return client.post(url, content=BODY, headers=HEADERS, timeout=timeout).content

    out["httpx.Client"] = (hx, client.close)

    pool = urllib3.PoolManager(maxsize=8)

    def u3(url: str, timeout: float) -> bytes:
        r = pool.request("POST", url, body=BODY, headers=HEADERS, timeout=urllib3.Timeout(total=timeout),
                         retries=False)
        return r.data

    out["urllib3"] = (u3, pool.clear)

    lt = LoopThread()
    sessions: dict[str, aiohttp.ClientSession] = {}

    async def apost(url: str, timeout: float) -> bytes:
        s = sessions.get("s")
        if s is None:
            s = sessions["s"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        async with asyncio.timeout(timeout), s.post(url, data=BODY, headers=HEADERS) as r:
            return await r.read()

    def aio_thread(url: str, timeout: float) -> bytes:
        return lt.run(apost(url, timeout))  # type: ignore[no-any-return]

    def close_thread() -> None:
        if "s" in sessions:
            lt.run(sessions.pop("s").close())
        lt.stop()

    out["aiohttp on a loop thread"] = (aio_thread, close_thread)

    local = threading.local()

    async def apost_local(url: str, timeout: float) -> bytes:
        s = getattr(local, "session", None)
        if s is None:
            s = local.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        async with asyncio.timeout(timeout), s.post(url, data=BODY, headers=HEADERS) as r:
            return await r.read()

    def aio_local(url: str, timeout: float) -> bytes:
        loop = getattr(local, "loop", None)
        if loop is None:
            loop = local.loop = asyncio.new_event_loop()
        return loop.run_until_complete(apost_local(url, timeout))  # type: ignore[no-any-return]

    def close_local() -> None:
        if getattr(local, "session", None) is not None:
            local.loop.run_until_complete(local.session.close())
            local.loop.close()

    out["aiohttp, loop per calling thread"] = (aio_local, close_local)

    from dspydantic.lm.transport import Transport

    transports: dict[str, Transport] = {}

    def ours(url: str, timeout: float) -> bytes:
        base, _, path = url.partition("/v1")
        t = transports.get(base)
        if t is None:
            t = transports[base] = Transport(base + "/v1", headers=HEADERS, timeout=60.0)
        return t.post(path, BODY, timeout=timeout).body

    out["dspydantic Transport.post"] = (ours, lambda: [t.close() for t in transports.values()] and None)
    return out


def drip_server() -> tuple[int, Callable[[], None]]:
    """Accepts a request, then sends a valid response head and one body byte every 0.3 s for 6 s."""
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n")
                for _ in range(20):
                    if stop.wait(0.3):
                        return
                    conn.sendall(b" ")
            except OSError:
                return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()

    def close() -> None:
        stop.set()
        lsock.close()

    return lsock.getsockname()[1], close


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    port = int(proc.stdout.readline())
    dport, dclose = drip_server()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        for name, (post, close) in candidates(port).items():
            cpu = cpu_per_call(lambda post=post: post(url, 30.0), args.n)
            t = time.perf_counter()
            try:
                post(f"http://127.0.0.1:{dport}/v1/chat/completions", 1.0)
                outcome = "answered"
            except BaseException as exc:
                outcome = type(exc).__name__
            held = time.perf_counter() - t
            print(f"{name:34s} cpu/request {cpu * 1e3:6.3f} ms   drip server, timeout=1 s: {outcome} after "
                  f"{held:5.2f} s", flush=True)
            close()
    finally:
        dclose()
        proc.stdin.close()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
