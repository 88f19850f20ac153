"""The extraction runtime end to end against a real HTTP fake server."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import subprocess
import sys
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Literal, Optional

import pytest
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dspydantic import (
    BatchError,
    ConfigurationError,
    Example,
    ExtractionError,
    ExtractionResult,
    LMError,
    Prompter,
)
from dspydantic.testing import FakeLLMServer, Fault, Reply

KEY = "sk-test-SECRET-0123456789"


class Currency(str, Enum):
    EUR = "EUR"
    USD = "USD"


class Address(BaseModel):
    city: str
    country: str | None = None


class Item(BaseModel):
    name: str
    qty: int = Field(ge=1)


class Invoice(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    vendor: str = Field(description="Company that issued the invoice")
    total: Decimal
    currency: Currency
    status: Literal["paid", "open"]
    issued: date
    created_at: datetime | None = None
    due: Optional[date] = None  # noqa: UP045 - the Optional spelling must work too
    address: Address
    items: list[Item] = []
    tags: dict[str, str] = {}
    reference: str = Field(default="n/a", alias="ref")

    @field_validator("vendor")
    @classmethod
    def strip_vendor(cls, v: str) -> str:
        return v.strip()

    def summary(self) -> str:
        return f"{self.vendor}: {self.total} {self.currency.value}"


GOOD_SOURCE = "Invoice R-1 from Acme GmbH, Berlin DE: 3 bolts (po 77), 1.200,50 EUR"
GOOD = {
    "vendor": "  Acme GmbH ",
    "total": 1200.5,
    "currency": "EUR",
    "status": "open",
    "issued": "2024-03-01",
    "created_at": "2024-03-01T10:00:00",
    "address": {"city": "Berlin", "country": "DE"},
    "items": [{"name": "bolts", "qty": 3}],
    "tags": {"po": "77"},
    "ref": "R-1",
}


def make(srv: FakeLLMServer, model: type[BaseModel] = Invoice, **kw: object) -> Prompter:
    return Prompter(model=model, model_id="openai/fake-model", api_base=srv.base_url, api_key=KEY, **kw)


def test_run_returns_the_users_own_class_with_every_type(srv: FakeLLMServer) -> None:
    srv.set_responder(lambda body: GOOD)
    inv = make(srv).run("Invoice from Acme GmbH, Berlin ...")
    assert type(inv) is Invoice
    assert inv.vendor == "Acme GmbH"  # the user's validator ran
    assert inv.total == Decimal("1200.5") and inv.currency is Currency.EUR
    assert inv.issued == date(2024, 3, 1) and inv.created_at == datetime(2024, 3, 1, 10)
    assert inv.due is None and inv.address.city == "Berlin" and inv.items[0].qty == 3
    assert inv.tags == {"po": "77"} and inv.reference == "R-1"  # alias honoured
    assert inv.summary() == "Acme GmbH: 1200.5 EUR"


def test_request_uses_structured_output_and_field_descriptions(srv: FakeLLMServer) -> None:
    srv.set_responder(lambda body: GOOD)
    make(srv, temperature=0.0, max_tokens=300).run("Invoice text")
    body = srv.requests[-1].body
    assert body["model"] == "fake-model" and body["temperature"] == 0.0 and body["max_tokens"] == 300
    rf = body["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["name"] == "Invoice"
    schema = rf["json_schema"]["schema"]
    assert schema["properties"]["vendor"]["description"] == "Company that issued the invoice"
    assert "Company that issued the invoice" in body["messages"][0]["content"]
    assert body["messages"][-1] == {"role": "user", "content": "Invoice text"}
    assert srv.requests[-1].headers["authorization"] == f"Bearer {KEY}"


def test_reask_with_validation_error_then_success_sums_usage(srv: FakeLLMServer) -> None:
    bad = dict(GOOD, currency="YEN")
    srv.add_response(Reply(bad, prompt_tokens=100, completion_tokens=10))
    srv.add_response(Reply(GOOD, prompt_tokens=130, completion_tokens=12))
    res = make(srv).predict_with_confidence(GOOD_SOURCE)
    assert isinstance(res, ExtractionResult) and res.data.currency is Currency.EUR
    assert res.attempts == 2 and res.usage.calls == 2
    assert res.usage.prompt_tokens == 230 and res.usage.completion_tokens == 22
    # every string value is in the source, no logprobs: each field is at the re-ask factor
    assert res.ungrounded == [] and res.confidence == pytest.approx(0.75)
    reask = srv.requests[1].body["messages"]
    assert reask[-2]["role"] == "assistant" and "YEN" in reask[-2]["content"]
    assert "currency" in reask[-1]["content"]


def test_unparseable_output_is_reasked_and_prose_around_json_is_tolerated(srv: FakeLLMServer) -> None:
    srv.add_response("Sure! I cannot do that.")
    srv.add_response("Here it is:\n```json\n" + json.dumps(GOOD) + "\n```")
    res = make(srv).predict_with_confidence("Invoice")
    assert res.attempts == 2 and res.data.vendor == "Acme GmbH"


def test_extraction_error_after_all_retries_carries_raw_output_and_errors(srv: FakeLLMServer) -> None:
    srv.set_responder(lambda body: {"vendor": "Acme"})
    with pytest.raises(ExtractionError) as info:
        make(srv, max_retries=1).run("Invoice")
    err = info.value
    assert err.attempts == 2 and srv.request_count == 2
    assert json.loads(err.raw_output or "") == {"vendor": "Acme"}
    assert err.errors and any(e["loc"] == ("total",) for e in err.errors[-1])
    assert err.usage.calls == 2


def test_transport_faults_are_retried_and_client_errors_are_not(srv: FakeLLMServer) -> None:
    srv.add_response(Fault(status=503))
    srv.add_response(Fault(drop_connection=True))
    srv.add_response(GOOD)
    assert make(srv, retry_backoff=0.01).run("x").vendor == "Acme GmbH"
    assert srv.request_count == 3
    srv.reset()
    srv.add_response(Fault(status=401, body={"error": {"message": f"bad key {KEY}"}}))
    with pytest.raises(LMError) as info:
        make(srv, retry_backoff=0.01).run("x")
    assert info.value.status == 401 and srv.request_count == 1
    assert KEY not in str(info.value)


def test_server_rejecting_json_schema_falls_back_to_json_mode(srv: FakeLLMServer) -> None:
    srv.add_response(Fault(status=400, body={"error": {"message": "response_format json_schema unsupported"}}))
    srv.set_responder(lambda body: GOOD)
    p = make(srv)
    assert p.run("x").vendor == "Acme GmbH"
    assert srv.requests[-1].body["response_format"] == {"type": "json_object"}


def test_batch_keeps_input_order_and_reports_bad_items(srv: FakeLLMServer) -> None:
    answers = {f"doc-{i}:": dict(GOOD, vendor=f"V{i}") for i in range(20)}
    answers["doc-7:"] = Fault(status=400)  # type: ignore[assignment]
    srv.respond_by_substring(answers)
    p = make(srv)
    texts = [f"doc-{i}:" for i in range(20)]
    texts[3] = "   "  # invalid input: rejected before any call, reported in its slot
    out = p.predict_batch(texts, max_workers=8, on_error="return")
    assert isinstance(out[3], ConfigurationError) and isinstance(out[7], LMError)
    for i, r in enumerate(out):
        if i not in (3, 7):
            assert isinstance(r, Invoice) and r.vendor == f"V{i}"
    assert srv.request_count == 19
    with pytest.raises(BatchError) as info:
        p.predict_batch(texts, max_workers=8)
    assert sorted(info.value.errors) == [3, 7]
    assert info.value.results[19].vendor == "V19"


async def test_async_batch_order_errors_and_bounded_concurrency(srv: FakeLLMServer) -> None:
    srv.latency = 0.05
    srv.respond_by_substring({f"doc-{i}:": dict(GOOD, vendor=f"V{i}") for i in range(64)})
    p = make(srv)
    texts = [f"doc-{i}:" for i in range(64)]
    texts[5] = ""
    out = await p.apredict_batch(texts, max_workers=16, on_error="return")
    assert isinstance(out[5], ConfigurationError)
    assert [r.vendor for i, r in enumerate(out) if i != 5] == [f"V{i}" for i in range(64) if i != 5]
    assert 12 <= srv.max_in_flight <= 16
    res = await p.apredict_batch(texts[:3], max_concurrency=2, with_confidence=True, on_error="return")
    assert all(isinstance(r, ExtractionResult) for r in res)


async def test_async_is_native_not_threads(srv: FakeLLMServer) -> None:
    """200 documents at 100 ms with 32 in flight: the event loop keeps them all in flight at once."""
    srv.latency = 0.1
    srv.set_responder(lambda body: GOOD)
    p = make(srv)
    out = await p.apredict_batch(["x"] * 200, max_workers=32)
    assert len(out) == 200 and 28 <= srv.max_in_flight <= 32
    single = await p.apredict("y")
    assert single.vendor == "Acme GmbH"


def test_sync_batch_uses_all_workers(srv: FakeLLMServer) -> None:
    srv.latency = 0.05
    srv.set_responder(lambda body: GOOD)
    seen: list[tuple[int, int]] = []
    assert len(make(srv).predict_batch(["x"] * 64, max_workers=32, on_progress=lambda d, n: seen.append((d, n)))) == 64
    assert sorted(seen) == [(i, 64) for i in range(1, 65)]
    assert 24 <= srv.max_in_flight <= 32  # bounded by max_workers, and (nearly) all of them busy at once


def test_cache_hit_makes_no_call_in_process_and_after_restart(srv: FakeLLMServer, tmp_path) -> None:
    srv.set_responder(lambda body: GOOD)
    path = tmp_path / "c"
    p = make(srv, cache=str(path))
    p.run("Invoice from Acme")
    r2 = p.predict_with_confidence("Invoice from Acme")
    assert srv.request_count == 1 and r2.cached and r2.usage.calls == 0 and r2.usage.cache_hits == 1
    p.run("another invoice")
    assert srv.request_count == 2
    # a "restart": a fresh process reads the same file and makes no call
    code = (
        "import sys; from dspydantic import Prompter; from tests.test_runtime import Invoice;"
        f"p = Prompter(Invoice, 'openai/fake-model', api_base={srv.base_url!r}, api_key='other', cache={str(path)!r});"
        "print(p.run('Invoice from Acme').vendor)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(_root()))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Acme GmbH" and srv.request_count == 2
    data = b"".join(f.read_bytes() for f in path.iterdir())
    assert KEY.encode() not in data


def test_cache_key_changes_with_prompt_and_endpoint(srv: FakeLLMServer, tmp_path) -> None:
    srv.set_responder(lambda body: GOOD)
    make(srv, cache=True).run("doc")
    make(srv, cache=True, system_prompt="Be terse.").run("doc")
    assert srv.request_count == 2
    with FakeLLMServer() as other:
        other.set_responder(lambda body: GOOD)
        Prompter(Invoice, "openai/fake-model", api_base=other.base_url, cache=True).run("doc")
        assert other.request_count == 1  # same model name, other endpoint: not served from cache


def test_two_prompters_each_use_their_own_lm(srv: FakeLLMServer) -> None:
    srv.set_responder(lambda body: GOOD if body["model"] == "model-a" else {"output": "free text"})
    a = Prompter(Invoice, "openai/model-a", api_base=srv.base_url)
    b = Prompter(None, "openai/model-b", api_base=srv.base_url)
    assert a.run("x").vendor == "Acme GmbH"
    assert b.run("x").output == "free text"
    assert [r.body["model"] for r in srv.requests] == ["model-a", "model-b"]
    assert "dspy" not in sys.modules or not getattr(sys.modules["dspy"].settings, "lm", None)


def test_logprob_confidence(srv: FakeLLMServer) -> None:
    # the fake splits the answer at whitespace: '{"vendor":' (-0.1), then '"' (-0.3) opens vendor's value
    srv.add_response(Reply(GOOD, logprobs=[-0.1, -0.3]))
    res = make(srv, logprobs=True).predict_with_confidence(GOOD_SOURCE)
    assert srv.requests[-1].body["logprobs"] is True
    assert res.confidence_source == "logprobs"
    # vendor: its own value token; fields with no token of their own: the whole answer's mean (-0.2)
    assert res.field_confidences["vendor"] == pytest.approx(math.exp(-0.3), abs=1e-4)
    assert res.field_confidences["total"] == pytest.approx(math.exp(-0.2), abs=1e-4)
    assert res.confidence == pytest.approx(math.exp(-0.3), abs=1e-4)  # the lowest field


@pytest.mark.parametrize("model_id", ["", "openai/", "bad id", "/gpt"])
def test_malformed_model_id_fails_before_any_call(srv: FakeLLMServer, model_id: str) -> None:
    with pytest.raises(ConfigurationError):
        Prompter(Invoice, model_id, api_base=srv.base_url)
    assert srv.request_count == 0


def test_bad_inputs_fail_clearly_before_any_call(srv: FakeLLMServer) -> None:
    with pytest.raises(ConfigurationError, match="Pydantic model"):
        Prompter(dict, "openai/x", api_base=srv.base_url)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="class"):
        Prompter(Address(city="x"), "openai/x", api_base=srv.base_url)  # type: ignore[arg-type]
    p = make(srv)
    for bad in ("", "   \n"):
        with pytest.raises(ConfigurationError):
            p.run(bad)
    with pytest.raises(ConfigurationError):
        p.predict()
    with pytest.raises(ConfigurationError):
        p.predict("x", colour="red")
    with pytest.raises(ConfigurationError, match="on_error"):
        p.predict_batch(["x"], on_error="ignore")  # type: ignore[arg-type]
    assert srv.request_count == 0


def test_openai_without_key_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        Prompter(Invoice, "openai/gpt-4o-mini")


def test_api_key_from_environment_and_base_url_env(srv: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
    srv.set_responder(lambda body: GOOD)
    p = Prompter(Invoice, "openai/gpt-4o-mini")
    assert p.run("x").vendor == "Acme GmbH"
    assert srv.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(p) and KEY not in repr(p.backend)


def test_secrets_never_reach_logs(srv: FakeLLMServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    srv.add_response("not json")
    srv.add_response(Fault(status=500, body={"error": {"message": f"upstream saw {KEY}"}}))
    srv.set_responder(lambda body: GOOD)
    make(srv, retry_backoff=0.0).run("x")
    assert KEY not in caplog.text


def test_dspy_lm_and_dspy_configured_lm(srv: FakeLLMServer) -> None:
    import dspy

    srv.set_responder(lambda body: GOOD)
    lm = dspy.LM("openai/fake-model", api_base=srv.base_url, api_key="k", cache=False)
    assert Prompter(Invoice, lm=lm).run("x").vendor == "Acme GmbH"
    with dspy.context(lm=lm):
        p = Prompter(Invoice)
    assert p.run("y").vendor == "Acme GmbH"
    assert srv.request_count == 2
    assert srv.requests[-1].body.get("response_format", {}).get("type") == "json_schema"


def test_litellm_provider_path(srv: FakeLLMServer) -> None:
    srv.set_responder(lambda body: GOOD)
    p = Prompter(Invoice, "hosted_vllm/fake-model", api_base=srv.base_url, api_key="k")
    assert p.run("x").vendor == "Acme GmbH"
    assert srv.requests[-1].body["model"] == "fake-model"


def test_free_text_mode_accepts_plain_answers(srv: FakeLLMServer) -> None:
    srv.add_response("The answer is 42.")
    p = Prompter(model_id="openai/fake", api_base=srv.base_url)
    assert p.run("What is it?").output == "The answer is 42."


def test_example_accepts_reference_argument_order() -> None:
    e = Example({"vendor": "Acme"}, "Invoice from Acme")
    assert e.text == "Invoice from Acme" and e.expected_dict() == {"vendor": "Acme"}
    e2 = Example(text="t", expected_output=Address(city="Rome"))
    assert e2.expected_dict() == {"city": "Rome", "country": None}
    assert Example("t", "free").expected_dict() == {"output": "free"}
    with pytest.raises(ConfigurationError):
        Example()


def test_import_is_light() -> None:
    heavy = "('dspy', 'litellm', 'llama_cpp', 'httpx', 'aiohttp')"
    code = f"import sys, dspydantic; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sync_call_inside_running_loop_still_works(srv: FakeLLMServer) -> None:
    srv.set_responder(lambda body: GOOD)
    p = make(srv)

    async def main() -> str:
        return p.run("x").vendor  # a sync call from async code: allowed, it just blocks

    assert asyncio.run(main()) == "Acme GmbH"


def _root():  # type: ignore[no-untyped-def]
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


class Contract(BaseModel):
    party: str | None = None
    penalty: str | None = None
    clauses: list[str] = []


def test_long_document_is_chunked_and_the_answer_in_the_last_chunk_survives(srv: FakeLLMServer) -> None:
    def answer(body: dict) -> dict:
        text = body["messages"][-1]["content"]
        out: dict = {"party": None, "penalty": None, "clauses": []}
        if "Party: Globex" in text:
            out["party"] = "Globex"
        if "PENALTY CLAUSE" in text:
            out["penalty"] = "5% per week"
            out["clauses"] = ["penalty"]
        if "Clause A" in text:
            out["clauses"] = [*out["clauses"], "A"]
        return out

    srv.set_responder(answer)
    filler = "\n\n".join(f"Paragraph {i}: the parties agree on ordinary terms number {i}." for i in range(400))
    doc = "Party: Globex\n\nClause A applies.\n\n" + filler + "\n\nPENALTY CLAUSE: 5% per week of delay."
    p = Prompter(Contract, "openai/fake", api_base=srv.base_url, context_window=2048, max_tokens=200)
    res = p.predict_with_confidence(doc)
    assert res.extra["chunks"] == srv.request_count > 3
    assert res.data.party == "Globex" and res.data.penalty == "5% per week"
    assert sorted(res.data.clauses) == ["A", "penalty"]
    assert all(len(r.body["messages"][-1]["content"]) < 2048 * 4 for r in srv.requests)
    assert res.usage.calls == srv.request_count


def test_template_inputs_fill_prompt_placeholders_and_keep_literal_braces(srv: FakeLLMServer) -> None:
    srv.set_responder(lambda body: GOOD)
    p = make(srv, instruction_prompt='Extract the {doc_type} fields. Output like {"vendor": "..."}.')
    p.run({"doc_type": "invoice", "body": "Invoice from Acme"})
    body = srv.requests[-1].body
    assert 'Extract the invoice fields. Output like {"vendor": "..."}.' in body["messages"][0]["content"]
    assert "body: Invoice from Acme" in body["messages"][-1]["content"]
    with pytest.raises(ConfigurationError, match="doc_type"):
        p.run({"body": "no doc type"})
    assert srv.request_count == 1
