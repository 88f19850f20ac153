"""The service's OpenAPI schema fuzzed by Schemathesis (positive and negative bodies): no 500, ever; plus the
app-level behaviours that need an in-process app (readiness of an unreachable LM, routers served)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from dspydantic import ConfigurationError, Prompter  # noqa: E402
from dspydantic.integrations.routing import ABRouter  # noqa: E402
from dspydantic.server import create_app  # noqa: E402
from dspydantic.testing import FakeLLMServer  # noqa: E402

from ._support import free_port  # noqa: E402

EXAMPLES = 60  # over the three POST operations, positive and negative bodies (bounded: the suite stays quick)


class Address(BaseModel):
    city: str
    zip: str | None = None


class Invoice(BaseModel):
    vendor: str = Field(description="Company that issued the invoice")
    total: float
    lines: list[str] = []
    address: Address | None = None


@pytest.fixture(scope="module")
def app() -> Iterator[Any]:
    with FakeLLMServer() as srv:
        srv.respond_from_schema()
        p = Prompter(model=Invoice, model_id="openai/test", api_base=srv.base_url, api_key="k", max_retries=0)
        yield create_app({"invoice": p}, max_body_bytes=20_000, max_batch_items=5)


def test_no_generated_body_gets_a_500(app: Any) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [op.ok() for op in schema.get_all_operations()]
    posts = [op for op in operations if op.method.upper() == "POST"]
    assert {op.path for op in posts} == {"/extract", "/extract/invoice", "/extract/invoice/batch"}
    strategy = st.one_of(
        [op.as_strategy(generation_mode=mode) for op in posts for mode in (GenerationMode.POSITIVE,
                                                                           GenerationMode.NEGATIVE)]
    )
    seen: dict[int, int] = {}

    @given(case=strategy)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        response = case.call()
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (case.method, case.path, case.body, response.text)
        if response.status_code >= 400:
            assert response.json()["detail"], response.text  # a message, not an empty error

    check()
    assert sum(seen.values()) >= EXAMPLES // 2 and any(400 <= s < 500 for s in seen)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{", 422, "JSON decode error"),
        (b"[1, 2]", 422, "valid dictionary"),
        (b'{"text": ["a"]}', 422, "text"),
        (b'{"text": "a", "min_confidence": "high"}', 422, "min_confidence"),
        (b'{"text": "a", "extra_field": 1}', 422, "extra_field"),
        (b'{"image_base64": "not an image"}', 422, "base64"),
        (b'{"text": "' + b"x" * 30_000 + b'"}', 413, "20000 bytes"),
    ],
)
def test_bad_bodies_get_a_4xx_with_a_clear_message(app: Any, body: bytes, status: int, needle: str) -> None:
    with TestClient(app) as client:
        r = client.post("/extract/invoice", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert needle in r.text


def test_readyz_names_an_unreachable_lm() -> None:
    port = free_port()  # nothing listens there
    p = Prompter(model=Invoice, model_id="openai/test", api_base=f"http://127.0.0.1:{port}/v1", api_key="k")
    with TestClient(create_app({"invoice": p})) as client:
        r = client.get("/readyz")
        assert client.get("/healthz").status_code == 200
    assert r.status_code == 503
    assert r.json()["ready"] is False and f"127.0.0.1:{port} unreachable" in r.json()["prompters"]["invoice"]
    with FakeLLMServer() as srv:  # reachable: asked over HTTP through the backend's own transport
        p = Prompter(model=Invoice, model_id="openai/test", api_base=srv.base_url, api_key="k")
        with TestClient(create_app({"invoice": p})) as client:
            r = client.get("/readyz")
        probes = [q for q in srv.requests if q.path.endswith("/models")]
    assert r.status_code == 200 and r.json() == {"ready": True, "prompters": {"invoice": "ok"}}
    assert len(probes) == 1 and probes[0].method == "GET" and probes[0].headers.get("authorization") == "Bearer k"


def test_a_router_and_a_fallback_chain_are_served_like_prompters() -> None:
    with FakeLLMServer() as a, FakeLLMServer() as b:
        a.respond_from_schema({"vendor": "A"})
        b.respond_from_schema({"vendor": "B"})
        pa = Prompter(model=Invoice, model_id="openai/test", api_base=a.base_url, api_key="k")
        pb = Prompter(model=Invoice, model_id="openai/test", api_base=b.base_url, api_key="k")
        router = ABRouter({"a": pa, "b": pb})
        app = create_app({"ab": router, "safe": pa.with_fallback(pb)})
        with TestClient(app) as client:
            got = {client.post("/extract/ab", json={"text": "x", "key": f"user-{i}"}).json()["answered_by"]
                   for i in range(20)}
            r = client.post("/extract/ab", json={"text": "x", "key": "user-1"})
            assert r.json()["answered_by"] == router.assign("user-1")
            assert r.json()["data"]["vendor"] == router.assign("user-1").upper()
            assert client.post("/extract/safe", json={"text": "x"}).json()["answered_by"] == "primary"
            # an answer of the router has a document id of its variant, and a review page
            page = client.get(f"/review/{r.json()['document_id']}")
            assert page.status_code == 200 and "Extraction review" in page.text
            metrics = client.get("/metrics").text
    assert got == {"a", "b"}
    assert 'dspydantic_extractions_total{outcome="ok",prompter="ab",variant="a"}' in metrics


def test_cors_is_off_unless_origins_are_given(app: Any) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with TestClient(app) as client:
        r = client.options("/extract/invoice", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    with FakeLLMServer() as srv:
        srv.respond_from_schema()
        p = Prompter(model=Invoice, model_id="openai/test", api_base=srv.base_url, api_key="k")
        with TestClient(create_app({"invoice": p}, cors_origins=["https://app.example"])) as client:
            r = client.options("/extract/invoice", headers=preflight)
            assert r.headers["access-control-allow-origin"] == "https://app.example"
            other = client.options("/extract/invoice", headers={**preflight, "Origin": "https://evil.example"})
            assert "access-control-allow-origin" not in other.headers


def test_batch_items_are_extracted_at_most_batch_concurrency_at_once() -> None:
    with FakeLLMServer() as srv:
        srv.respond_from_schema()
        srv.latency = 0.2
        p = Prompter(model=Invoice, model_id="openai/test", api_base=srv.base_url, api_key="k")
        with TestClient(create_app({"invoice": p}, batch_concurrency=2)) as client:
            r = client.post("/extract/invoice/batch", json={"items": [{"text": f"doc {i}"} for i in range(6)]})
        assert r.status_code == 200 and all(slot["ok"] for slot in r.json()["results"])
        assert srv.request_count == 6 and srv.max_in_flight == 2


def test_a_default_min_confidence_applies_to_requests_without_their_own() -> None:
    """``create_app(min_confidence=...)`` (``serve --min-confidence``): a per-field map over every request
    that names none; a request's own threshold replaces it; a map naming no field of a model is refused."""
    with FakeLLMServer() as srv:
        srv.respond_from_schema({"vendor": "Ghost"})  # not in the documents below: an ungrounded vendor
        p = Prompter(model=Invoice, model_id="openai/test", api_base=srv.base_url, api_key="k")
        with TestClient(create_app({"invoice": p}, min_confidence={"vendor": 0.5})) as client:
            refused = client.post("/extract/invoice", json={"text": "Invoice from Acme, total 3"})
            own = client.post("/extract/invoice", json={"text": "Invoice from Acme, total 3", "min_confidence": 0})
            grounded = client.post("/extract/invoice", json={"text": "Invoice from Ghost, total 3"})
        assert refused.status_code == 422 and set(refused.json()["detail"]["fields"]) == {"vendor"}
        assert own.status_code == 200 and "vendor" in own.json()["ungrounded"]
        assert grounded.status_code == 200 and grounded.json()["spans"]["vendor"] == [[13, 18]]
        with pytest.raises(ConfigurationError, match=r"names field\(s\) \['vendr'\]"):
            create_app({"invoice": p}, min_confidence={"vendr": 0.5})
