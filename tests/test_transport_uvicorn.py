"""A healthy real server closes idle keep-alive connections: the next call must not fail on them.

A Starlette app under uvicorn (``timeout_keep_alive=5``) on 127.0.0.1: a batch fills the client's pool, the
client idles past the server's keep-alive, then one more call must succeed, and the server must have seen
exactly one request for it (a stale pooled connection is never a failed call, and never a silent re-send).
The Prompters run with ``lm_retries=0``: the retry policy must not be what papers over a stale connection.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from ._faultserver import completion
from ._verbs import Bill, make

uvicorn = pytest.importorskip("uvicorn", reason="needs the server extra")
starlette = pytest.importorskip("starlette", reason="needs the server extra")


class UvicornLLM:
    """An OpenAI-compatible chat endpoint under a real uvicorn, in a thread, counting requests."""

    def __init__(self, keep_alive: int) -> None:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        self.count = 0
        self._lock = threading.Lock()

        async def chat(request: Request) -> Response:
            await request.json()
            with self._lock:
                self.count += 1
            return Response(completion({"vendor": "Uvicorn", "total": 1.0}), media_type="application/json")

        app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=keep_alive, lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"

    def __enter__(self) -> UvicornLLM:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@pytest.fixture()
def uv() -> Iterator[UvicornLLM]:
    with UvicornLLM(keep_alive=5) as server:
        yield server


DOCS = [f"bill {i} from Uvicorn" for i in range(16)]
IDLE = 6.5  # past uvicorn's 5 s keep-alive


def check_batch(out: list[object]) -> None:
    assert len(out) == 16 and all(isinstance(r, Bill) and r.vendor == "Uvicorn" for r in out), out


def test_sync_call_after_the_server_closed_idle_connections(uv: UvicornLLM) -> None:
    p = make(uv.base_url, lm_retries=0)
    check_batch(p.predict_batch(DOCS, max_workers=8, on_error="return"))
    assert uv.count == 16
    time.sleep(IDLE)
    start = time.monotonic()
    assert p.run("one more").vendor == "Uvicorn"
    assert time.monotonic() - start < 3
    assert uv.count == 17
    p.close()


def test_async_call_after_idle_in_one_event_loop(uv: UvicornLLM) -> None:
    p = make(uv.base_url, lm_retries=0)

    async def main() -> float:
        check_batch(await p.apredict_batch(DOCS, max_workers=8, on_error="return"))
        assert uv.count == 16
        await asyncio.sleep(IDLE)
        start = time.monotonic()
        assert (await p.apredict("one more")).vendor == "Uvicorn"
        return time.monotonic() - start

    assert asyncio.run(main()) < 3
    assert uv.count == 17
    p.close()


def test_async_call_after_idle_across_asyncio_run(uv: UvicornLLM) -> None:
    p = make(uv.base_url, lm_retries=0)
    check_batch(asyncio.run(p.apredict_batch(DOCS, max_workers=8, on_error="return")))
    assert uv.count == 16
    time.sleep(IDLE)
    start = time.monotonic()
    assert asyncio.run(p.apredict("one more")).vendor == "Uvicorn"
    assert time.monotonic() - start < 3
    assert uv.count == 17
    p.close()


@pytest.mark.parametrize("verb", ["run", "apredict"])
def test_short_keep_alive_many_rounds(verb: str) -> None:
    """A 1 s keep-alive, idled past twice: each round's calls all succeed with one request each
    (the client's own keep-alive expiry, if any, is longer than the server's here)."""
    with UvicornLLM(keep_alive=1) as server:
        p = make(server.base_url, lm_retries=0)

        async def a_round() -> None:
            check_batch(await p.apredict_batch(DOCS, max_workers=8, on_error="return"))

        for rnd in range(1, 3):
            if verb == "run":
                check_batch(p.predict_batch(DOCS, max_workers=8, on_error="return"))
            else:
                asyncio.run(a_round())
            assert server.count == 16 * rnd
            time.sleep(1.6)
        p.close()
