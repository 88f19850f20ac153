"""Optimization and evaluation, end to end against the fake OpenAI-compatible server.

The fake's responders play a deterministic LM: they answer extraction requests (those with a
``response_format``) from the document in the last user message — right or wrong depending on the prompt
they were given — and answer DSPy's proposer prompts and our reflection prompts in their formats.
Nothing in DSPy is patched: every request below really went over HTTP.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from dspydantic import ConfigurationError, Example, Prompter
from dspydantic.testing import FakeLLMServer, RecordedRequest, last_user_text, message_text

# --------------------------------------------------------------------------------------------------
# fake LM helpers
# --------------------------------------------------------------------------------------------------


def system_text(body: dict[str, Any]) -> str:
    msgs = body.get("messages") or []
    return message_text(msgs[0].get("content")) if msgs and msgs[0].get("role") == "system" else ""


def is_extraction(body: dict[str, Any]) -> bool:
    fmt = body.get("response_format") or {}
    return fmt.get("type") == "json_schema" and fmt.get("json_schema", {}).get("name") not in ("judgement", "proposal")


def dspy_reply(body: dict[str, Any], value: str = "Extract every field exactly; use null when absent.") -> str | None:
    """An answer in DSPy's ChatAdapter format for a proposer prompt (MIPROv2, COPRO, SIMBA)."""
    m = re.search(r"Your output fields are:\n(.*?)(?:\n\n|All interactions)", system_text(body), re.S)
    names = re.findall(r"`(\w+)`", m.group(1)) if m else []
    if not names:
        return None
    parts = [f"[[ ## {n} ## ]]\n{'1' if 'score' in n else value}" for n in names]
    return "\n\n".join(parts) + "\n\n[[ ## completed ## ]]"


def field_desc(system: str, path: str) -> str:
    """The description of ``path`` in the field list of our rendered system message."""
    m = re.search(rf"^- {re.escape(path)} \([^\n]*?\)(?::([^\n]*))?$", system, re.M)
    return (m.group(1) or "") if m else ""


def n_demos(req: RecordedRequest) -> int:
    return sum(1 for m in req.messages if m.get("role") == "assistant")


class PhaseLog:
    """Marks where each phase (baseline scoring, optimizer stages, candidate scoring) starts in the
    server's request log, from the run's ``on_progress`` stage events."""

    def __init__(self, srv: FakeLLMServer) -> None:
        self.srv = srv
        self.marks: list[tuple[int, str]] = []
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if event["event"] == "stage":
            self.marks.append((self.srv.request_count, str(event["stage"])))

    def phases(self) -> dict[str, list[RecordedRequest]]:
        reqs = self.srv.requests
        out: dict[str, list[RecordedRequest]] = {}
        bounds = [*self.marks, (len(reqs), "end")]
        for (start, name), (stop, _) in itertools.pairwise(bounds):
            out.setdefault(name, []).extend(reqs[start:stop])
        return out


# --------------------------------------------------------------------------------------------------
# models and data
# --------------------------------------------------------------------------------------------------


class Person(BaseModel):
    name: str
    age: int | None = None


PEOPLE = [(f"Person{i:02d}", 20 + i) for i in range(12)]
PERSON_EXAMPLES = [
    Example(text=f"Record {i:02d}: {n} is {a} years old.", expected_output={"name": n, "age": a})
    for i, (n, a) in enumerate(PEOPLE)
]


def person_responder(wrong: Callable[[int, dict[str, Any]], bool]) -> Callable[[dict[str, Any]], Any]:
    """Answers a person record; the age is null when ``wrong(record, body)``; DSPy proposer prompts get
    an instruction; anything else a fenced text."""

    def respond(body: dict[str, Any]) -> Any:
        if not is_extraction(body):
            return dspy_reply(body) or "```\nExtract the fields carefully.\n```"
        m = re.search(r"Record (\d+):", last_user_text(body))
        if not m:
            return "{}"
        i = int(m.group(1))
        name, age = PEOPLE[i]
        return {"name": name, "age": None if wrong(i, body) else age}

    return respond


class Party(BaseModel):
    name: str
    date: str | None = None


class Contract(BaseModel):
    buyer: Party
    seller: Party
    total: float


def contract_docs(n: int, tag: str = "Contract") -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for i in range(n):
        d1, d2 = f"2024-0{1 + i % 9}-1{i % 10}", f"2023-1{i % 3}-0{1 + i % 9}"
        text = f"{tag} {i:02d}: buyer Acme{i} signed {d1}; seller Beta{i} signed {d2}; total {100 + i}."
        docs.append((text, {"buyer": {"name": f"Acme{i}", "date": d1}, "seller": {"name": f"Beta{i}", "date": d2},
                            "total": 100.0 + i}))
    return docs


def contract_responder(docs: list[tuple[str, dict[str, Any]]], *, iso_hurts: Callable[[str], bool] = lambda t: False):
    """Dates come back as ISO 8601 only when that field's description says "ISO 8601" (else DD/MM/YYYY) —
    unless ``iso_hurts(document)``, where the keyword makes them wrong. Reflection prompts for field
    descriptions are answered with a description naming ISO 8601 and the field's own path."""

    def respond(body: dict[str, Any]) -> Any:
        text = last_user_text(body)
        if "Current field descriptions" in text:
            current = json.loads(re.search(r"```\n(.*?)\n```", text, re.S).group(1))
            return {f"{p} description": (f"Date of the {p.split('.')[0]} signature; use ISO 8601 (YYYY-MM-DD)."
                                         if p.endswith("date") else (d or f"The {p}.")) for p, d in current.items()}
        if not is_extraction(body):
            return "```\nExtract the contract fields.\n```"
        system = system_text(body)
        for doc, label in docs:
            if doc.split(":")[0] + ":" in text:
                out = json.loads(json.dumps(label))
                for side in ("buyer", "seller"):
                    iso = "ISO 8601" in field_desc(system, f"{side}.date")
                    if iso == iso_hurts(doc):
                        y, mo, d = out[side]["date"].split("-")
                        out[side]["date"] = f"{d}/{mo}/{y}"
                return out
        return "{}"

    return respond


