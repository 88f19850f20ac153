"""Fallback chains and A/B routing on real prompters against fake LLM servers."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from pydantic import BaseModel

from dspydantic import ConfigurationError, ExtractionResult, LMError, Prompter
from dspydantic.integrations.routing import ABRouter, Fallback, effective_confidence, fields_below, stable_fraction
from dspydantic.testing import FakeLLMServer, Fault, Reply

from ._support import cli_env


class Invoice(BaseModel):
    vendor: str
    total: float


#: a document in which every vendor these tests answer is grounded: confidence then reflects re-asks only
DOC = "Invoice from Primary, Secondary, A or B"


def prompter(srv: FakeLLMServer, vendor: str, **kw: Any) -> Prompter:
    srv.respond_from_schema({"vendor": vendor})
    return Prompter(model=Invoice, model_id="openai/gpt-4o-mini", api_base=srv.base_url, retry_backoff=0,
                    lm_retries=0, **kw)


@pytest.fixture()
def two() -> Any:
    with FakeLLMServer() as a, FakeLLMServer() as b:
        yield a, b


def test_fallback_on_error_reports_who_answered_and_sums_usage(two: Any) -> None:
    a, b = two
    chain = prompter(a, "Primary").with_fallback(prompter(b, "Secondary"), min_confidence=0.7)
    assert chain.run(DOC).vendor == "Primary"
    a.add_response(Fault(status=400, body="bad request"))  # not retryable: the primary fails
    result = chain.predict_with_confidence(DOC)
    assert result.data.vendor == "Secondary" and result.extra["answered_by"] == "fallback"
    assert [t["outcome"] for t in result.extra["fallback_trail"]] == ["error", "ok"]
    assert "LMError" in result.extra["fallback_trail"][0]["error"]
    assert result.usage.calls == 1 and result.usage.cost_usd and result.usage.cost_usd > 0


def test_fallback_on_low_confidence(two: Any) -> None:
    a, b = two
    chain = prompter(a, "Primary").with_fallback(prompter(b, "Secondary"), min_confidence=0.8)
    a.add_response("not json")  # one re-ask: confidence 0.75 < 0.8
    result = chain.predict_with_confidence(DOC)
    assert result.extra["answered_by"] == "fallback" and result.data.vendor == "Secondary"
    trail = result.extra["fallback_trail"]
    assert {k: trail[0][k] for k in ("name", "outcome", "confidence")} == {
        "name": "primary", "outcome": "low_confidence", "confidence": 0.75}
    assert trail[0]["fields_below"] == {"vendor": 0.75, "total": 0.75}  # a re-ask lowers every field
    assert result.usage.calls == 3  # two on the primary, one on the secondary
    a.add_response("not json")
    lenient = prompter(a, "Primary").with_fallback(prompter(b, "Secondary"), min_confidence=0.7)
    assert lenient.predict_with_confidence(DOC).extra["answered_by"] == "primary"


def test_fallback_keeps_the_best_low_answer_when_the_last_fails_and_raises_when_all_fail(two: Any) -> None:
    a, b = two
    chain = Fallback([prompter(a, "Primary"), prompter(b, "Secondary")], min_confidence=0.9,
                     names=["big", "small"])
    a.add_response("not json")
    b.add_response(Fault(status=401))
    result = chain.predict_with_confidence(DOC)
    assert result.extra["answered_by"] == "big" and result.confidence == 0.75
    a.add_response(Fault(status=401))
    b.add_response(Fault(status=401))
    with pytest.raises(LMError):
        chain.run(DOC)
    with pytest.raises(ConfigurationError):  # a bad input is not retried elsewhere
        chain.run("   ")
    assert b.request_count == 2


async def test_fallback_async_and_batches(two: Any) -> None:
    a, b = two
    chain = prompter(a, "Primary").with_fallback(prompter(b, "Secondary"))
    a.add_response(Fault(status=400))
    assert (await chain.apredict("x")).vendor == "Secondary"
    out = await chain.apredict_batch(["one", "two", "   "], on_error="return", with_confidence=True)
    assert [r.extra["answered_by"] for r in out[:2]] == ["primary", "primary"]
    assert isinstance(out[2], ConfigurationError)
    assert [x.vendor for x in chain.predict_batch(["one", "two"])] == ["Primary", "Primary"]


def test_effective_confidence_uses_per_field_values_when_present() -> None:
    r = ExtractionResult(data=Invoice(vendor="a", total=1), confidence=0.9, raw_output="{}",
                         field_confidences={"vendor": 0.4, "total": 0.95})
    assert effective_confidence(r) == 0.4
    assert effective_confidence(r, ["total"]) == 0.95
    r.field_confidences = {}
    assert effective_confidence(r) == 0.9


def test_ab_assignment_is_sticky_and_follows_the_weights(two: Any) -> None:
    a, b = two
    router = ABRouter({"a": prompter(a, "A"), "b": prompter(b, "B")}, weights={"a": 0.8, "b": 0.2})
    keys = [f"user-{i}" for i in range(4000)]
    share_b = sum(router.assign(k) == "b" for k in keys) / len(keys)
    assert 0.17 < share_b < 0.23
    variant = router.assign("user-42")
    for _ in range(5):
        result = router.predict_with_confidence("Invoice", key="user-42")
        assert result.extra["variant"] == variant and result.data.vendor == variant.upper()
    # without a key, the input's content decides: the same document always gets the same variant
    first = router.predict_with_confidence("Invoice 7").extra["variant"]
    assert all(router.predict_with_confidence("Invoice 7").extra["variant"] == first for _ in range(3))
    keyed = ABRouter({"a": prompter(a, "A"), "b": prompter(b, "B")}, key=lambda item: item["customer"])
    assert keyed.run({"customer": "c-1", "body": "x"}).vendor == keyed.assign("c-1").upper()


def test_ab_metrics_per_variant(two: Any) -> None:
    a, b = two
    router = ABRouter({"a": prompter(a, "A"), "b": prompter(b, "B")})
    keys = [f"k{i}" for i in range(20)]
    expected = {"a": 0, "b": 0}
    for k in keys:
        expected[router.assign(k)] += 1
    a.add_response(Fault(status=400), times=expected["a"])  # every request to variant a fails
    results = router.predict_batch([DOC] * 20, on_error="return", keys=keys)
    m = router.metrics()
    assert m["a"]["requests"] == expected["a"] and m["a"]["errors"] == expected["a"]
    assert m["b"]["requests"] == expected["b"] and m["b"]["errors"] == 0
    assert m["b"]["mean_confidence"] == 1.0 and m["b"]["prompt_tokens"] > 0 and m["b"]["cost_usd"] > 0
    assert sum(isinstance(r, LMError) for r in results) == expected["a"]


def test_ab_assignment_is_the_same_in_another_process(two: Any) -> None:
    a, b = two
    router = ABRouter({"a": prompter(a, "A"), "b": prompter(b, "B")}, weights=[0.5, 0.5])
    keys = [f"customer-{i}" for i in range(200)]
    code = (
        "import json, sys\n"
        "from pydantic import BaseModel\n"
        "from dspydantic import Prompter\n"
        "from dspydantic.integrations.routing import ABRouter\n"
        "class M(BaseModel):\n    x: str\n"
        "p = Prompter(model=M, model_id='openai/x', api_base='http://127.0.0.1:9/v1')\n"
        "router = ABRouter({'a': p, 'b': p}, weights=[0.5, 0.5])\n"
        "print(json.dumps([router.assign(k) for k in json.loads(sys.stdin.read())]))\n"
    )
    env = cli_env(PYTHONHASHSEED="12345")  # Python's own hash() would differ between the processes
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(keys), capture_output=True, text=True,
                         env=env, check=True)
    theirs = json.loads(out.stdout)
    assert theirs == [router.assign(k) for k in keys]
    assert 60 < theirs.count("a") < 140
    assert stable_fraction("k", "s") == stable_fraction("k", "s") != stable_fraction("k", "t")


def test_router_arguments_are_checked(two: Any) -> None:
    a, _ = two
    p = prompter(a, "A")
    with pytest.raises(ConfigurationError):
        ABRouter({"a": p}, weights={"z": 1.0})
    with pytest.raises(ConfigurationError):
        ABRouter({"a": p, "b": p}, weights=[0, 0])
    with pytest.raises(ConfigurationError):
        Fallback([p])
    with pytest.raises(ConfigurationError):
        p.with_fallback(p, min_confidence=2)


def test_fallback_on_one_fields_own_threshold(two: Any) -> None:
    """A per-field ``min_confidence`` map: the primary is sure of the vendor (0.99) and unsure of the total
    (0.61, from the token log-probabilities of its value); only a threshold on the total sends the document
    to the fallback, which says which field fell short."""
    a, b = two

    def unsure_total(_: dict[str, Any]) -> Any:  # tokens: '{"vendor":' '"Primary",' '"total":' '1.0}'
        return Reply(json.dumps({"vendor": "Primary", "total": 1.0}), logprobs=[-0.01, -0.01, -0.01, -0.5])

    primary = Prompter(model=Invoice, model_id="openai/gpt-4o-mini", api_base=a.base_url, logprobs=True,
                       retry_backoff=0, lm_retries=0)
    a.set_responder(unsure_total)
    secondary = prompter(b, "Secondary")
    on_vendor = primary.with_fallback(secondary, min_confidence={"vendor": 0.9})
    result = on_vendor.predict_with_confidence(DOC)
    assert result.extra["answered_by"] == "primary"
    assert result.field_confidences["total"] == pytest.approx(0.607, abs=0.01)
    on_total = primary.with_fallback(secondary, min_confidence={"total": 0.9, "*": 0.5})
    result = on_total.predict_with_confidence(DOC)
    assert result.extra["answered_by"] == "fallback" and result.data.vendor == "Secondary"
    assert set(result.extra["fallback_trail"][0]["fields_below"]) == {"total"}
    # one number: every field must reach it (the lowest, the total, decides)
    assert primary.with_fallback(secondary, min_confidence=0.7).predict_with_confidence(
        DOC).extra["answered_by"] == "fallback"
    with pytest.raises(ConfigurationError, match=r"names field\(s\) \['totl'\] that Invoice does not have"):
        primary.with_fallback(secondary, min_confidence={"totl": 0.9})
    with pytest.raises(ConfigurationError, match="must be a number in"):
        Fallback([primary, secondary], min_confidence={"total": "high"})


def test_fields_below_a_number_or_a_map() -> None:
    r = ExtractionResult(data=Invoice(vendor="a", total=1), confidence=0.4, raw_output="{}",
                         field_confidences={"vendor": 0.4, "total": 0.95})
    assert fields_below(r, 0.5) == {"vendor": (0.4, 0.5)}
    assert fields_below(r, 0.5, ["total"]) == {}
    assert fields_below(r, {"total": 0.99}) == {"total": (0.95, 0.99)}
    assert fields_below(r, {"total": 0.9}) == {}
    assert fields_below(r, {"total": 0.9, "*": 0.5}) == {"vendor": (0.4, 0.5)}
    r.field_confidences = {}  # no per-field values: the overall confidence, against the highest threshold
    assert fields_below(r, {"total": 0.3, "vendor": 0.6}) == {"*": (0.4, 0.6)}
    assert fields_below(r, 0.3) == {}
