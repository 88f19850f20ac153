"""The HTTP service end to end: ``dspydantic serve`` in a subprocess under uvicorn on a free port, saved
prompters answering through the fake OpenAI-compatible server, requests over real sockets."""

from __future__ import annotations

import base64
import importlib.util
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

from dspydantic import Prompter
from dspydantic.testing import FakeLLMServer, Reply, example_for_schema, message_text

from ._support import cli_env, make_pdf, start_serve, stop

TOKEN = "test-token-7f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Invoice(BaseModel):
    vendor: str = Field(description="Company that issued the invoice")
    total: float = Field(description="Grand total")


class Receipt(BaseModel):
    shop: str
    items: list[str]


def responder(body: dict[str, Any]) -> Any:
    text = " ".join(message_text(m.get("content")) for m in body["messages"])  # the document, even on a re-ask
    if "BROKEN" in text:
        return "this is not JSON"
    if "SLOW" in text:
        schema = body["response_format"]["json_schema"]["schema"]
        return Reply(content=example_for_schema(schema) | {"vendor": "Slow"}, delay=1.5)
    schema = body["response_format"]["json_schema"]["schema"]
    value = example_for_schema(schema)
    if "vendor" in value:
        value["vendor"] = "Acme" if "Acme" in text else "Other"
    return value


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as srv:
        srv.set_responder(responder)
        yield srv


