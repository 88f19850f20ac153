"""The verbs that return only the data (``run``, ``predict``, ``apredict``, the batch verbs without
``with_confidence``) skip the confidence assessment nobody sees, and only that: grounding that changes the
data (``require_grounding``) still applies, and an observer (a hook, the INFO log) still gets the real
confidence. End to end through the fake OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import logging
import math
import subprocess
import sys
from typing import Any

import pytest
from pydantic import BaseModel

from dspydantic import Prompter
from dspydantic._observe import ExtractionEvent, add_hook, remove_hook
from dspydantic.testing import FakeLLMServer

from ._support import SRC


class Invoice(BaseModel):
    vendor: str
    total: float
    note: str | None = None


DOC = "Invoice from Acme GmbH, total 3 EUR."
#: "Acme GmbX" is in the document only fuzzily (rapidfuzz decides), "paid by card" not at all
ANSWER = {"vendor": "Acme GmbX", "total": 3, "note": "paid by card"}


def make(srv: FakeLLMServer, **kwargs: Any) -> Prompter[Invoice]:
    srv.set_responder(lambda body: ANSWER)
    return Prompter(model=Invoice, model_id="openai/test", api_base=srv.base_url, api_key="k", cache=False, **kwargs)


def test_data_only_verbs_never_assess_the_answer() -> None:
    # a fresh interpreter: the fuzzy tier of grounding imports rapidfuzz, so its absence shows no answer was
    # assessed; predict_with_confidence then does assess (and loads it)
    code = f"""
import asyncio, sys
from pydantic import BaseModel
from dspydantic import Prompter
from dspydantic.testing import FakeLLMServer

class Invoice(BaseModel):
    vendor: str
    total: float
    note: str | None = None

with FakeLLMServer() as srv:
    srv.set_responder(lambda body: {ANSWER!r})
    p = Prompter(model=Invoice, model_id="openai/test", api_base=srv.base_url, api_key="k", cache=False)
    doc = {DOC!r}
    got = [p.run(doc), p.predict(doc), asyncio.run(p.apredict(doc)), *p.predict_batch([doc, doc], max_workers=2),
           *asyncio.run(p.apredict_batch([doc, doc], max_workers=2))]
    assert all(g.vendor == "Acme GmbX" and g.note == "paid by card" for g in got), got
    print("rapidfuzz" in sys.modules, srv.request_count)
    res = p.predict_with_confidence(doc)
    print("rapidfuzz" in sys.modules, sorted(res.ungrounded), 0 < res.field_confidences["vendor"] < 1)
"""
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()[:2]
    assert first == "False 7"
    assert second == "True ['note'] True"


def test_with_confidence_batches_still_assess(srv: FakeLLMServer) -> None:
    p = make(srv)
    one = p.predict_with_confidence(DOC)
    assert one.ungrounded == ["note"] and one.confidence_source == "attempts" and not math.isnan(one.confidence)
    for res in [*p.predict_batch([DOC, DOC], max_workers=2, with_confidence=True),
                *asyncio.run(p.apredict_batch([DOC, DOC], max_workers=2, with_confidence=True))]:
        assert (res.confidence, res.field_confidences, res.ungrounded) == (
            one.confidence, one.field_confidences, one.ungrounded)


def test_require_grounding_still_applies_to_data_only_verbs(srv: FakeLLMServer) -> None:
    p = make(srv, require_grounding=True)
    assert p.run(DOC).note is None  # ungrounded: made None, as predict_with_confidence does
    assert [x.note for x in asyncio.run(p.apredict_batch([DOC, DOC], max_workers=2))] == [None, None]
    assert p.predict_with_confidence(DOC).data.note is None


def test_an_observer_sees_the_real_confidence_of_a_data_only_verb(
    srv: FakeLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    p = make(srv)
    expected = p.predict_with_confidence(DOC).confidence
    events: list[ExtractionEvent] = []

    class Hook:
        def start(self, prompter: Any) -> None:
            return None

        def finish(self, token: Any, event: ExtractionEvent) -> None:
            events.append(event)

    hook = Hook()
    add_hook(hook)
    try:
        p.run(DOC)
        asyncio.run(p.apredict_batch([DOC, DOC], max_workers=2))
    finally:
        remove_hook(hook)
    assert len(events) == 3
    for e in events:
        assert e.result is not None and e.result.confidence == expected and e.result.ungrounded == ["note"]
    with caplog.at_level(logging.INFO, logger="dspydantic.extraction"):
        p.run(DOC)
    (rec,) = [r for r in caplog.records if r.name == "dspydantic.extraction"]
    assert rec.confidence == expected  # type: ignore[attr-defined]