def approx_tokens(req: RecordedRequest) -> int:
    text = "\n".join(message_text(m.get("content")) for m in req.messages)
    return math.ceil(len(text) / 4)


# --------------------------------------------------------------------------------------------------
# bootstrap end to end, usage of this run only
# --------------------------------------------------------------------------------------------------


def test_bootstrap_end_to_end_result_and_usage_of_this_run(srv: FakeLLMServer) -> None:
    # odd records come back with a wrong (null) age unless the prompt carries demos
    srv.set_responder(person_responder(lambda i, body: i % 2 == 1 and n_demos_body(body) == 0))
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    p.predict("Record 00: Person00 is 20 years old.")  # usage before the run must not be counted
    before = srv.request_count
    events = PhaseLog(srv)

    result = p.optimize(PERSON_EXAMPLES[:10], optimizer="bootstrap", max_bootstrapped_demos=2,
                        max_labeled_demos=2, on_progress=events)

    run_requests = srv.requests[before:]
    assert result.optimizer == "bootstrap" and result.stages == ["bootstrap"]
    assert (result.n_train, result.n_val, result.n_examples) == (8, 2, 10)
    assert result.lm_calls == result.requests == len(run_requests) and result.cache_hits == 0
    assert result.prompt_tokens == sum(approx_tokens(r) for r in run_requests)
    assert result.completion_tokens > 0 and result.wall_time_s > 0
    assert result.estimated_cost_usd is None  # the fake model has no price
    assert 0.0 <= result.baseline_score <= 1.0 and result.candidate_score is not None
    assert set(result.baseline_per_field) == {"name", "age"}
    assert result.demo_budget == 2 and len(result.baseline_state.demos) == 2
    assert p.optimization_result is result
    assert result.optimized_descriptions == p.field_descriptions
    assert "only 2 validation example(s) decided this" in result.message  # honest about a small split
    kinds = {e["event"] for e in events.events}
    assert {"start", "stage", "lm_call", "score", "done"} <= kinds


def n_demos_body(body: dict[str, Any]) -> int:
    return sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")


# --------------------------------------------------------------------------------------------------
# honesty: no leakage, fair baseline, reject a worse candidate
# --------------------------------------------------------------------------------------------------


