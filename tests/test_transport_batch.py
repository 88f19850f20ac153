"""A 1,000-document batch through a server that fails about a fifth of the first attempts (500, 429 with
Retry-After, a read timeout, a reset, a body cut short) and some documents for good (500 every time, a 400,
an answer that never validates). Every slot holds its own result or a typed error, in input order, none
lost, and the server saw exactly the requests the retry policy implies, per document."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from typing import Any

import pytest

from dspydantic import ExtractionError, LMError

from ._faultserver import Action, Answer, Error, FaultServer, Hang, Request, Reset, Truncate
from ._verbs import Bill, describe, make

N = 1000
RETRIES = 2  # lm_retries
MAX_RETRIES = 1  # re-asks of an answer that does not validate
TIMEOUT = 2.0
_DOC = re.compile(r"doc-(\d+):")


def transient(i: int) -> Action | None:
    """The fault on the first attempt of document ``i`` (20% of documents), None for a clean first try."""
    kind = i % 25
    if kind == 1:
        return Error(500)
    if kind == 6:
        return Error(429, headers={"Retry-After": "1" if i % 100 == 6 else "0"})
    if kind == 11:
        return Hang(TIMEOUT + 2)  # the client's deadline passes first
    if kind == 16:
        return Reset()
    if kind == 21:
        return Truncate()
    return None


def permanent(i: int) -> Action | None:
    """Documents that never succeed (3%)."""
    kind = i % 100
    if kind == 3:
        return Error(500)
    if kind == 8:
        return Error(400)
    if kind == 13:
        return Answer('{"vendor": "Tr')  # JSON cut short, every time: never validates
    return None


def expected(i: int) -> tuple[str, int]:
    """What slot ``i`` must hold, and how many requests the server must see for document ``i``."""
    kind = i % 100
    if kind == 3:
        return "lm500", RETRIES + 1
    if kind == 8:
        return "lm400", 1
    if kind == 13:
        return "extraction", MAX_RETRIES + 1
    return "ok", 2 if transient(i) is not None else 1


class Script:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: Counter[int] = Counter()

    def __call__(self, req: Request) -> Action:
        match = _DOC.search(req.text) or _DOC.search(req.body.decode("utf-8", "replace"))
        assert match, "every request carries its document"
        i = int(match.group(1))
        with self.lock:
            self.seen[i] += 1
            attempt = self.seen[i]
        fault = permanent(i)
        if fault is not None:
            return fault
        if attempt == 1 and (fault := transient(i)) is not None:
            return fault
        return Answer({"vendor": f"V{i}", "total": float(i)})


def check(out: list[Any], script: Script, server: FaultServer) -> None:
    assert len(out) == N
    for i, slot in enumerate(out):
        kind, _ = expected(i)
        if kind == "ok":
            assert isinstance(slot, Bill) and slot.vendor == f"V{i}", f"slot {i}: {describe(slot)}"
        elif kind == "extraction":
            assert isinstance(slot, ExtractionError), f"slot {i}: {describe(slot)}"
        else:
            assert isinstance(slot, LMError) and slot.status == int(kind[2:]), f"slot {i}: {describe(slot)}"
        if isinstance(slot, Exception):
            assert getattr(slot, "batch_index", None) == i, f"slot {i} holds the error of item {slot.batch_index}"
    wrong = {i: (script.seen[i], expected(i)[1]) for i in range(N) if script.seen[i] != expected(i)[1]}
    assert not wrong, f"requests per document (seen, expected), first 10: {dict(list(wrong.items())[:10])}"
    assert server.request_count == sum(expected(i)[1] for i in range(N))


def test_expectations_cover_about_a_fifth() -> None:
    faulty = sum(1 for i in range(N) if transient(i) is not None or permanent(i) is not None)
    assert 0.18 * N <= faulty <= 0.26 * N


@pytest.mark.parametrize("verb", ["predict_batch", "apredict_batch"])
def test_thousand_documents_with_injected_faults(verb: str) -> None:
    script = Script()
    with FaultServer() as server:
        server.respond(script)
        p = make(server.base_url, lm_retries=RETRIES, retry_backoff=0.01, max_retries=MAX_RETRIES, timeout=TIMEOUT)
        docs = [f"doc-{i}: a bill" for i in range(N)]
        start = time.monotonic()
        if verb == "predict_batch":
            out = p.predict_batch(docs, max_workers=32, on_error="return")
        else:
            out = asyncio.run(p.apredict_batch(docs, max_workers=32, on_error="return"))
        elapsed = time.monotonic() - start
        check(out, script, server)
        p.close()
    assert elapsed < 60, elapsed
