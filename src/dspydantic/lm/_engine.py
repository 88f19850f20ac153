"""Where the transport's aiohttp sessions run, and how they end (used by :mod:`dspydantic.lm.transport`).

A sync call runs the async call on a private event loop of the calling thread (``run_until_complete``), with
a connection pool per thread, like a ``requests.Session`` per thread: no hand-off between threads. Two cases
need more: a sync call made from a thread whose own loop is running (sync code inside async code) goes to
one shared loop on a daemon thread; and a loop of ours must not outlive its thread (a batch's worker
threads end with the batch), so a thread's loop and its connections are closed when the thread ends.

Sessions are per event loop. A user's loop's session is closed when the loop shuts its async generators down
(``asyncio.run`` does); a loop closed without that has its sockets closed directly. A forked child never
closes what it inherited: closing an inherited event loop would unregister the parent's descriptors from the
epoll instance both processes share.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import weakref
from collections.abc import AsyncGenerator, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("dspydantic")
_T = TypeVar("_T")


class _LoopThread:
    """One event loop on a daemon thread, for sync calls made from inside a running event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        private_loops.add(self.loop)
        self.thread = threading.Thread(target=self.loop.run_forever, name="dspydantic-http", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        if not self.thread.is_alive():
            self.loop.close()


class _ThreadState(threading.local):
    loop: asyncio.AbstractEventLoop | None = None
    pid: int = 0
    #: dropped with the thread's locals when the thread ends: retires the thread's loop then
    sentinel: _ThreadEnd | None = None


class _ThreadEnd:
    __slots__ = ("loop", "pid")

    def __init__(self, loop: asyncio.AbstractEventLoop, pid: int) -> None:
        self.loop = loop
        self.pid = pid

    def __del__(self) -> None:
        try:
            _retire(self.loop, self.pid)
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


_runner: _LoopThread | None = None
_runner_lock = threading.Lock()
_state = _ThreadState()
private_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
#: every live Transport (anything with a ``_sessions`` dict): closed at exit, pruned when a thread ends
transports: weakref.WeakSet[Any] = weakref.WeakSet()
#: what a forked child inherited from its parent's loops, kept alive: closing an inherited event loop would
#: unregister the parent's file descriptors from the epoll instance both processes share
inherited: list[Any] = []


def loop_thread() -> _LoopThread:
    global _runner
    runner = _runner
    if runner is None:
        with _runner_lock:
            runner = _runner
            if runner is None:
                runner = _runner = _LoopThread()
    return runner


def thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's private loop (created on first use, recreated in a forked child)."""
    state = _state
    loop = state.loop
    pid = os.getpid()
    if loop is not None and state.pid == pid and not loop.is_closed():
        return loop
    if loop is not None and state.pid != pid:
        inherited.append((loop, state.sentinel))
    loop = asyncio.new_event_loop()
    private_loops.add(loop)
    state.loop, state.pid, state.sentinel = loop, pid, _ThreadEnd(loop, pid)
    return loop


def _retire(loop: asyncio.AbstractEventLoop, pid: int) -> None:
    """A thread that ran sync calls ended: close its connections and its loop."""
    if pid != os.getpid():
        inherited.append(loop)
        return
    for transport in list(transports):
        entry = transport._sessions.pop(loop, None)
        if entry is not None:
            abandon(entry[0])
    if not loop.is_running() and not loop.is_closed():
        loop.close()


def _after_fork_in_child() -> None:
    # the parent's loops and connections belong to the parent: keep them, never use or close them
    global _runner, _runner_lock
    if _runner is not None:
        inherited.append(_runner)
    _runner = None
    _runner_lock = threading.Lock()
    for transport in list(transports):
        inherited.append(dict(transport._sessions))
        transport._sessions.clear()


def _shutdown() -> None:
    for transport in list(transports):
        close_sessions(transport._sessions)
    runner = _runner
    if runner is not None:
        runner.stop()
    loop = _state.loop
    if loop is not None and _state.pid == os.getpid() and not loop.is_running() and not loop.is_closed():
        try:  # closes deferred by finalizers of collected transports run now
            loop.run_until_complete(_settle())
        except Exception:
            pass
        loop.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_shutdown)


