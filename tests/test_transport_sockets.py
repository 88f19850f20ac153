"""No connection outlives its event loop, and ``Prompter.close()`` closes everything.

Open sockets are counted from this process's side (/proc/self/fd against /proc/net/tcp, any state but
closed) and from the server's (connections it has not seen closed)."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import time
from collections.abc import Iterator

import pytest

from ._faultserver import FaultServer
from ._verbs import Bill, make, open_sockets

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts sockets through /proc")


@pytest.fixture()
def fs() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


def server_sees_all_closed(fs: FaultServer, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while fs.open_connections and time.monotonic() < deadline:
        time.sleep(0.02)
    return fs.open_connections == 0


def test_the_socket_count_sees_a_connection(fs: FaultServer) -> None:
    assert open_sockets(fs.port) == 0
    with socket.create_connection(("127.0.0.1", fs.port)):
        assert open_sockets(fs.port) == 1
    assert open_sockets(fs.port) == 0


def test_fifty_event_loops_leave_no_socket_open(fs: FaultServer) -> None:
    p = make(fs.base_url)
    after_each = []
    for i in range(50):
        assert isinstance(asyncio.run(p.apredict(f"doc {i}")), Bill)
        after_each.append(open_sockets(fs.port))
    assert fs.request_count == 50
    assert after_each == [0] * 50, f"sockets open after each asyncio.run: {after_each}"
    assert server_sees_all_closed(fs), f"the server still has {fs.open_connections} connections open"
    p.close()


def test_fifty_loops_closed_without_asyncio_run_do_not_pile_up_sockets(fs: FaultServer) -> None:
    """The issue's case: loops made with new_event_loop() and closed with loop.close() (no async-generator
    shutdown) left one connection each (50 loops, 50 sockets on main, still 50 after gc.collect()). Once
    the loops are collected at most the last one's connection may linger, until close()."""
    p = make(fs.base_url)
    counts = []
    for i in range(50):
        loop = asyncio.new_event_loop()
        try:
            assert isinstance(loop.run_until_complete(p.apredict(f"doc {i}")), Bill)
        finally:
            loop.close()
        counts.append(open_sockets(fs.port))
    assert fs.request_count == 50
    del loop
    gc.collect()  # every one of those loops is closed: their connections may not pile up
    assert open_sockets(fs.port) <= 1, f"sockets open after each closed loop: {counts}"
    p.close()
    assert open_sockets(fs.port) == 0
    assert server_sees_all_closed(fs)


def test_fifty_async_batches_in_their_own_loops(fs: FaultServer) -> None:
    p = make(fs.base_url)
    for i in range(50):
        out = asyncio.run(p.apredict_batch([f"doc {i}-{j}" for j in range(4)], max_workers=4))
        assert len(out) == 4
    assert fs.request_count == 200
    assert open_sockets(fs.port) == 0
    p.close()


def test_close_closes_the_sync_pool(fs: FaultServer) -> None:
    p = make(fs.base_url)
    assert len(p.predict_batch([f"doc {i}" for i in range(8)], max_workers=4)) == 8
    assert p.run("one more").vendor == "Acme"
    p.close()
    assert open_sockets(fs.port) == 0
    assert server_sees_all_closed(fs)


def test_close_inside_a_running_loop_closes_everything(fs: FaultServer) -> None:
    p = make(fs.base_url)

    async def main() -> int:
        out = await p.apredict_batch([f"doc {i}" for i in range(6)], max_workers=3)
        assert len(out) == 6
        p.close()  # the sync close, called from async code
        await asyncio.sleep(0.05)  # transports finish closing on the loop's next iterations
        return open_sockets(fs.port)

    p.run("a sync call first: both faces have connections")
    assert asyncio.run(main()) == 0
    assert open_sockets(fs.port) == 0
    assert server_sees_all_closed(fs)
