"""The sync engine's lifecycle: a loop and a connection pool per calling thread, closed when the thread ends;
a forked child gets fresh connections and the parent keeps working; a sync call from async code works."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import BaseModel

from dspydantic import Prompter
from dspydantic.testing import FakeLLMServer

from ._verbs import open_sockets

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts sockets through /proc")


class Bill(BaseModel):
    vendor: str
    total: float


def make(srv: FakeLLMServer) -> Prompter:
    srv.set_responder(lambda body: {"vendor": "Acme", "total": 1.0})
    return Prompter(Bill, "openai/fake", api_base=srv.base_url, api_key="k")


def test_worker_threads_take_their_connections_with_them(srv: FakeLLMServer) -> None:
    p = make(srv)
    p.run("warm the calling thread's own pool")
    assert open_sockets(srv.port) == 1
    for _ in range(3):
        with ThreadPoolExecutor(max_workers=8) as pool:
            assert all(b.vendor == "Acme" for b in pool.map(p.run, [f"doc {i}" for i in range(16)]))
        assert open_sockets(srv.port) == 1, "finished worker threads left connections open"
    p.run("the calling thread's connection is still reused")
    assert open_sockets(srv.port) == 1
    p.close()
    assert open_sockets(srv.port) == 0


def test_a_sync_batch_runs_on_the_async_engine_and_reuses_its_connections(srv: FakeLLMServer) -> None:
    p = make(srv)
    srv.latency = 0.05
    seen: set[int] = set()
    for _ in range(3):
        out = p.predict_batch([f"doc {i}" for i in range(32)], max_workers=8,
                              on_progress=lambda done, n: seen.add(threading.get_ident()))
        assert len(out) == 32
        assert 1 <= open_sockets(srv.port) <= 8  # kept alive for the next batch, never more than max_workers
    assert srv.max_in_flight == 8
    assert seen == {threading.get_ident()}  # every item finished on the calling thread: no thread per item
    p.close()
    assert open_sockets(srv.port) == 0


def test_a_thread_that_ends_closes_its_loop_and_connection(srv: FakeLLMServer) -> None:
    p = make(srv)
    t = threading.Thread(target=p.run, args=("from a short-lived thread",))
    t.start()
    t.join()
    assert srv.request_count == 1
    assert open_sockets(srv.port) == 0
    assert not p.backend.transport._sessions  # type: ignore[attr-defined]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_uses_fresh_connections_and_the_parent_keeps_working(srv: FakeLLMServer) -> None:
    p = make(srv)
    p.run("parent before the fork")
    asyncio.run(p.apredict("parent async before the fork"))
    pid = os.fork()
    if pid == 0:  # the child: sync, batch and async calls all work, then it exits without cleanup
        code = 1
        try:
            ok = p.run("child").vendor == "Acme"
            ok = ok and len(p.predict_batch(["c1", "c2"], max_workers=2)) == 2
            ok = ok and asyncio.run(p.apredict("child async")).vendor == "Acme"
            code = 0 if ok else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert p.run("parent after the fork").vendor == "Acme"  # the parent's loop still works
    assert asyncio.run(p.apredict("parent async after the fork")).vendor == "Acme"
    assert srv.request_count == 2 + 4 + 2
    p.close()
    assert open_sockets(srv.port) == 0


def test_sync_calls_from_async_code_and_from_many_threads(srv: FakeLLMServer) -> None:
    p = make(srv)

    async def main() -> str:
        return p.run("sync inside a running loop").vendor

    assert asyncio.run(main()) == "Acme"
    threads = [threading.Thread(target=p.run, args=(f"t{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert srv.request_count == 9
    p.close()
    assert open_sockets(srv.port) == 0


def test_the_key_never_reaches_a_proxy_in_the_connect_request(tmp_path_factory: pytest.TempPathFactory) -> None:
    """aiohttp copies a session's default headers into the CONNECT it sends a proxy, Authorization turned into
    Proxy-Authorization: the API key must travel inside the tunnel only."""
    import ssl

    trustme = pytest.importorskip("trustme")
    from ._faultserver import FaultServer
    from ._proxy import ForwardProxy

    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    bundle = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    key = "sk-engine-test-0123456789abcdef"
    with ForwardProxy() as proxy, FaultServer(tls=ctx) as secure:
        for userinfo in ("", "puser:ppass@"):
            p = Prompter(Bill, "openai/fake", api_base=secure.base_url, api_key=key, verify=str(bundle),
                         proxy=proxy.url(userinfo.rstrip("@")))
            assert isinstance(p.run("Bill from Acme"), Bill)
            connect = [s for s in proxy.seen if s.method == "CONNECT"][-1]
            shown = repr(connect.headers)
            assert key not in shown and "Bearer" not in shown, shown
            assert ("proxy-authorization" in connect.headers) == bool(userinfo)
            p.close()
    assert secure.request_count == 2