Sessions = dict  # loop -> (aiohttp.ClientSession, closer async generator or None)


async def closer(
    sessions: Sessions[Any, Any], loop: asyncio.AbstractEventLoop, session: Any
) -> AsyncGenerator[None, None]:
    """Started in a user's loop, finalized by that loop's ``shutdown_asyncgens()`` (``asyncio.run`` does it):
    closes the loop's session."""
    try:
        yield
    finally:
        sessions.pop(loop, None)
        if not session.closed:
            await session.close()


def abandon(session: Any) -> None:
    """The session of a loop that can no longer run (closed without shutting its async generators down, or
    whose thread ended): its sockets are closed here directly, and the session is marked closed."""
    connector = session.connector
    if connector is None:
        return
    try:
        protocols = [proto for conns in connector._conns.values() for proto, _t in conns]
        protocols += list(connector._acquired)
        for proto in protocols:
            transport = proto.transport
            sock = transport.get_extra_info("socket") if transport is not None else None
            raw = getattr(sock, "_sock", None)  # asyncio's TransportSocket wraps the socket.socket
            if raw is not None:
                raw.close()
        connector._conns.clear()
        connector._acquired.clear()
        connector._closed = True
        session._connector = None
    except Exception:
        log.debug("could not close the connections of a finished event loop", exc_info=True)


def close_sessions(sessions: Sessions[Any, Any], wait: float = 5.0, *, run_idle: bool = True) -> None:
    """Close every session in ``sessions`` on its own loop: soon on the loop running this code, within
    ``wait`` seconds on the shared loop thread, now on this thread's idle private loop (``run_idle``), when
    it next runs on any other idle loop; a closed loop's sockets are closed directly. With
    ``run_idle=False`` (the finalizer of a collected :class:`Transport`, which may run anywhere) no loop is
    run from here."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    for loop, (session, _gen) in list(sessions.items()):
        sessions.pop(loop, None)
        if session.closed:
            continue
        if loop.is_closed():
            abandon(session)
        elif running is not None and loop is running:
            running.create_task(session.close())
        elif loop.is_running():
            future = asyncio.run_coroutine_threadsafe(session.close(), loop)
            runner = _runner
            if runner is not None and loop is runner.loop and wait > 0:
                try:
                    future.result(wait)
                except Exception:
                    pass
        elif run_idle:  # an idle loop (this thread's or another's): run it just for the close
            _run_idle(loop, session, running is not None)
        else:  # an idle loop we may not run from here: it closes the session the next time it runs
            loop.call_soon_threadsafe(_close_soon, session)


def _run_idle(loop: asyncio.AbstractEventLoop, session: Any, inside_a_loop: bool, wait: float = 5.0) -> None:
    """Close ``session`` by running its idle loop: here, or (when this thread is inside another running loop,
    which forbids running a second one) on a helper thread while this one waits."""

    def work() -> None:
        try:
            loop.run_until_complete(session.close())
        except Exception:
            log.debug("could not close a session", exc_info=True)

    if not inside_a_loop:
        work()
        return
    helper = threading.Thread(target=work, name="dspydantic-close", daemon=True)
    helper.start()
    helper.join(wait)


async def _settle(timeout: float = 2.0) -> None:
    await asyncio.sleep(0)
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)


async def after_two_turns(coro: Coroutine[Any, Any, _T]) -> _T:
    # the private loop did not run since the last call: two turns let it see a keep-alive connection the
    # server closed meanwhile (its FIN), so that connection is dropped instead of being written to
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return await coro


def _close_soon(session: Any) -> None:
    if not session.closed:
        asyncio.get_running_loop().create_task(session.close())
