"""The public API on the real embedded model (Qwen2.5-Coder-0.5B via llama.cpp): run, confidence, async,
batch, optimize, save/load. Slow-ish (a few seconds per extraction on 2 cores) but run in CI too."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.local,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs dspydantic[local]"),
]

from dspydantic import Example, Prompter  # noqa: E402
from dspydantic.demo import Invoice, load_records  # noqa: E402

EASY = {"email-web-studio", "text-roofer", "invoice-office-supply", "email-garden-clearance"}


@pytest.fixture(scope="module")
def prompter() -> Prompter:
    return Prompter(model=Invoice, model_id="local")


@pytest.fixture(scope="module")
def easy() -> list:  # type: ignore[type-arg]
    return [r for r in load_records() if r.id in EASY]


def test_a_handful_of_invoices_extracted_correctly(prompter: Prompter, easy: list) -> None:  # type: ignore[type-arg]
    assert len(easy) == 4
    right = 0
    for record in easy:
        res = prompter.predict_with_confidence(record.text)
        inv = res.data
        assert isinstance(inv, Invoice)  # constrained decoding: always parses and validates
        assert res.attempts == 1 and res.usage.calls == 1 and res.usage.prompt_tokens > 0
        assert res.confidence_source == "logprobs" and 0.0 < res.confidence <= 1.0
        exp = record.expected
        right += (
            inv.currency.value if hasattr(inv.currency, "value") else inv.currency
        ) == exp["currency"] and abs(inv.total - exp["total"]) < 0.01
    assert right >= 3, f"only {right} of 4 easy invoices had the right total and currency"


def test_async_and_batch_on_the_local_model(prompter: Prompter, easy: list) -> None:  # type: ignore[type-arg]
    texts = [r.text for r in easy[:2]]
    sync = prompter.predict_batch(texts, max_workers=2)

    async def main() -> list:  # type: ignore[type-arg]
        return await prompter.apredict_batch(texts, max_workers=2)

    out = asyncio.run(main())
    assert [type(x) for x in out] == [Invoice, Invoice]
    assert [x.model_dump() for x in out] == [x.model_dump() for x in sync]  # greedy: same answers


def test_optimize_save_load_on_the_local_model(prompter: Prompter, tmp_path: Path) -> None:
    records = load_records()
    train = [r.example() for r in records[:6]]
    p = Prompter(model=Invoice, model_id="local")
    result = p.optimize(train, optimizer="bootstrap", max_lm_calls=14, seed=0, num_threads=1)
    assert result.lm_calls + result.cache_hits <= 14
    assert result.n_train + result.n_val == 6
    if result.accepted:
        assert result.optimized_score > result.baseline_score
    else:
        assert p.state == p._original_state
    p.save(tmp_path / "p")
    loaded = Prompter.load(tmp_path / "p", model=Invoice, model_id="local")
    assert loaded.state == p.state
    doc = records[-1].text
    assert loaded.run(doc) == p.run(doc)


def test_gepa_reflection_on_the_local_model_yields_field_descriptions(caplog: pytest.LogCaptureFixture) -> None:
    """The 0.5B model answers GEPA's field-description reflection in a usable form: JSON under a schema whose
    keys are "<path> description" (asked with bare paths as keys it answered with extracted values)."""
    import json
    import logging

    records = load_records()
    train = [r.example() for r in records[:5]]
    proposals: list[list[str]] = []

    def on_progress(event: dict) -> None:  # type: ignore[type-arg]
        if event["event"] == "proposal":
            proposals.append(list(event["components"]))

    caplog.set_level(logging.DEBUG, logger="dspydantic")
    p = Prompter(model=Invoice, model_id="local", cache=False)
    result = p.optimize(train, optimizer="gepa", optimize_prompts=False, max_metric_calls=10, max_lm_calls=20,
                        num_threads=1, seed=0, on_progress=on_progress)
    assert any(c.startswith("field:") for comps in proposals for c in comps), proposals
    replies = [str(r.args[1]) for r in caplog.records if r.msg.startswith("gepa: proposed descriptions for")]
    assert replies
    for reply in replies:
        data = json.loads(reply)
        assert data and all(key.endswith(" description") for key in data), data
        assert all(len(text.split()) >= 3 for text in data.values()), data  # sentences, not single values
    assert result.lm_calls + result.cache_hits <= 20
    assert result.candidate_state is not None


def test_example_list_for_evaluate_on_the_local_model(prompter: Prompter) -> None:
    held_out = [Example(text=r.text, expected_output=r.expected) for r in load_records()[-2:]]
    report = prompter.evaluate(held_out, num_threads=1)
    assert report.n == 2 and 0.0 <= report.score <= 1.0 and "vendor" in report.per_field


def test_absent_is_an_answer_by_default_on_the_local_model() -> None:
    """The 0.5B model fills every field it is shown; by default the local backend nulls an optional free
    string value the document does not contain (SNIPS weather zero-shot 0.10 -> 0.59, docs/benchmarks.md)."""
    from pydantic import BaseModel

    class Weather(BaseModel):
        city: str | None = None
        country: str | None = None
        state: str | None = None
        condition_temperature: str | None = None
        timeRange: str | None = None

    text = "Will it be rainy in Tenino?"
    made_up = Prompter(model=Weather, model_id="local", require_grounding=False).run(text)
    assert made_up.country is not None and made_up.country not in text  # invented without the check
    default = Prompter(model=Weather, model_id="local")
    assert default.grounded_fields == ["city", "condition_temperature", "country", "state", "timeRange"]
    out = default.run(text)
    assert out.city == "Tenino"
    assert out.country is None and out.state is None and out.timeRange is None


def test_choice_biases_on_the_local_model(tmp_path: Path) -> None:
    """The local backend records each choice field's decision and applies the biases a state carries there;
    they survive save/load (dspydantic._choices; optimize() fits them, tests/test_choice_bias.py)."""
    from typing import Literal

    from pydantic import BaseModel

    from dspydantic._plan import build_request

    class Request(BaseModel):
        urgency: Literal["low", "medium", "high"]
        billing: bool = False

    text = "Hello, could you send me a copy of last month's cleaning schedule when you have a moment? Thanks."
    plain = Prompter(model=Request, model_id="local")
    response = plain._lm.complete(build_request(plain, plain.renderer, plain.renderer.messages(text)))
    decided = response.choice_logprobs or {}
    assert set(decided) == {"urgency", "billing"}
    assert set(decided["urgency"]) == {'"low"', '"medium"', '"high"'} and set(decided["billing"]) == {"true", "false"}
    assert all(-30 < lp <= 0 for values in decided.values() for lp in values.values())
    first = plain.run(text)
    # a bias large enough for the value the model liked least, and for the boolean it did not choose
    least = min(decided["urgency"], key=lambda k: decided["urgency"][k])
    other = "false" if first.billing else "true"
    biased = Prompter(model=Request, model_id="local")
    biased.state = biased.state.replace(choice_bias={"urgency": {least: 10.0}, "billing": {other: 10.0}})
    out = biased.run(text)
    assert f'"{out.urgency}"' == least and out.billing is (other == "true")
    biased.save(tmp_path / "p")
    loaded = Prompter.load(tmp_path / "p", model=Request, model_id="local")
    assert loaded.state.choice_bias == biased.state.choice_bias
    assert loaded.run(text) == out
