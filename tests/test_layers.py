"""The backend layers (retry, cache, budget) and ModelSettings, driven through their public constructors with a
scripted in-process backend, plus the places the Prompter and the optimizer compose them (over a real server)."""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
import time
import warnings
from typing import Any

import pytest
from pydantic import BaseModel

from dspydantic import ConfigurationError, ExtractionError, LMError, Prompter
from dspydantic.errors import CacheWarning
from dspydantic.lm import LMRequest, LMResponse, ModelSettings
from dspydantic.lm.layers import Budget, BudgetedBackend, BudgetExhausted, CachingBackend, RetryingBackend
from dspydantic.testing import FakeLLMServer, Reply


class Scripted:
    """A backend answering from a script: an ``LMResponse`` or an exception per call."""

    cache_id = "scripted:model"
    context_window = None

    def __init__(self, *script: LMResponse | Exception) -> None:
        self.script = list(script)
        self.calls = 0

    def _next(self) -> LMResponse:
        self.calls += 1
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        return LMResponse(text=item.text, prompt_tokens=item.prompt_tokens, completion_tokens=item.completion_tokens)

    def complete(self, request: LMRequest) -> LMResponse:
        return self._next()

    async def acomplete(self, request: LMRequest) -> LMResponse:
        return self._next()

    def close(self) -> None:
        return None


REQUEST = LMRequest(messages=[{"role": "user", "content": "hi"}], json_schema={"type": "object"})


class DictCache:
    def __init__(self, fail: bool = False) -> None:
        self.data: dict[str, dict[str, Any]] = {}
        self.fail = fail

    def get(self, key: str) -> dict[str, Any] | None:
        return self.data.get(key)

    def set(self, key: str, value: dict[str, Any]) -> None:
        if self.fail:
            raise OSError("disk full")
        self.data[key] = value


# -- retry ----------------------------------------------------------------------------------------------------


def test_retry_waits_retry_after_then_succeeds() -> None:
    inner = Scripted(LMError("busy", status=429, retryable=True, retry_after=0.2), LMResponse(text="ok"))
    t = time.monotonic()
    assert RetryingBackend(inner, retries=2, backoff=0.0).complete(REQUEST).text == "ok"
    assert inner.calls == 2 and time.monotonic() - t >= 0.2


def test_retry_gives_up_on_non_retryable_and_counts_attempts() -> None:
    inner = Scripted(LMError("bad request", status=400, retryable=False))
    with pytest.raises(LMError) as info:
        RetryingBackend(inner, retries=3).complete(REQUEST)
    assert inner.calls == 1 and info.value.attempts == 1
    inner = Scripted(LMError("down", status=503, retryable=True))
    with pytest.raises(LMError) as info:
        asyncio.run(RetryingBackend(inner, retries=2, backoff=0.0).acomplete(REQUEST))
    assert inner.calls == 3 and info.value.attempts == 3


def test_retry_never_sleeps_beyond_max_time() -> None:
    inner = Scripted(LMError("later", status=429, retryable=True, retry_after=30.0))
    t = time.monotonic()
    with pytest.raises(LMError):
        RetryingBackend(inner, retries=5, max_time=1.0).complete(REQUEST)
    assert inner.calls == 1 and time.monotonic() - t < 0.5


def test_backoff_is_full_jitter_within_the_exponential_bound() -> None:
    draws = iter([1.0, 0.5])
    inner = Scripted(LMError("x", retryable=True), LMError("x", retryable=True), LMResponse(text="ok"))
    t = time.monotonic()
    RetryingBackend(inner, retries=2, backoff=0.1, rng=lambda: next(draws)).complete(REQUEST)
    assert 0.2 <= time.monotonic() - t < 0.6  # 1.0 * 0.1 * 2**0 + 0.5 * 0.1 * 2**1


# -- cache ----------------------------------------------------------------------------------------------------


def test_cache_stores_only_confirmed_answers() -> None:
    cache = DictCache()
    inner = Scripted(LMResponse(text="first"), LMResponse(text="second"))
    layer = CachingBackend(inner, cache)
    first = layer.complete(REQUEST)  # never confirmed (it did not validate): not stored
    assert not cache.data and not first.cached
    second = layer.complete(REQUEST)
    second.confirm()
    assert len(cache.data) == 1
    hit = layer.complete(REQUEST)
    assert hit.cached and hit.text == "second" and inner.calls == 2


def test_cache_key_covers_every_setting_and_the_endpoint_but_not_the_key() -> None:
    layer = CachingBackend(Scripted(LMResponse(text="x")), DictCache())
    base = layer.key(REQUEST)
    assert base == layer.key(LMRequest(messages=[{"role": "user", "content": "hi"}], json_schema={"type": "object"}))
    for change in ({"top_p": 0.5}, {"seed": 1}, {"stop": "END"}, {"extra_body": {"x": 1}}, {"max_tokens": 9}):
        assert layer.key(REQUEST.with_settings(**change)) != base, change
    other = Scripted(LMResponse(text="x"))
    other.cache_id = "scripted:other-endpoint"  # type: ignore[misc]
    assert CachingBackend(other, DictCache()).key(REQUEST) != base


