"""Observability of real extractions (fake LLM server): the structured log record, cost on the usage, and
OpenTelemetry spans per extraction and per LM call."""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from dspydantic import ExtractionError, Prompter, Usage
from dspydantic._cost import cost_usd
from dspydantic.testing import FakeLLMServer, Reply


class Invoice(BaseModel):
    vendor: str
    total: float


def _table() -> dict[str, Any]:
    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.origin is not None
    return json.loads((Path(spec.origin).parent / "model_prices_and_context_window_backup.json").read_text())  # type: ignore[no-any-return]


def test_cost_comes_from_litellms_price_table() -> None:
    price = _table()["gpt-4o-mini"]
    assert cost_usd("openai/gpt-4o-mini", 1000, 200) == pytest.approx(
        1000 * price["input_cost_per_token"] + 200 * price["output_cost_per_token"])
    assert cost_usd("openai/gpt-4o-mini", 1000, 200, batch=True) == pytest.approx(
        1000 * price["input_cost_per_token_batches"] + 200 * price["output_cost_per_token_batches"])
    assert cost_usd("local", 10**6, 10**6) == 0.0
    assert cost_usd("openai/no-such-model-xyz", 10, 10) is None
    assert cost_usd(None, 10, 10) is None


def test_usage_sums_cost_over_parts_with_a_price() -> None:
    total = Usage()
    total.add(Usage(calls=1, prompt_tokens=10, cost_usd=0.5))
    total.add(Usage(calls=1, prompt_tokens=10))  # unknown price
    total.add(Usage(calls=1, cost_usd=0.25))
    assert total.calls == 3 and total.cost_usd == 0.75
    assert Usage().cost_usd is None


def test_every_extraction_writes_one_structured_record(srv: FakeLLMServer, caplog: pytest.LogCaptureFixture) -> None:
    srv.add_response(Reply({"vendor": "Acme", "total": 3}, prompt_tokens=120, completion_tokens=12))
    p = Prompter(model=Invoice, model_id="openai/gpt-4o-mini", api_base=srv.base_url)
    with caplog.at_level(logging.INFO, logger="dspydantic.extraction"):
        result = p.predict_with_confidence("Invoice from Acme")
    records = [r for r in caplog.records if r.name == "dspydantic.extraction"]
    assert len(records) == 1
    rec: Any = records[0]
    assert rec.levelno == logging.INFO
    assert (rec.prompter, rec.model_id, rec.outcome) == ("Invoice", "openai/gpt-4o-mini", "ok")
    assert (rec.confidence, rec.attempts, rec.cache_hit, rec.lm_calls) == (1.0, 1, False, 1)
    assert (rec.prompt_tokens, rec.completion_tokens) == (120, 12)
    assert rec.latency_s > 0
    price = _table()["gpt-4o-mini"]
    expected = 120 * price["input_cost_per_token"] + 12 * price["output_cost_per_token"]
    assert rec.cost_usd == pytest.approx(expected) and result.usage.cost_usd == pytest.approx(expected)