def test_validation_examples_never_reach_demos_or_candidate_generation(srv: FakeLLMServer) -> None:
    docs = contract_docs(10)
    srv.set_responder(contract_responder(docs))
    examples = [Example(text=t, expected_output=e) for t, e in docs]
    p = Prompter(Contract, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    phases = PhaseLog(srv)

    result = p.optimize(examples, optimizer=["gepa", "bootstrap"], max_metric_calls=30, max_bootstrapped_demos=2,
                        max_labeled_demos=2, on_progress=phases, seed=1)

    by_phase = phases.phases()
    assert set(by_phase) >= {"scoring baseline", "gepa", "bootstrap"}
    val_texts = {r.last_user_text for r in by_phase["scoring baseline"]}
    assert len(val_texts) == result.n_val == 2
    val_keys = {t.split(":")[0] for t in val_texts}

    def mentions_val(req: RecordedRequest, messages: list[dict[str, Any]]) -> bool:
        text = json.dumps(messages)
        return any(k + ":" in text for k in val_keys)

    # during candidate generation / bootstrapping no request mentions a validation document at all
    for name in ("gepa", "bootstrap"):
        assert by_phase[name], name
        for req in by_phase[name]:
            assert not mentions_val(req, req.messages), (name, req.last_user_text[:60])
    # during scoring they are only ever the document being scored, never a demo
    for name, reqs in by_phase.items():
        if name.startswith("scoring"):
            for req in reqs:
                assert not mentions_val(req, req.messages[:-1])
    for demo in (result.candidate_state.demos if result.candidate_state else ()):
        assert not any(k + ":" in str(demo.input) for k in val_keys)


def test_baseline_gets_the_same_demo_budget_as_the_candidate(srv: FakeLLMServer) -> None:
    srv.set_responder(person_responder(lambda i, body: i % 3 == 0))
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    phases = PhaseLog(srv)
    result = p.optimize(PERSON_EXAMPLES[:10], optimizer="bootstrap", max_bootstrapped_demos=3, max_labeled_demos=1,
                        on_progress=phases)
    by_phase = phases.phases()
    assert result.demo_budget == 3
    baseline_requests = by_phase["scoring baseline"]
    assert baseline_requests and all(n_demos(r) == 3 for r in baseline_requests)
    # the baseline's demos are plain labelled training examples: input and label as given
    for demo in result.baseline_state.demos:
        m = re.search(r"Record (\d+):", str(demo.input))
        assert m is not None
        name, age = PEOPLE[int(m.group(1))]
        assert demo.output == {"name": name, "age": age}
    for req in by_phase.get("scoring candidate", []):
        assert n_demos(req) <= 3


def test_candidate_not_better_on_validation_keeps_the_original(srv: FakeLLMServer) -> None:
    train_docs, val_docs = contract_docs(6, "Deal"), contract_docs(5, "Memo")
    # "ISO 8601" in a date description fixes training documents but breaks validation ones (overfitting)
    srv.set_responder(contract_responder(train_docs + val_docs, iso_hurts=lambda doc: doc.startswith("Memo")))
    p = Prompter(Contract, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    original = p.state
    result = p.optimize([Example(text=t, expected_output=e) for t, e in train_docs],
                        valset=[Example(text=t, expected_output=e) for t, e in val_docs],
                        optimizer="gepa", max_metric_calls=30)
    assert result.candidate_state is not None and result.candidate_state != original
    assert result.candidate_score is not None and result.candidate_score < result.baseline_score
    assert result.accepted is False and "not accepted" in result.message
    assert "validation example(s) decided this" not in result.message  # 5 validation examples: no caveat
    assert p.state == original and p.optimization_result is result
    assert result.optimized_score == result.baseline_score
    assert result.optimized_descriptions == p.field_descriptions


# --------------------------------------------------------------------------------------------------
# budgets, determinism, impossible choices
# --------------------------------------------------------------------------------------------------


def test_max_lm_calls_is_a_hard_budget_for_gepa(srv: FakeLLMServer) -> None:
    docs = contract_docs(10)
    srv.set_responder(contract_responder(docs))
    p = Prompter(Contract, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    result = p.optimize([Example(text=t, expected_output=e) for t, e in docs], optimizer="gepa",
                        max_metric_calls=500, max_lm_calls=25)
    assert srv.request_count <= 25
    assert result.requests == srv.request_count
    assert result.budget_exhausted is True
    assert result.candidate_score is not None  # the reserve scored the best candidate seen so far
    assert "budget" in result.message


def test_max_lm_calls_stops_dspy_optimizers_cleanly(srv: FakeLLMServer) -> None:
    srv.set_responder(person_responder(lambda i, body: i % 2 == 1))
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    result = p.optimize(PERSON_EXAMPLES, optimizer="random_search", max_lm_calls=12, num_threads=3,
                        train_split=0.75)
    assert srv.request_count <= 12
    assert result.budget_exhausted is True
    assert result.requests == srv.request_count


def _reflection_callable(docs: list[tuple[str, dict[str, Any]]], calls: list[str]) -> Callable[[str], str]:
    """A user's own reflection LM as a plain callable (answers like the contract responder)."""
    responder = contract_responder(docs)

    def reflection_lm(text: str) -> str:
        calls.append(text)
        out = responder({"messages": [{"role": "user", "content": text}]})
        return out if isinstance(out, str) else json.dumps(out)

    return reflection_lm


def test_a_users_reflection_lm_proposes_and_is_counted_in_the_run(srv: FakeLLMServer) -> None:
    docs = contract_docs(10)
    srv.set_responder(contract_responder(docs))
    calls: list[str] = []
    p = Prompter(Contract, model_id="openai/fake", api_base=srv.base_url, api_key="k", cache=False)
    result = p.optimize([Example(text=t, expected_output=e) for t, e in docs], optimizer="gepa",
                        max_metric_calls=40, reflection_lm=_reflection_callable(docs, calls))
    assert calls and any("Current field descriptions" in c for c in calls)
    # the Prompter's own LM answered no reflection prompt
    assert not any("Current field descriptions" in last_user_text(r.body) for r in srv.requests)
    assert result.accepted and "ISO 8601" in result.optimized_descriptions["buyer.date"]
    assert result.requests == result.lm_calls == srv.request_count + len(calls)


@pytest.mark.parametrize("kind", ["dspy.LM", "backend"])
def test_a_reflection_lm_on_another_endpoint_answers_every_proposal(srv: FakeLLMServer, kind: str) -> None:
    docs = contract_docs(10)
    srv.set_responder(contract_responder(docs))
    with FakeLLMServer() as other:
        other.set_responder(contract_responder(docs))
        if kind == "dspy.LM":
            import dspy

            reflection: Any = dspy.LM("openai/reflector", api_base=other.base_url, api_key="k2", cache=False,
                                      num_retries=0)
        else:
            reflection = Prompter(Contract, model_id="openai/reflector", api_base=other.base_url,
                                  api_key="k2").backend
        p = Prompter(Contract, model_id="openai/fake", api_base=srv.base_url, api_key="k", cache=False)
        result = p.optimize([Example(text=t, expected_output=e) for t, e in docs], optimizer="gepa",
                            max_metric_calls=40, reflection_lm=reflection)
        asked = [r for r in other.requests if "Current field descriptions" in last_user_text(r.body)]
        assert asked and len(asked) == other.request_count
        assert not any("Current field descriptions" in last_user_text(r.body) for r in srv.requests)
        assert all(r.body["model"] == "reflector" for r in other.requests)
        assert result.accepted and "ISO 8601" in result.optimized_descriptions["seller.date"]
        assert result.requests == srv.request_count + other.request_count
        assert result.prompt_tokens == sum(approx_tokens(r) for r in srv.requests + other.requests)


def test_max_lm_calls_counts_the_users_reflection_lm(srv: FakeLLMServer) -> None:
    docs = contract_docs(10)
    srv.set_responder(contract_responder(docs))
    calls: list[str] = []
    p = Prompter(Contract, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    result = p.optimize([Example(text=t, expected_output=e) for t, e in docs], optimizer="gepa",
                        max_metric_calls=500, max_lm_calls=25, reflection_lm=_reflection_callable(docs, calls))
    assert calls
    assert srv.request_count + len(calls) == result.requests <= 25
    assert result.budget_exhausted is True


def test_an_unusable_reflection_lm_fails_before_any_request(srv: FakeLLMServer) -> None:
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    with pytest.raises(ConfigurationError, match="reflection_lm"):
        p.optimize(PERSON_EXAMPLES, optimizer="gepa", reflection_lm=42)
    assert srv.request_count == 0


def test_a_spent_budget_in_miprov2_returns_the_best_program_it_had_evaluated(srv: FakeLLMServer) -> None:
    # odd records lose their age without demos; an unbounded MIPROv2 run here makes 76 requests
    srv.set_responder(person_responder(lambda i, body: i % 2 == 1 and n_demos_body(body) == 0))
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k", cache=False)
    result = p.optimize(PERSON_EXAMPLES, optimizer="miprov2", train_split=0.67, max_lm_calls=50)
    assert result.budget_exhausted is True and srv.request_count <= 50
    assert "the budget ran out during miprov2; kept the best program it had evaluated (1.000 on" in result.message
    # MIPROv2 keeps its best in local variables: this is the program it had scored best, with its demos
    assert result.candidate_state is not None and len(result.candidate_state.demos) > 0
    assert result.candidate_score == 1.0


def test_max_tokens_budget(srv: FakeLLMServer) -> None:
    docs = contract_docs(8)
    srv.set_responder(contract_responder(docs))
    p = Prompter(Contract, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    result = p.optimize([Example(text=t, expected_output=e) for t, e in docs], optimizer="gepa",
                        max_metric_calls=500, max_tokens=4000)
    assert result.budget_exhausted is True
    assert sum(approx_tokens(r) for r in srv.requests) <= 4000 + 400  # one completion may overshoot


def test_same_seed_and_cached_answers_give_the_same_result(srv: FakeLLMServer) -> None:
    docs = contract_docs(10)
    srv.set_responder(contract_responder(docs))
    examples = [Example(text=t, expected_output=e) for t, e in docs]

    def run() -> Any:
        p = Prompter(Contract, model_id="openai/fake", api_base=srv.base_url, api_key="k", cache=True)
        return p.optimize(examples, optimizer="gepa+bootstrap", seed=7, max_metric_calls=30,
                          max_bootstrapped_demos=2, max_labeled_demos=2)

    first = run()
    calls = srv.request_count
    second = run()
    assert srv.request_count == calls  # everything came from the cache
    assert second.lm_calls == 0 and second.cache_hits == second.requests == first.requests
    assert second.candidate_state == first.candidate_state
    assert second.state == first.state and second.accepted == first.accepted
    assert (second.baseline_score, second.candidate_score) == (first.baseline_score, first.candidate_score)
    assert second.candidate_per_field == first.candidate_per_field


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"optimizer": "nonsense"}, "unknown optimizer"),
        ({"optimizer": "miprov2", "train_split": 0.5}, "at least 4 training"),
        ({"optimizer": "bootstrap", "max_lm_calls": 2}, "max_lm_calls"),
        ({"optimizer": "bootstrap", "not_an_option": 1}, "unknown optimizer argument"),
        ({"train_split": 1.5}, "train_split"),
        ({"optimizer": "gepa", "optimize_prompts": ["footer"]}, "optimize_prompts"),
    ],
)
def test_impossible_choices_fail_before_any_request(srv: FakeLLMServer, kwargs: dict[str, Any], match: str) -> None:
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    with pytest.raises(ConfigurationError, match=match):
        p.optimize(PERSON_EXAMPLES[:6], **kwargs)
    assert srv.request_count == 0


def test_no_examples_and_missing_optuna_fail_before_any_request(
    srv: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    one = p.optimize(PERSON_EXAMPLES[:1])  # one example: nothing to validate on (tests/test_compat_016.py)
    assert not one.validated and math.isnan(one.optimized_score)
    with pytest.raises(ConfigurationError, match="no examples"):
        p.optimize([])
    monkeypatch.setitem(sys.modules, "optuna", None)  # how Python marks a package that cannot be imported
    with pytest.raises(ConfigurationError, match="optuna"):
        p.optimize(PERSON_EXAMPLES, optimizer="miprov2")
    assert srv.request_count == 0


def test_auto_says_what_it_picked(srv: FakeLLMServer) -> None:
    srv.set_responder(person_responder(lambda i, body: False))
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    small = p.optimize(PERSON_EXAMPLES[:4], max_metric_calls=6)
    assert small.optimizer == "gepa" and small.optimizer_reason.startswith("auto:")
    larger = p.optimize(PERSON_EXAMPLES[:10])
    assert larger.optimizer == "hard_demos" and "auto" in larger.optimizer_reason


# --------------------------------------------------------------------------------------------------
# GEPA over field descriptions and prompts
# --------------------------------------------------------------------------------------------------


def test_gepa_optimizes_each_path_of_a_nested_class_used_twice(srv: FakeLLMServer) -> None:
    docs = contract_docs(10)
    srv.set_responder(contract_responder(docs))
    p = Prompter(Contract, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    before = p.field_descriptions
    result = p.optimize([Example(text=t, expected_output=e) for t, e in docs], optimizer="gepa",
                        max_metric_calls=40)

    assert result.accepted and result.candidate_score is not None
    assert result.baseline_per_field["buyer.date"] == 0.0 and result.baseline_per_field["seller.date"] == 0.0
    assert result.candidate_per_field["buyer.date"] == 1.0 and result.candidate_per_field["seller.date"] == 1.0
    assert result.candidate_score > result.baseline_score
    d = result.optimized_descriptions
    assert d != before and "ISO 8601" in d["buyer.date"] and "ISO 8601" in d["seller.date"]
    assert d["buyer.date"] != d["seller.date"]  # one class (Party) at two paths: two descriptions
    # the reflection answer is constrained to JSON with exactly the fields asked about (small models need that)
    asks = [r.body for r in srv.requests if "Current field descriptions" in last_user_text(r.body)]
    assert asks
    for body in asks:
        schema = body["response_format"]["json_schema"]["schema"]
        current = json.loads(re.search(r"```\n(.*?)\n```", last_user_text(body), re.S).group(1))
        keys = [f"{path} description" for path in current]  # not bare paths: they read like an extraction
        assert schema["required"] == keys and set(schema["properties"]) == set(keys)
        assert all(prop["maxLength"] > 0 for prop in schema["properties"].values())
    assert p.field_descriptions["seller.date"] == d["seller.date"]
    # the adopted prompter serves the new descriptions
    srv.reset()
    assert p.predict(docs[0][0]).seller.date == docs[0][1]["seller"]["date"]
    assert "ISO 8601" in field_desc(system_text(srv.requests[0].body), "buyer.date")


def test_reflection_prompts_fit_the_reflection_lms_context_window(srv: FakeLLMServer) -> None:
    boiler = " This agreement is governed by the laws of the land and both parties accept its terms." * 6
    docs = [(text + boiler, label) for text, label in contract_docs(10)]
    srv.set_responder(contract_responder(docs))
    window = 1800
    p = Prompter(Contract, model_id="openai/fake", api_base=srv.base_url, api_key="k", context_window=window)
    result = p.optimize([Example(text=t, expected_output=e) for t, e in docs], optimizer="gepa",
                        max_metric_calls=60)
    reflections = [r.body for r in srv.requests if not is_extraction(r.body)]
    assert any("Current field descriptions" in last_user_text(b) for b in reflections)
    for body in reflections:
        prompt_chars = sum(len(message_text(m.get("content"))) for m in body["messages"])
        assert prompt_chars / 3 + body["max_tokens"] <= window, (prompt_chars, body["max_tokens"])
        if "Current field descriptions" in last_user_text(body):  # room for every field's description
            n_fields = len(body["response_format"]["json_schema"]["schema"]["required"])
            assert body["max_tokens"] >= 100 * n_fields
    assert result.accepted and "ISO 8601" in result.optimized_descriptions["buyer.date"]


def test_gepa_sequential_field_by_field(srv: FakeLLMServer) -> None:
    docs = contract_docs(8)
    srv.set_responder(contract_responder(docs))
    p = Prompter(Contract, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    result = p.optimize([Example(text=t, expected_output=e) for t, e in docs], optimizer="gepa", sequential=True,
                        parallel_fields=False, optimize_prompts=False, max_metric_calls=120)
    assert result.accepted
    assert "ISO 8601" in result.optimized_descriptions["buyer.date"]


class Ticket(BaseModel):
    summary: str
    priority: str


def test_template_placeholders_survive_and_literal_braces_do_not_crash(srv: FakeLLMServer) -> None:
    docs = [(f"Ticket {i:02d}: printer {i} is broken", {"summary": f"printer {i} broken", "priority": "high"})
            for i in range(8)]
    reflection_prompts: list[str] = []

    def respond(body: dict[str, Any]) -> Any:
        text = last_user_text(body)
        if "following instruction" in text:
            reflection_prompts.append(text)
            if len(reflection_prompts) % 2 == 1:  # first a proposal that drops {team}
                return "```\nBe CAREFUL with priorities.\n```"
            return '```\nBe CAREFUL with priorities for {team}; answer like {"priority": "high"}.\n```'
        if "cannot be used" in json.dumps(body["messages"]):
            return '```\nBe CAREFUL with priorities for {team}; answer like {"priority": "high"}.\n```'
        for doc, label in docs:
            if doc.split(":")[0] + ":" in text:
                ok = "CAREFUL" in system_text(body) and "for Support" in system_text(body)
                return label if ok else {**label, "priority": "low"}
        return "{}"

    srv.set_responder(respond)
    p = Prompter(Ticket, model_id="openai/fake", api_base=srv.base_url, api_key="k",
                 instruction_prompt="Extract the ticket for {team}. Literal braces {{like this}} stay.")
    examples = [Example(text={"team": "Support", "text": t}, expected_output=e) for t, e in docs]
    result = p.optimize(examples, optimizer="gepa", optimize_descriptions=False,
                        optimize_prompts=["instruction_prompt"], max_metric_calls=40)

    assert any("{team}" in r for r in reflection_prompts)
    repair = [r for r in srv.requests if "cannot be used: it dropped {team}" in json.dumps(r.body)]
    assert repair, "a proposal that dropped {team} must be sent back for repair"
    assert result.accepted
    instruction = result.optimized_instruction_prompt
    assert instruction is not None and "{team}" in instruction and "CAREFUL" in instruction
    srv.reset()
    assert p.predict(text={"team": "Support", "text": docs[0][0]}).priority == "high"
    assert "for Support" in system_text(srv.requests[0].body)


# --------------------------------------------------------------------------------------------------
# the other DSPy optimizers and teleprompter instances run through our renderer
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["miprov2", "copro", "simba", "random_search"])
def test_dspy_optimizers_score_through_the_renderer(srv: FakeLLMServer, name: str) -> None:
    srv.set_responder(person_responder(lambda i, body: i % 3 == 0))
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    kwargs: dict[str, Any] = {"max_steps": 2, "num_candidates": 2} if name == "simba" else {}
    result = p.optimize(PERSON_EXAMPLES, optimizer=name, train_split=0.67, **kwargs)
    assert result.optimizer == name and result.stages == [name]
    extraction = [r for r in srv.requests if is_extraction(r.body)]
    assert extraction and all("Fields:\n- name (string, required)" in system_text(r.body) for r in extraction)
    proposer = [r for r in srv.requests if not is_extraction(r.body)]
    if name in ("miprov2", "copro"):  # (SIMBA proposes rules only when its samples' scores differ)
        assert proposer, "the proposer prompts go through the Prompter's own backend"
    assert result.candidate_state is not None
    assert result.requests == srv.request_count


def test_dspy_console_output_stays_out_of_the_terminal_but_not_other_threads(
    srv: FakeLLMServer, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import threading
    import time

    from dspydantic.optimize._quiet import QuietStream

    srv.set_responder(person_responder(lambda i, body: i % 3 == 0))
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    caplog.set_level(logging.DEBUG, logger="dspydantic.dspy")
    stop = threading.Event()

    def another_part_of_the_app() -> None:
        while not stop.is_set():
            print("app thread still prints")
            time.sleep(0.002)

    chatter = threading.Thread(target=another_part_of_the_app)
    chatter.start()
    try:
        result = p.optimize(PERSON_EXAMPLES, optimizer="miprov2", train_split=0.67)
    finally:
        stop.set()
        chatter.join()
    assert result.stages == ["miprov2"]
    out, err = capsys.readouterr()
    for noise in ("Bootstrapped", "Average Metric", "STEP 1", "it/s]", "mipro_optimizer_v2"):
        assert noise not in out and noise not in err, noise
    assert "app thread still prints" in out
    kept = " ".join(r.getMessage() for r in caplog.records if r.name == "dspydantic.dspy")
    assert "STEP 1" in kept and "Bootstrapped" in kept  # not lost: on the debug log
    assert not isinstance(sys.stdout, QuietStream) and not isinstance(sys.stderr, QuietStream)


def test_a_teleprompter_instance_gets_our_metric(srv: FakeLLMServer) -> None:
    from dspy.teleprompt import BootstrapFewShot

    srv.set_responder(person_responder(lambda i, body: False))
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    tp = BootstrapFewShot(metric=None, max_bootstrapped_demos=2, max_labeled_demos=2)
    result = p.optimize(PERSON_EXAMPLES[:8], optimizer=tp)
    assert result.optimizer == "BootstrapFewShot" and result.demo_budget == 2
    assert tp.metric is not None
    assert result.candidate_state is not None and len(result.candidate_state.demos) == 2


# --------------------------------------------------------------------------------------------------
# evaluate()
# --------------------------------------------------------------------------------------------------


class Resident(BaseModel):
    name: str
    age: int | None = None
    city: str | None = None


def test_evaluate_report_numbers_checked_by_hand(srv: FakeLLMServer) -> None:
    srv.respond_by_substring({
        "doc one": {"name": "Ann", "age": 30, "city": None},  # all right (city correctly absent)
        "doc two": {"name": "Bob", "age": 40, "city": None},  # age wrong, city missed
        "doc three": {"name": "Cid", "age": 25, "city": None},  # age unexpected
    })
    p = Prompter(Resident, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    report = p.evaluate([
        Example(text="doc one", expected_output={"name": "Ann", "age": 30, "city": None}),
        Example(text="doc two", expected_output={"name": "Bob", "age": 41, "city": "Paris"}),
        Example(text="doc three", expected_output={"name": "Cid", "age": None, "city": None}),
    ])
    # scores 1, 1/3, 2/3; (field, value) pairs: tp = 3 + 1 + 2, fp = 0 + 1 + 1, fn = 0 + 2 + 0
    assert report.n == 3
    assert report.score == pytest.approx(2 / 3)
    assert report.per_field == pytest.approx({"name": 1.0, "age": 1 / 3, "city": 2 / 3})
    assert report.precision == pytest.approx(6 / 8)
    assert report.recall == pytest.approx(6 / 8)
    assert report.f1 == pytest.approx(0.75)
    assert report.accuracy == pytest.approx(1 / 3)
    assert [f.index for f in report.failures] == [1, 2]
    assert report.failures[0].predicted == {"name": "Bob", "age": 40, "city": None}
    assert any(line.startswith("age: expected 41") for line in report.failures[0].feedback)
    assert report.usage.calls == 3


def test_unlabelled_examples_are_scored_by_an_llm_judge_on_the_prompters_backend(srv: FakeLLMServer) -> None:
    judged: list[dict[str, Any]] = []

    def respond(body: dict[str, Any]) -> Any:
        if (body.get("response_format") or {}).get("json_schema", {}).get("name") == "judgement":
            judged.append(body)
            return {"score": 0.5, "reason": "partly right"}
        return {"name": "Ann", "age": 30, "city": "Rome"}

    srv.set_responder(respond)
    p = Prompter(Resident, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    report = p.evaluate([Example(text="Ann, 30, lives in Rome")])
    assert judged and report.n == 1
    assert 0.0 < report.score < 1.0


def test_importing_the_library_and_the_optimizer_does_not_import_dspy() -> None:
    code = (
        "import sys, dspydantic, dspydantic.optimize.run, dspydantic.optimize.report; "
        "assert 'dspy' not in sys.modules and 'gepa' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_optimization_result_is_saved_and_loaded_with_the_prompter(srv: FakeLLMServer, tmp_path: Any) -> None:
    from dspydantic.optimize import OptimizationResult

    docs = contract_docs(8)
    srv.set_responder(contract_responder(docs))
    p = Prompter(Contract, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    result = p.optimize([Example(text=t, expected_output=e) for t, e in docs], optimizer="gepa", max_metric_calls=30)
    p.save(str(tmp_path / "saved"))
    q = Prompter.load(str(tmp_path / "saved"), model=Contract, api_base=srv.base_url, api_key="k")
    loaded = q.optimization_result
    assert isinstance(loaded, OptimizationResult)
    assert loaded.to_json() == result.to_json()
    assert q.state == p.state == loaded.state
    assert OptimizationResult.from_json(json.loads(json.dumps(result.to_json()))).to_json() == result.to_json()


class Price(BaseModel):
    amount: float
    currency: str | None = None


class Order(BaseModel):
    customer: Party | None = None
    lines: list[Price] = []
    prices: dict[str, Price] = {}
    billing: Party
    shipping: Party


def test_every_field_path_is_its_own_text_nested_optional_list_and_dict() -> None:
    from dspydantic._render import Renderer
    from dspydantic.optimize.components import FIELD, apply_candidate, field_components, seed_candidate

    p = Prompter(Order, lm=_NoLM())
    paths = field_components(p._base_schema, None, None)
    for path in ("customer.name", "lines[].amount", "prices{}.currency", "billing.date", "shipping.date"):
        assert path in paths
    cand = seed_candidate(p.renderer.descriptions, p.state, paths, ())
    cand[FIELD + "billing.date"] = "When the bill was issued (ISO 8601)."
    cand[FIELD + "prices{}.currency"] = "ISO 4217 code of the price."
    state = apply_candidate(p.state, cand, p.renderer.descriptions)
    fields = Renderer(Order, state).messages("x")[0]["content"]
    assert field_desc(fields, "billing.date") == " When the bill was issued (ISO 8601)."
    assert field_desc(fields, "shipping.date") == ""  # the same class at another path is untouched
    assert field_desc(fields, "prices{}.currency") == " ISO 4217 code of the price."


class _NoLM:
    cache_id = "none"
    context_window = None

    def complete(self, request: Any) -> Any:
        raise AssertionError("no LM call expected")

    async def acomplete(self, request: Any) -> Any:
        raise AssertionError("no LM call expected")

    def close(self) -> None:
        return None


def test_unlabelled_examples_in_optimize_are_judged_through_the_budgeted_backend(srv: FakeLLMServer) -> None:
    judged: list[dict[str, Any]] = []

    def respond(body: dict[str, Any]) -> Any:
        if (body.get("response_format") or {}).get("json_schema", {}).get("name") == "judgement":
            judged.append(body)
            return {"score": 1.0, "reason": "fine"}
        return person_responder(lambda i, b: False)(body)

    srv.set_responder(respond)
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    unlabelled = [Example(text=ex.text) for ex in PERSON_EXAMPLES[:6]]
    result = p.optimize(unlabelled, optimizer="bootstrap", max_bootstrapped_demos=2, max_labeled_demos=0)
    assert judged, "the LLM judge scored the unlabelled examples"
    assert result.baseline_score == 1.0
    assert result.requests == srv.request_count


def test_fallback_baseline_serves_the_baseline_as_scored(srv: FakeLLMServer) -> None:
    # any demos fix the odd records: the baseline beats the original prompts, the candidate only ties it
    srv.set_responder(person_responder(lambda i, body: i % 2 == 1 and n_demos_body(body) == 0))
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    original = p.state
    result = p.optimize(PERSON_EXAMPLES[:10], optimizer="bootstrap", max_bootstrapped_demos=0, max_labeled_demos=2,
                        fallback="baseline")
    assert result.accepted is False
    assert len(result.baseline_state.demos) == 2 and result.baseline_state != original
    assert p.state == result.state == result.baseline_state
    assert result.optimized_score == result.baseline_score
    assert result.original_score is not None and result.original_score < result.baseline_score
    assert "serving the baseline as scored" in result.message

    q = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    kept = q.optimize(PERSON_EXAMPLES[:10], optimizer="bootstrap", max_bootstrapped_demos=0, max_labeled_demos=2)
    assert kept.accepted is False and q.state == original and "result.baseline_state" in kept.message


class _FewerDemos:
    """A teleprompter whose program keeps only the first ``k`` training examples as demos, while it declares
    a demo budget of 4 (so the fair baseline gets 4 plain demos)."""

    max_labeled_demos = 4

    def __init__(self, k: int) -> None:
        self.k = k
        self.metric = None

    def compile(self, student: Any, *, trainset: list[Any]) -> Any:
        program = student.deepcopy()
        program.extract.demos = list(trainset[: self.k])
        return program


def _more_demos_hurt(i: int, body: dict[str, Any]) -> bool:
    """Odd records lose their age with 4 demos, every fourth record with 1-3 demos, none without demos."""
    k = n_demos_body(body)
    return (k >= 4 and i % 2 == 1) or (1 <= k < 4 and i % 4 == 1)


def test_a_candidate_must_also_beat_the_original_prompts_as_they_were(srv: FakeLLMServer) -> None:
    srv.set_responder(person_responder(_more_demos_hurt))
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    original = p.state
    val = PERSON_EXAMPLES[:8]
    result = p.optimize(PERSON_EXAMPLES[8:], valset=val, optimizer=_FewerDemos(2))
    assert len(result.baseline_state.demos) == 4 and result.candidate_state is not None
    assert result.original_score == 1.0  # no demos: every age right
    assert result.baseline_score == 0.75 and result.candidate_score == 0.875  # 4 demos hurt more than 2
    assert result.accepted is False and p.state == original
    assert "above the baseline 0.750 but not above the original prompts as they were (1.000)" in result.message
    assert result.optimized_score == 1.0 and result.per_field_after == result.original_per_field
    # every validation item was scored three times: baseline, original, candidate
    assert result.requests == srv.request_count == 3 * len(val)

    # fallback="baseline" does not serve a baseline that scored below the original prompts
    q = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    kept = q.optimize(PERSON_EXAMPLES[8:], valset=val, optimizer=_FewerDemos(2), fallback="baseline")
    assert q.state == original
    assert "kept the original prompts: they scored 1.000, not below the baseline" in kept.message
    assert "to serve it as scored" not in kept.message


def test_compare_original_false_compares_with_the_fair_baseline_only(srv: FakeLLMServer) -> None:
    srv.set_responder(person_responder(_more_demos_hurt))
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    result = p.optimize(PERSON_EXAMPLES[8:], valset=PERSON_EXAMPLES[:8], optimizer=_FewerDemos(2),
                        compare_original=False)
    assert result.original_score is None and result.accepted is True
    assert len(p.state.demos) == 2 and result.requests == 2 * 8


# --------------------------------------------------------------------------------------------------
# hard_demos: the training examples the prompts get wrong become the demos
# --------------------------------------------------------------------------------------------------


def test_hard_demos_are_the_training_examples_the_prompts_get_wrong(srv: FakeLLMServer) -> None:
    # record 05 (training) and records 09/10 (validation) come back without their age unless a demo shows a
    # record with its age written out: only record 05's labelled answer in the prompt teaches that
    def taught(body: dict[str, Any]) -> bool:
        demos = [message_text(m.get("content")) for m in body.get("messages", [])[1:-1]]
        return any("Record 05:" in d for d in demos)

    srv.set_responder(person_responder(lambda i, body: i in (5, 9, 10) and not taught(body)))
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    phases = PhaseLog(srv)
    result = p.optimize(PERSON_EXAMPLES[:8], valset=PERSON_EXAMPLES[8:12], optimizer="hard_demos",
                        max_labeled_demos=1, on_progress=phases)

    by_phase = phases.phases()
    assert result.optimizer == "hard_demos" and result.demo_budget == 1
    # the stage ran the original prompts (no demos) once over the training split, and nothing else
    stage = by_phase["hard_demos"]
    assert sorted(r.last_user_text[:9] for r in stage) == sorted(e.text[:9] for e in PERSON_EXAMPLES[:8])
    assert all(n_demos(r) == 0 for r in stage)
    # the one demo is the example it got wrong, with its label; the baseline's is the first training example
    assert [str(d.input)[:10] for d in result.candidate_state.demos] == ["Record 05:"]
    assert result.candidate_state.demos[0].output == {"name": "Person05", "age": 25}
    assert "Record 05:" not in str(result.baseline_state.demos[0].input)  # (seed 0's shuffle)
    # it teaches what the baseline's demo does not: accepted on validation, 1.0 against 0.75
    assert (result.baseline_score, result.candidate_score) == (0.75, 1.0)
    assert result.accepted is True and p.state == result.candidate_state
    assert "the prompts got 1 of 8 training example(s) wrong" in result.message


def test_hard_demos_adds_no_demos_where_plain_demos_made_the_original_prompts_worse(srv: FakeLLMServer) -> None:
    srv.set_responder(person_responder(_more_demos_hurt))  # any demo loses some ages; none are lost without
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    phases = PhaseLog(srv)
    result = p.optimize(PERSON_EXAMPLES[:8], valset=PERSON_EXAMPLES[8:12], optimizer="hard_demos",
                        on_progress=phases)
    assert result.original_score == 1.0 and result.baseline_score is not None and result.baseline_score < 1.0
    assert result.candidate_state.demos == ()
    assert "hard_demos: no demos, the baseline's plain demos scored below the original prompts" in result.message
    assert phases.phases().get("hard_demos", []) == []  # no pass over the training split either
    # the candidate is the original prompts: nothing to adopt, the original prompts are kept
    assert result.accepted is False and p.state.demos == ()


def test_the_decision_reports_how_sure_it_is_and_can_ask_for_standard_errors(srv: FakeLLMServer) -> None:
    def taught(body: dict[str, Any]) -> bool:
        demos = [message_text(m.get("content")) for m in body.get("messages", [])[1:-1]]
        return any("Record 05:" in d for d in demos)

    srv.set_responder(person_responder(lambda i, body: i in (5, 9, 10) and not taught(body)))

    def run(**kw: Any) -> Any:
        p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
        return p.optimize(PERSON_EXAMPLES[:8], valset=PERSON_EXAMPLES[8:12], optimizer="hard_demos",
                          max_labeled_demos=1, **kw)

    result = run()
    # validation records 09 and 10 move from 0.5 (age missing) to 1.0; 08 and 11 stay at 1.0
    d = result.difference
    assert (d.n, d.wins, d.losses) == (4, 2, 0)
    assert d.mean == pytest.approx(result.candidate_score - result.baseline_score) == pytest.approx(0.25)
    assert d.stderr == pytest.approx(math.sqrt(0.25 / 3) / 2)  # sample sd of (0, 0, .5, .5) over sqrt(4)
    assert result.accepted is True
    assert ("candidate - baseline +0.250 ± 0.144 (standard error) over 4 validation example(s): higher on 2, "
            "lower on 0, equal on 2") in result.message
    # 0.25 is 1.73 standard errors: asking for 2 keeps the original prompts, and says why
    strict = run(min_standard_errors=2)
    assert strict.accepted is False and strict.candidate_score == 1.0
    assert "above the baseline 0.750 by less than 2 standard error(s) of the difference (0.289)" in strict.message
    assert run(min_standard_errors=1.5).accepted is True
    with pytest.raises(ConfigurationError, match="min_standard_errors"):
        run(min_standard_errors=-1)


def test_paired_difference_edge_cases() -> None:
    from dspydantic.optimize.decision import paired

    assert paired({0: 1.0}, {1: 1.0}) is None  # nothing scored by both
    one = paired({0: 0.5, 1: 1.0}, {0: 1.0})
    assert one is not None and (one.n, one.mean, one.stderr, one.wins) == (1, 0.5, None, 1)
    assert "± " not in one.describe()
    # one validation example has no standard error: the gate asks nothing more than min_improvement then
    from dspydantic.optimize.decision import decide

    assert decide(0.5, 1.0, difference=one, min_standard_errors=3).accepted is True
    two = paired({0: 0.5, 1: 0.5}, {0: 1.0, 1: 0.5})
    assert two is not None and two.stderr == pytest.approx(0.25)
    assert decide(0.5, 0.75, difference=two, min_standard_errors=1).accepted is False