def test_a_failing_cache_warns_once_and_keeps_the_answer() -> None:
    inner = Scripted(LMResponse(text="paid"))
    layer = CachingBackend(inner, DictCache(fail=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            response = layer.complete(REQUEST)
            response.confirm()
            assert response.text == "paid"
    assert [w.category for w in caught] == [CacheWarning]
    assert inner.calls == 3


def test_async_confirm_writes_off_the_loop_and_flush_waits() -> None:
    cache = DictCache()
    layer = CachingBackend(Scripted(LMResponse(text="a")), cache)

    async def main() -> None:
        response = await layer.acomplete(REQUEST)
        response.confirm()
        await layer.flush()

    asyncio.run(main())
    assert len(cache.data) == 1


# -- budget ---------------------------------------------------------------------------------------------------


def test_budget_counts_hits_and_calls_and_refuses_past_the_limit() -> None:
    cache = DictCache()
    budget = Budget(max_requests=3)
    snapshots: list[dict[str, Any]] = []
    stack = BudgetedBackend(CachingBackend(Scripted(LMResponse(text="x", prompt_tokens=5)), cache), budget,
                            on_call=snapshots.append)
    stack.complete(REQUEST).confirm()
    assert stack.complete(REQUEST).cached
    assert (budget.requests, budget.calls, budget.cache_hits) == (2, 1, 1)
    stack.complete(REQUEST)
    with pytest.raises(BudgetExhausted):
        stack.complete(REQUEST)
    assert len(snapshots) == 3 and budget.exhausted


def test_shut_budget_refuses_further_requests() -> None:
    stack = BudgetedBackend(Scripted(LMResponse(text="x")), Budget())
    stack.complete(REQUEST)
    stack.shut(wait=1.0)
    with pytest.raises(BudgetExhausted):
        asyncio.run(stack.acomplete(REQUEST))


# -- settings -------------------------------------------------------------------------------------------------


def test_model_settings_are_frozen_values() -> None:
    a = ModelSettings(temperature=0, top_p=0.5, stop=["END"], extra_body={"k": [1]})
    assert a == ModelSettings(temperature=0.0, top_p=0.5, stop=("END",), extra_body={"k": [1]})
    assert hash(a) == hash(pickle.loads(pickle.dumps(a)))
    assert a.params == {"temperature": 0.0, "top_p": 0.5, "stop": ["END"]}
    with pytest.raises(AttributeError):
        a.top_p = 0.1  # type: ignore[misc]
    merged = ModelSettings(seed=3, extra_body={"j": 2}).over(a)
    assert merged.seed == 3 and merged.top_p == 0.5 and merged.extra_body == {"k": [1], "j": 2}
    with pytest.raises(ConfigurationError, match="extra_body"):
        ModelSettings(extra_body={"messages": []})
    with pytest.raises(ConfigurationError, match="unknown"):
        a.replace(top_k=3)


# -- composition in the Prompter and the optimizer ------------------------------------------------------------


class Bill(BaseModel):
    vendor: str
    total: float


def test_prompter_construction_does_not_import_the_http_client(srv: FakeLLMServer) -> None:
    code = (
        "import sys; from dspydantic import Prompter; from pydantic import BaseModel\n"
        "class B(BaseModel):\n    v: str\n"
        f"p = Prompter(B, 'openai/x', api_base={srv.base_url!r}, api_key='k')\n"
        "print('aiohttp' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_truncated_answer_reports_usage_and_raw_output(srv: FakeLLMServer) -> None:
    srv.add_response(Reply('{"vendor": "Ac', finish_reason="length", prompt_tokens=10, completion_tokens=4))
    srv.add_response(Reply('{"vendor": "Acme", "to', finish_reason="length", prompt_tokens=10, completion_tokens=8))
    p = Prompter(Bill, "openai/x", api_base=srv.base_url, api_key="k", max_tokens=4, context_window=4096)
    with pytest.raises(ExtractionError) as info:
        p.run("Bill from Acme")
    err = info.value
    assert err.truncated and "token limit" in str(err)
    assert [r.body["max_tokens"] for r in srv.requests] == [4, 8]
    assert err.usage.calls == 2 and err.usage.completion_tokens == 12
    assert err.raw_output == '{"vendor": "Acme", "to'


def test_optimizer_student_runs_the_prompters_plan(srv: FakeLLMServer) -> None:
    """The student's first answer is cut by the token limit: the plan's retry with a larger limit (which the
    old re-ask loop in the adapter did not have) makes it score."""
    pytest.importorskip("dspy")
    from dspydantic.optimize.bridge import Budget as BridgeBudget
    from dspydantic.optimize.bridge import DocRegistry, Gateway, StudentContext, build_program, make_lm

    srv.add_response(Reply('{"vendor": "Ac', finish_reason="length"))
    srv.set_responder(lambda body: {"vendor": "Acme", "total": 3.0})
    p = Prompter(Bill, "openai/x", api_base=srv.base_url, api_key="k", max_tokens=50)
    registry = DocRegistry(p)
    from dspydantic import Example

    key = registry.add(Example(text="Bill from Acme, 3 EUR", expected_output={"vendor": "Acme", "total": 3.0}))
    budget = BridgeBudget(max_requests=10)
    gateway = Gateway(p, budget)
    import dspy

    program = build_program(StudentContext(p, p.state, registry))
    with dspy.context(lm=make_lm(gateway)):
        prediction = program(document=key)
    assert prediction.extraction == {"vendor": "Acme", "total": 3.0}
    assert [r.body["max_tokens"] for r in srv.requests] == [50, 100]
    assert budget.calls == 2