def test_a_failed_extraction_logs_a_warning_with_its_usage(srv: FakeLLMServer,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    srv.add_response("no json", times=2)
    p = Prompter(model=Invoice, model_id="openai/test", api_base=srv.base_url, max_retries=1, api_key="sk-secret-1234")
    with caplog.at_level(logging.INFO, logger="dspydantic.extraction"), pytest.raises(ExtractionError):
        p.run("Invoice")
    (rec,) = [r for r in caplog.records if r.name == "dspydantic.extraction"]
    assert rec.levelno == logging.WARNING
    assert (rec.outcome, rec.error_type, rec.attempts, rec.lm_calls) == ("error", "ExtractionError", 2, 2)  # type: ignore[attr-defined]
    assert rec.cost_usd is None  # type: ignore[attr-defined]  # no price for the fake model
    assert "sk-secret-1234" not in caplog.text


def test_cached_answers_are_logged_as_cache_hits(srv: FakeLLMServer, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    srv.respond_from_schema()
    p = Prompter(model=Invoice, model_id="openai/gpt-4o-mini", api_base=srv.base_url, cache=str(tmp_path))
    p.run("Invoice")
    with caplog.at_level(logging.INFO, logger="dspydantic.extraction"):
        result = p.predict_with_confidence("Invoice")
    rec: Any = caplog.records[-1]
    assert rec.cache_hit is True and rec.lm_calls == 0 and rec.cache_hits == 1
    assert result.usage.cost_usd == 0.0 and srv.request_count == 1


@pytest.fixture()
def spans() -> Iterator[Any]:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from dspydantic.integrations.observe import disable_tracing, enable_tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert enable_tracing(provider)
    yield exporter, provider
    disable_tracing()


def test_spans_per_extraction_with_a_child_per_lm_call(srv: FakeLLMServer, spans: Any) -> None:
    from dspydantic.integrations.observe import instrument

    exporter, provider = spans
    srv.add_response("not json")  # one re-ask: two LM calls in one extraction
    srv.respond_from_schema({"vendor": "Acme"})  # grounded in the document: only the re-ask lowers confidence
    p = instrument(Prompter(model=Invoice, model_id="openai/gpt-4o-mini", api_base=srv.base_url), provider)
    p.name = "invoices"
    p.run("Invoice from Acme")
    finished = exporter.get_finished_spans()
    (extraction,) = [s for s in finished if s.name == "dspydantic.extract"]
    calls = [s for s in finished if s.name == "dspydantic.lm_call"]
    assert len(calls) == 2
    assert all(c.parent is not None and c.parent.span_id == extraction.context.span_id for c in calls)
    assert all(c.context.trace_id == extraction.context.trace_id for c in calls)
    attrs = extraction.attributes
    assert attrs["dspydantic.prompter"] == "invoices" and attrs["gen_ai.request.model"] == "openai/gpt-4o-mini"
    assert attrs["dspydantic.attempts"] == 2 and attrs["dspydantic.confidence"] == 0.75
    assert attrs["gen_ai.usage.input_tokens"] == sum(c.attributes["gen_ai.usage.input_tokens"] for c in calls)
    assert attrs["dspydantic.cost_usd"] > 0


async def test_async_extractions_get_their_own_spans(srv: FakeLLMServer, spans: Any) -> None:
    from dspydantic.integrations.observe import instrument

    exporter, provider = spans
    srv.respond_from_schema()
    srv.add_response("{broken")  # the first request of the batch fails once
    p = instrument(Prompter(model=Invoice, model_id="openai/test", api_base=srv.base_url, max_retries=0), provider)
    out = await p.apredict_batch(["a", "b", "c"], max_workers=3, on_error="return")
    finished = exporter.get_finished_spans()
    extractions = [s for s in finished if s.name == "dspydantic.extract"]
    assert len(extractions) == 3
    failed = [s for s in extractions if not s.status.is_ok]
    assert len(failed) == sum(isinstance(x, Exception) for x in out) == 1
    ids = {s.context.span_id for s in extractions}
    calls = [s for s in finished if s.name == "dspydantic.lm_call"]
    assert len(calls) == 3 and {c.parent.span_id for c in calls} == ids  # one call under each extraction


@pytest.mark.parametrize("workers", [1, 3])
def test_a_sync_batch_logs_each_item_once(srv: FakeLLMServer, caplog: pytest.LogCaptureFixture,
                                          workers: int) -> None:
    """``predict_batch`` on an OpenAI-compatible endpoint runs as one async batch on the calling thread
    (``workers > 1``) or item by item on it: either way one record per item, failures included."""
    srv.add_response("{broken")  # the first request of the batch fails (no re-ask)
    srv.respond_from_schema({"vendor": "Acme"})
    p = Prompter(model=Invoice, model_id="openai/test", api_base=srv.base_url, max_retries=0)
    with caplog.at_level(logging.INFO, logger="dspydantic.extraction"):
        out = p.predict_batch(["a", "b", "c", "d"], max_workers=workers, on_error="return")
    records: list[Any] = [r for r in caplog.records if r.name == "dspydantic.extraction"]
    assert len(records) == 4 == srv.request_count
    assert sorted(r.outcome for r in records) == ["error", "ok", "ok", "ok"]
    assert sum(isinstance(x, Exception) for x in out) == 1


def test_each_lm_attempt_gets_a_span_under_the_retry_and_cache_layers(srv: FakeLLMServer, spans: Any,
                                                                     tmp_path: Path) -> None:
    """The tracing backend sits at the bottom of the Prompter's layer stack: a retried transport failure is
    two LM-call spans (the first one failed), a cache hit is none."""
    from dspydantic.integrations.observe import instrument
    from dspydantic.testing import Fault

    exporter, provider = spans
    srv.add_response(Fault(status=503, headers={"Retry-After": "0"}))
    srv.respond_from_schema({"vendor": "Acme"})
    p = instrument(Prompter(model=Invoice, model_id="openai/test", api_base=srv.base_url, cache=str(tmp_path)),
                   provider)
    assert p.run("Invoice from Acme").vendor == "Acme"
    calls = [s for s in exporter.get_finished_spans() if s.name == "dspydantic.lm_call"]
    assert len(calls) == 2 == srv.request_count
    assert [c.status.is_ok for c in calls] == [False, True]
    exporter.clear()
    assert p.run("Invoice from Acme").vendor == "Acme"  # served by the cache layer
    finished = exporter.get_finished_spans()
    assert [s.name for s in finished] == ["dspydantic.extract"] and srv.request_count == 2
    assert finished[0].attributes["dspydantic.cache_hit"] is True


def test_tracing_off_leaves_no_hook(srv: FakeLLMServer) -> None:
    from dspydantic import _observe

    assert _observe._hooks == ()
    srv.respond_from_schema()
    assert Prompter(model=Invoice, model_id="openai/test", api_base=srv.base_url).run("x").vendor


def test_without_opentelemetry_tracing_is_a_no_op(srv: FakeLLMServer) -> None:
    """In a process where ``opentelemetry`` cannot be imported (as when the [otel] extra is not installed)."""
    import subprocess
    import sys

    from ._support import cli_env

    srv.respond_from_schema({"vendor": "Acme"})
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # import opentelemetry -> ImportError\n"
        "from pydantic import BaseModel\n"
        "from dspydantic import Prompter, _observe\n"
        "from dspydantic.integrations.observe import enable_tracing, instrument\n"
        "class M(BaseModel):\n    vendor: str\n"
        f"p = instrument(Prompter(model=M, model_id='openai/test', api_base={srv.base_url!r}))\n"
        "print(enable_tracing(), _observe._hooks, p.run('x').vendor)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), check=True)
    assert out.stdout.split() == ["False", "()", "Acme"]