@pytest.fixture(scope="module")
def saved(llm: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prompters")
    out = {}
    for name, model in (("invoice", Invoice), ("receipt", Receipt)):
        p = Prompter(model=model, model_id="openai/gpt-4o-mini", api_base=llm.base_url, retry_backoff=0)
        p.save(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def service(saved: dict[str, Path], llm: FakeLLMServer) -> Iterator[str]:
    proc, url = start_serve(  # the endpoint from the command line: never the one a saved directory names
        str(saved["invoice"]), f"receipt={saved['receipt']}", "--max-body-bytes", "4096", "--api-base", llm.base_url,
        env=cli_env(DSPYDANTIC_API_TOKEN=TOKEN),
    )
    yield url
    code, err = stop(proc)
    assert code in (0, -signal.SIGTERM), err  # uvicorn re-raises SIGTERM after its graceful shutdown


def post(url: str, json_body: Any = None, **kw: Any) -> httpx.Response:
    return httpx.post(url, json=json_body, headers=kw.pop("headers", AUTH), timeout=30, **kw)


def test_extract_returns_the_prompters_model_with_usage_and_cost(service: str, llm: FakeLLMServer) -> None:
    llm.reset()
    r = post(f"{service}/extract/invoice", {"text": "Invoice from Acme, total 10 EUR"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["data"] == {"vendor": "Acme", "total": 1.0}
    assert body["confidence"] == 1.0 and body["prompter"] == "invoice"
    assert len(body["prompter_version"]) == 12
    assert llm.chat_requests[-1].last_user_text.endswith("Invoice from Acme, total 10 EUR")
    usage = body["usage"]
    assert usage["calls"] == 1 and usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    # the price comes from LiteLLM's bundled table, read here independently
    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.origin is not None
    table = json.loads((Path(spec.origin).parent / "model_prices_and_context_window_backup.json").read_text())
    price = table["gpt-4o-mini"]
    expected = price["input_cost_per_token"] * usage["prompt_tokens"] + price["output_cost_per_token"] * usage[
        "completion_tokens"]
    assert usage["cost_usd"] == pytest.approx(expected)
    r = post(f"{service}/extract/receipt", {"text": "Corner shop: bread"})
    assert r.status_code == 200 and set(r.json()["data"]) == {"shop", "items"}


def test_a_folder_name_names_the_prompter_and_two_prompters_have_no_plain_extract(service: str) -> None:
    index = httpx.get(service + "/", headers=AUTH).json()["prompters"]
    assert set(index) == {"invoice", "receipt"}
    assert index["invoice"]["model"] == "Invoice"
    assert post(f"{service}/extract", {"text": "x"}).status_code == 404
    assert post(f"{service}/extract/nope", {"text": "x"}).status_code == 404


def test_bearer_token_is_required_except_for_probes(service: str) -> None:
    r = post(f"{service}/extract/invoice", {"text": "Invoice from Acme"}, headers={})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = post(f"{service}/extract/invoice", {"text": "Invoice from Acme"}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert httpx.get(f"{service}/metrics").status_code == 401
    assert TOKEN not in r.text
    assert httpx.get(f"{service}/healthz").status_code == 200
    ready = httpx.get(f"{service}/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "prompters": {"invoice": "ok", "receipt": "ok"}}


def test_oversized_bodies_get_413_declared_or_streamed(service: str, llm: FakeLLMServer) -> None:
    before = llm.request_count
    r = post(f"{service}/extract/invoice", {"text": "x" * 5000})
    assert r.status_code == 413 and "4096 bytes" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted while reading
        yield b'{"text": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    r = httpx.post(f"{service}/extract/invoice", content=chunks(),
                   headers={**AUTH, "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413
    assert llm.request_count == before  # nothing reached the LM


def test_malformed_and_wrongly_typed_bodies_get_422_with_a_clear_message(service: str) -> None:
    r = httpx.post(f"{service}/extract/invoice", content=b'{"text": ', headers={**AUTH, "Content-Type":
                                                                                   "application/json"})
    assert r.status_code == 422 and "JSON decode error" in r.text
    r = post(f"{service}/extract/invoice", {"text": 12})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "text"]
    r = post(f"{service}/extract/invoice", {})
    assert r.status_code == 422 and "nothing to extract from" in r.text
    r = post(f"{service}/extract/invoice", {"text": "a", "pdf_path": "/etc/passwd"})
    assert r.status_code == 422 and "pdf_path" in r.text  # the server's files are not reachable
    r = post(f"{service}/extract/invoice", {"text": "   "})
    assert r.status_code == 422 and r.json()["detail"]["type"] == "ConfigurationError"
    r = post(f"{service}/extract/invoice", {"text": "a", "min_confidence": 2})
    assert r.status_code == 422


def test_min_confidence_refuses_with_the_confidence_in_the_detail(service: str, llm: FakeLLMServer) -> None:
    # the first answer does not validate: one re-ask, confidence 0.75
    llm.add_response("not json")
    r = post(f"{service}/extract/invoice", {"text": "Invoice from Acme", "min_confidence": 0.9})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail["type"] == "LowConfidence" and detail["confidence"] == 0.75 and detail["min_confidence"] == 0.9
    assert detail["result"]["data"] == {"vendor": "Acme", "total": 1.0}  # the refused answer is not lost
    llm.add_response("not json")
    r = post(f"{service}/extract/invoice", {"text": "Invoice from Acme", "min_confidence": 0.7})
    assert r.status_code == 200 and r.json()["confidence"] == 0.75


def test_batch_keeps_each_items_error_in_its_slot(service: str) -> None:
    items = [
        {"text": "Invoice from Acme"},
        {"text": "   "},
        {"text": "BROKEN invoice"},
        {"pdf_base64": "%%% not base64"},
        {"pdf_base64": base64.b64encode(make_pdf("Invoice from Acme GmbH, total 99 EUR")).decode()},
    ]
    r = post(f"{service}/extract/invoice/batch", {"items": items})
    assert r.status_code == 200, r.text
    slots = r.json()["results"]
    assert [s["ok"] for s in slots] == [True, False, False, False, True]
    assert slots[0]["result"]["data"]["vendor"] == "Acme"
    assert slots[1]["error"]["type"] == "ConfigurationError"
    assert slots[2]["error"]["type"] == "ExtractionError" and slots[2]["error"]["attempts"] == 3
    assert "base64" in slots[3]["error"]["message"]
    assert slots[4]["result"]["data"]["vendor"] == "Acme"  # the PDF's text layer reached the LM
    r = post(f"{service}/extract/invoice/batch", {"items": []})
    assert r.status_code == 422


def test_the_input_options_reach_the_pdf_and_image_readers(service: str, llm: FakeLLMServer) -> None:
    from .test_inputs import image_pdf

    pdf = base64.b64encode(image_pdf(3)).decode()
    body = {"pdf_base64": pdf, "pdf_mode": "images", "pdf_dpi": 36, "max_pdf_pages": 2}
    r = post(f"{service}/extract/invoice", body)
    assert r.status_code == 200, r.text
    parts = llm.chat_requests[-1].body["messages"][-1]["content"]
    assert sum(1 for p in parts if p.get("type") == "image_url") == 2  # two of the three pages, as asked
    odd = base64.b64encode(b"\x00\x00\x00\x0cjP  custom image payload").decode()
    r = post(f"{service}/extract/invoice", {"image_base64": odd})
    assert r.status_code == 422  # bytes no sniffer knows are refused...
    r = post(f"{service}/extract/invoice", {"image_base64": odd, "image_mime": "image/jp2"})
    assert r.status_code == 200, r.text  # ...unless the caller says what they are
    parts = llm.chat_requests[-1].body["messages"][-1]["content"]
    assert any(p.get("type") == "image_url" and p["image_url"]["url"].startswith("data:image/jp2;base64,")
               for p in parts)
    for bad in ({"pdf_dpi": 5}, {"max_pdf_pages": 0}, {"image_mime": "text/html"}):
        r = post(f"{service}/extract/invoice", {"pdf_base64": pdf, **bad})
        assert r.status_code == 422 and next(iter(bad)) in r.text


def test_metrics_count_requests_extractions_tokens_errors_and_confidence(service: str) -> None:
    post(f"{service}/extract/invoice", {"text": "Invoice from Acme"})
    post(f"{service}/extract/invoice", {"text": "BROKEN"})
    text = httpx.get(f"{service}/metrics", headers=AUTH).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("dspydantic_extractions_total", prompter="invoice", variant="", outcome="ok") >= 2
    assert value("dspydantic_extractions_total", prompter="invoice", variant="", outcome="error") >= 1
    assert value("dspydantic_errors_total", prompter="invoice", type="ExtractionError") >= 1
    assert value("dspydantic_tokens_total", prompter="invoice", kind="prompt") > 0
    assert value("dspydantic_lm_calls_total", prompter="invoice") >= 5  # 3 attempts for BROKEN alone
    assert value("dspydantic_cost_usd_total", prompter="invoice") > 0
    assert value("dspydantic_confidence_count", prompter="invoice", variant="") >= 2
    assert value("dspydantic_http_requests_total", route="/extract/invoice", status="200") >= 1
    assert value("dspydantic_http_requests_total", route="/extract/invoice", status="401") >= 1
    assert value("dspydantic_http_request_duration_seconds_count", route="/extract/invoice") >= 2


def test_openapi_shows_each_prompters_model_as_its_response(service: str) -> None:
    schema = httpx.get(f"{service}/openapi.json").json()
    comps = schema["components"]["schemas"]

    def data_schema(path: str) -> dict[str, Any]:
        ref = schema["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        data = comps[ref.rsplit("/", 1)[-1]]["properties"]["data"]
        return comps[data["$ref"].rsplit("/", 1)[-1]]

    assert set(data_schema("/extract/invoice")["properties"]) == {"vendor", "total"}
    assert set(data_schema("/extract/receipt")["properties"]) == {"shop", "items"}
    assert "/extract/invoice/batch" in schema["paths"]
    assert "HTTPBearer" in json.dumps(schema["components"].get("securitySchemes", {}))


def test_the_event_loop_is_free_while_an_lm_call_waits(service: str) -> None:
    done: dict[str, Any] = {}
    t = threading.Thread(target=lambda: done.update(r=post(f"{service}/extract/invoice", {"text": "SLOW"})))
    t.start()
    time.sleep(0.3)
    started = time.perf_counter()
    assert httpx.get(f"{service}/healthz").status_code == 200
    assert time.perf_counter() - started < 0.5  # not behind the 1.5 s LM call
    t.join()
    assert done["r"].status_code == 200 and done["r"].json()["data"]["vendor"] == "Slow"


def test_graceful_shutdown_finishes_the_request_in_flight(saved: dict[str, Path], llm: FakeLLMServer) -> None:
    proc, url = start_serve(str(saved["invoice"]), "--api-base", llm.base_url)
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(r=httpx.post(f"{url}/extract", json={"text": "SLOW"}, timeout=30)))
    t.start()
    deadline = time.monotonic() + 10
    while llm.in_flight == 0 and time.monotonic() < deadline:  # the request reached the LM
        time.sleep(0.02)
    assert llm.in_flight >= 1
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.ConnectError):  # no new connections once shutting down
        httpx.get(f"{url}/healthz", timeout=2)
    t.join(timeout=30)
    assert out["r"].status_code == 200 and out["r"].json()["data"]["vendor"] == "Slow"
    code, err = stop(proc)
    assert code in (0, -signal.SIGTERM), err  # uvicorn re-raises SIGTERM after its graceful shutdown


def test_workers_split_local_threads_and_metrics_sum_over_workers(saved: dict[str, Path], llm: FakeLLMServer) -> None:
    env = cli_env(OPENAI_BASE_URL=llm.base_url)
    env.pop("DSPYDANTIC_LOCAL_THREADS", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc, url = start_serve(str(saved["invoice"]), "--workers", "2", env=env)
    try:
        for i in range(6):
            with httpx.Client() as c:  # a new connection each time: both workers may answer
                assert c.post(f"{url}/extract", json={"text": f"Invoice from Acme {i}"}).status_code == 200
        text = httpx.get(f"{url}/metrics").text
        total = sum(
            s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "dspydantic_extractions_total" and s.labels.get("outcome") == "ok"
        )
        assert total == 6
    finally:
        code, err = stop(proc)
    assert code in (0, -signal.SIGTERM), err  # uvicorn re-raises SIGTERM after its graceful shutdown
    import os

    threads = max(1, (os.cpu_count() or 1) // 2)
    assert f"2 workers, {threads} llama.cpp thread(s) each (DSPYDANTIC_LOCAL_THREADS)" in err


# -- field-level confidence, grounding and the review page (issue 11 "Use it") -------------------------
# The fake LM answers vendor "Other" for a document without "Acme": a value the document does not contain,
# so the vendor is ungrounded and its confidence low, while the total (a number) keeps 1.0.


def test_min_confidence_per_field_and_the_grounding_in_the_response(service: str) -> None:
    r = post(f"{service}/extract/invoice", {"text": "Invoice from Acme, total 10 EUR"})
    body = r.json()
    assert body["spans"] == {"vendor": [[13, 17]]} and body["ungrounded"] == [] and body["calibrated"] is False
    assert len(body["document_id"]) == 64 and set(body["field_confidences"]) == {"vendor", "total"}

    doc = {"text": "Invoice from Globex, total 20 USD"}
    r = post(f"{service}/extract/invoice", {**doc, "min_confidence": {"total": 0.9}})
    assert r.status_code == 200, r.text  # only the total is held to 0.9
    body = r.json()
    assert body["ungrounded"] == ["vendor"] and body["spans"] == {}
    vendor = body["field_confidences"]["vendor"]
    assert vendor < 0.5 and body["field_confidences"]["total"] == 1.0
    r = post(f"{service}/extract/invoice", {**doc, "min_confidence": {"vendor": 0.5, "*": 0.9}})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail["type"] == "LowConfidence" and detail["fields"] == {"vendor": vendor}
    assert detail["min_confidence"] == {"vendor": 0.5, "*": 0.9} and f"vendor {vendor:.3f} < 0.500" in detail["message"]
    assert detail["result"]["ungrounded"] == ["vendor"]
    r = post(f"{service}/extract/invoice", {**doc, "min_confidence": 0.9})  # one number: every field
    assert r.status_code == 422 and r.json()["detail"]["fields"] == {"vendor": vendor}
    r = post(f"{service}/extract/invoice", {**doc, "min_confidence": {"totl": 0.9}})
    assert r.status_code == 422 and "'totl'" in r.json()["detail"]["message"]
    r = post(f"{service}/extract/invoice", {**doc, "min_confidence": {"total": 1.5}})
    assert r.status_code == 422  # out of [0, 1]: refused by the request schema
    r = post(f"{service}/extract/invoice/batch", {"items": [doc, {"text": "Invoice from Acme"}],
                                                  "min_confidence": {"vendor": 0.5}})
    assert [s["ok"] for s in r.json()["results"]] == [False, True]


def test_review_page_of_a_recent_answer(service: str) -> None:
    text = "Invoice from Acme & Söhne <b>, total 10 EUR"
    body = post(f"{service}/extract/invoice", {"text": text}).json()
    r = httpx.get(f"{service}/review/{body['document_id']}", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    page = r.text
    assert '<mark class="high" data-fields="vendor" data-start="13" data-end="17"' in page
    assert "&lt;b&gt;" in page and "<b>" not in page  # the document is escaped
    assert httpx.get(f"{service}/review/{body['document_id']}").status_code == 401
    assert httpx.get(f"{service}/review/{'0' * 64}", headers=AUTH).status_code == 404


def test_serve_with_a_store_records_every_extraction(saved: dict[str, Path], llm: FakeLLMServer,
                                                     tmp_path: Path) -> None:
    """``serve --store``: answers and failures are recorded under their document id, routed to the review
    queue by the per-field threshold, and reviewable from the store (``--review-keep 0``: nothing in memory)."""
    url = f"sqlite:///{tmp_path / 'served.db'}"
    proc, base = start_serve(str(saved["invoice"]), "--store", url, "--review-below", '{"vendor": 0.5}',
                             "--review-keep", "0", "--api-base", llm.base_url)
    try:
        ok = httpx.post(f"{base}/extract", json={"text": "Invoice from Acme, total 10"}, timeout=30).json()
        unsure = httpx.post(f"{base}/extract", json={"text": "Invoice from Globex, total 20"}, timeout=30).json()
        broken = httpx.post(f"{base}/extract", json={"text": "BROKEN invoice"}, timeout=30)
        assert ok["status"] == "done" and unsure["status"] == "review"
        assert broken.status_code == 502 and broken.json()["detail"]["status"] == "failed"
        page = httpx.get(f"{base}/review/{unsure['document_id']}", timeout=30)
        assert page.status_code == 200 and "not found in source" in page.text and "(review)" in page.text
        page = httpx.get(f"{base}/review/{ok['document_id']}", timeout=30).text
        assert 'data-fields="vendor" data-start="13" data-end="17"' in page
        again = httpx.post(f"{base}/extract", json={"text": "Invoice from Acme, total 10"}, timeout=30).json()
        assert again["document_id"] == ok["document_id"]
    finally:
        code, err = stop(proc)
    assert code in (0, -signal.SIGTERM), err

    from dspydantic.store import ExtractionStore

    with ExtractionStore(url) as store:
        docs = {d.id: d for d in store.documents()}
        assert len(docs) == 3  # the repeated document is one row
        assert docs[ok["document_id"]].spans == {"vendor": [[13, 17]]}
        assert docs[unsure["document_id"]].ungrounded == ["vendor"]
        assert docs[broken.json()["detail"]["document_id"]].error_type == "ExtractionError"
        assert [d.id for d in store.pending()] == [unsure["document_id"], broken.json()["detail"]["document_id"]]
        assert {d.prompter_name for d in docs.values()} == {"invoice"}
    bad = start_serve_error(str(saved["invoice"]), "--store", "not a url")
    assert bad.returncode == 2 and "not a database URL" in bad.stderr
    bad = start_serve_error(str(saved["invoice"]), "--store", url, "--review-below", "high")
    assert bad.returncode == 2 and "--review-below" in bad.stderr
    bad = start_serve_error(str(saved["invoice"]), "--min-confidence", '{"vendr": 0.5}')
    assert bad.returncode == 2 and "--min-confidence (serving 'invoice') names field(s) ['vendr']" in bad.stderr


def start_serve_error(*args: str) -> Any:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "dspydantic", "serve", *args, "--port", "1"], capture_output=True,
                          text=True, env=cli_env(), timeout=60)
