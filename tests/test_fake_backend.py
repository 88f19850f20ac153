"""``dspydantic.testing.FakeBackend``: the in-process fake LM for users' unit tests. It opens no socket, answers
from the same script as ``FakeLLMServer`` and records the very body the server receives for the same call, and
its faults reach the retry layer as the HTTP backend's do."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from pydantic import BaseModel

from dspydantic import LMError, Prompter
from dspydantic.testing import FakeBackend, FakeLLMServer, Fault, Reply


class Invoice(BaseModel):
    vendor: str
    total: float


@pytest.fixture
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("FakeBackend must not open a socket")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_a_prompter_on_the_fake_extracts_and_the_request_is_recorded(no_sockets: None) -> None:
    fake = FakeBackend({"vendor": "Acme", "total": 12.5})
    p = Prompter(model=Invoice, lm=fake)
    invoice = p.run("Invoice from Acme, total 12.50 EUR")
    assert invoice == Invoice(vendor="Acme", total=12.5)
    (request,) = fake.chat_requests
    assert "Acme, total 12.50" in request.last_user_text
    assert request.body["response_format"]["json_schema"]["schema"]["required"] == ["vendor", "total"]
    assert fake.request_count == 1 and fake.pending_responses == 0
    p.close()
    assert fake.closed


def test_the_fake_records_what_the_server_receives() -> None:
    """The same Prompter settings and document: the body FakeBackend records equals the body the HTTP backend
    sends the server, so responders and assertions carry over."""
    kwargs: dict[str, Any] = {"system_prompt": "You read invoices.", "temperature": 0.2, "max_tokens": 300, "seed": 7}
    with FakeLLMServer(model_name="fake") as srv:
        srv.respond_from_schema({"vendor": "Acme"})
        via_http = Prompter(model=Invoice, model_id="openai/fake", api_base=srv.base_url, api_key="k", **kwargs)
        got_http = via_http.run("Invoice from Acme, total 3")
        via_http.close()
        sent = srv.chat_requests[0].body
    fake = FakeBackend(model_name="fake")
    fake.respond_from_schema({"vendor": "Acme"})
    got_fake = Prompter(model=Invoice, lm=fake, **kwargs).run("Invoice from Acme, total 3")
    assert got_fake == got_http
    assert fake.chat_requests[0].body == sent


def test_faults_are_the_http_backends_errors_and_are_retried() -> None:
    fake = FakeBackend(Fault(status=429, headers={"Retry-After": "0"}), Fault(drop_connection=True),
                       {"vendor": "Acme", "total": 1})
    p = Prompter(model=Invoice, lm=fake, lm_retries=2, retry_backoff=0)
    assert p.run("Acme 1").vendor == "Acme"
    assert fake.request_count == 3  # two faults retried, then the answer

    fake.add_response(Fault(status=400, body="bad request: no such parameter"))
    with pytest.raises(LMError) as info:
        p.run("Acme 1")
    assert info.value.status == 400 and not info.value.retryable and "no such parameter" in str(info.value)
    assert fake.request_count == 4  # a 400 is not retried

    fake.add_response(Reply("overloaded", status=503), times=3)
    with pytest.raises(LMError) as info:
        p.run("Acme 1")
    assert info.value.status == 503 and info.value.retryable
    assert fake.request_count == 7  # the first try and two retries


def test_replies_carry_logprobs_usage_and_re_asks() -> None:
    fake = FakeBackend()
    fake.add_response(Reply({"vendor": "Acme"}))  # missing "total": re-asked with the validation error
    fake.add_response(Reply({"vendor": "Acme", "total": 2}, logprobs=[-0.01, -0.02, -0.01, -0.03],
                            prompt_tokens=40, completion_tokens=9))
    p = Prompter(model=Invoice, lm=fake, logprobs=True)
    result = p.predict_with_confidence("Acme, total 2")
    assert result.data.total == 2 and result.attempts == 2
    assert result.confidence_source == "logprobs"
    assert result.usage.calls == 2 and result.usage.completion_tokens >= 9
    assert "total" in fake.chat_requests[1].messages[-1]["content"]  # the re-ask names the missing field
    assert fake.chat_requests[1].body["logprobs"] is True


def test_responders_and_async_batches() -> None:
    fake = FakeBackend(latency=0.05)
    fake.respond_by_substring({"Acme": {"vendor": "Acme", "total": 1}, "Globex": {"vendor": "Globex", "total": 2}})
    p = Prompter(model=Invoice, lm=fake)
    texts = ["Acme 1", "Globex 2"] * 4
    got = asyncio.run(p.apredict_batch(texts, max_workers=4))
    assert [i.vendor for i in got] == ["Acme", "Globex"] * 4
    assert 1 < fake.max_in_flight <= 4 and fake.in_flight == 0
    fake.reset()
    assert fake.request_count == 0
    out = p.predict_batch(["Acme 1", "Initech 3"], on_error="return")
    assert out[0].vendor == "Acme" and isinstance(out[1], Exception)  # the default answer "{}" fails validation
