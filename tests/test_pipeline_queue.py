"""``dspydantic.pipeline.BatchQueue`` under concurrent producers, against the fake LLM server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from dspydantic import ExtractionError, Prompter
from dspydantic.pipeline import BatchQueue, QueueClosedError
from dspydantic.testing import FakeLLMServer, last_user_text


class Item(BaseModel):
    name: str


def echo(body: dict[str, Any]) -> Any:
    text = last_user_text(body)
    if "BAD" in text:
        return "not json"
    return {"name": text.rsplit(" ", 1)[-1]}  # the last word of the document


def make_prompter(srv: FakeLLMServer) -> Prompter:
    srv.set_responder(echo)
    return Prompter(model=Item, model_id="openai/test", api_base=srv.base_url, max_retries=0, retry_backoff=0)


async def test_every_producer_gets_its_own_result_in_batches(srv: FakeLLMServer) -> None:
    srv.latency = 0.05
    prompter = make_prompter(srv)
    queue = BatchQueue(prompter, max_batch=8, max_wait=0.02)

    async def producer(p: int) -> list[tuple[str, str]]:
        out = []
        for i in range(5):
            word = f"p{p}i{i}"
            result = await queue.submit(f"item {word}")
            out.append((word, result.data.name))
        return out

    results = await asyncio.gather(*(producer(p) for p in range(12)))
    await queue.aclose()
    pairs = [pair for r in results for pair in r]
    assert len(pairs) == 60 and all(sent == got for sent, got in pairs)
    assert queue.stats.extracted == 60 and queue.stats.failed == 0
    assert queue.stats.largest_batch <= 8
    assert queue.stats.batches < 60  # batched, not one call per item
    assert 1 < srv.max_in_flight <= 8  # one batch at a time, each concurrent


async def test_a_failing_item_fails_only_its_caller(srv: FakeLLMServer) -> None:
    queue = BatchQueue(make_prompter(srv), max_batch=4, max_wait=0.05)
    good = asyncio.ensure_future(queue.submit("item good"))
    bad = asyncio.ensure_future(queue.submit("item BAD"))
    empty = asyncio.ensure_future(queue.submit("   "))
    assert (await good).data.name == "good"
    with pytest.raises(ExtractionError):
        await bad
    with pytest.raises(Exception, match="empty"):
        await empty
    assert queue.stats.batches == 1 and queue.stats.failed == 2
    await queue.aclose()


async def test_back_pressure_and_close(srv: FakeLLMServer) -> None:
    srv.latency = 0.2
    queue = BatchQueue(make_prompter(srv), max_batch=1, max_wait=0, max_pending=2)
    first = queue.submit_nowait("item a")
    await asyncio.sleep(0.05)  # the consumer took "a" and is extracting it
    queue.submit_nowait("item b")
    queue.submit_nowait("item c")
    with pytest.raises(asyncio.QueueFull):
        queue.submit_nowait("item d")
    waiting = asyncio.ensure_future(queue.submit("item e"))  # waits for room instead
    await asyncio.sleep(0.05)
    assert not waiting.done() and queue.pending == 2
    assert (await first).data.name == "a"
    await queue.aclose()  # every queued item still runs
    assert (await waiting).data.name == "e"
    assert queue.stats.extracted == 4
    with pytest.raises(QueueClosedError):
        await queue.submit("item f")


async def test_a_cancelled_caller_is_skipped(srv: FakeLLMServer) -> None:
    queue = BatchQueue(make_prompter(srv), max_batch=10, max_wait=0.1)
    keep = asyncio.ensure_future(queue.extract("item keep"))
    drop = asyncio.ensure_future(queue.extract("item drop"))
    await asyncio.sleep(0.01)
    drop.cancel()
    assert (await keep).name == "keep"
    await queue.aclose()
    assert [r.last_user_text.rsplit(" ", 1)[-1] for r in srv.chat_requests] == ["keep"]
