"""Shared by the transport fault suite: the verbs every case runs through, a hard cap on a call's wall time
(a hang fails the test instead of stalling the suite), and a count of this process's open sockets to a port."""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from typing import Any

import pytest
from pydantic import BaseModel

from dspydantic import Prompter

#: the sync and async single-document verbs, and the batch verbs (one document, ``on_error="return"``)
SINGLE = ("run", "apredict")
VERBS = ("run", "apredict", "predict_batch", "apredict_batch")

#: a key whose random part makes any leaked 8-character window detectable
SECRET = secrets.token_hex(20)
KEY = "sk-fault-" + SECRET


class Bill(BaseModel):
    vendor: str
    total: float


GOOD = {"vendor": "Acme", "total": 12.5}


def make(base_url: str, **kw: Any) -> Prompter:
    """A Prompter on the OpenAI-compatible path with fast retries (overridable)."""
    kw.setdefault("api_key", KEY)
    kw.setdefault("lm_retries", 2)
    kw.setdefault("retry_backoff", 0.01)
    return Prompter(Bill, "openai/fake-model", api_base=base_url, **kw)


def call(p: Prompter, verb: str, text: Any = "Bill from Acme, total 12.50") -> Any:
    """The verb's result, or the exception it raised (a batch verb's failed slot holds the exception)."""
    try:
        if verb == "run":
            return p.run(text)
        if verb == "apredict":
            return asyncio.run(p.apredict(text))
        if verb == "predict_batch":
            return p.predict_batch([text], on_error="return")[0]
        if verb == "apredict_batch":
            return asyncio.run(p.apredict_batch([text], on_error="return"))[0]
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # CancelledError too: it must not escape as such
        return exc
    raise AssertionError(f"unknown verb {verb}")


def timed(p: Prompter, verb: str, text: Any = "Bill from Acme, total 12.50", *, cap: float = 20.0) -> tuple[Any, float]:
    """``call`` on a worker thread; fails the test if it is still running after ``cap`` seconds."""
    box: list[Any] = []

    def work() -> None:
        box.append(call(p, verb, text))

    start = time.monotonic()
    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(cap)
    elapsed = time.monotonic() - start
    if t.is_alive():
        pytest.fail(f"{verb} still running after {cap:.0f} s: the call hangs")
    return box[0], elapsed


def describe(out: Any) -> str:
    return f"{type(out).__module__}.{type(out).__name__}: {out!r}"[:600]


def open_sockets(port: int) -> int:
    """Sockets this process holds open (any state but closed/TIME_WAIT) to 127.0.0.1:``port``."""
    inodes: set[str] = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            remote_port = int(cols[2].rsplit(":", 1)[1], 16)
            if remote_port == port and cols[9] in inodes:
                count += 1
    return count
