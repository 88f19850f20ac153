"""Choice biases: where a model decides an enum or boolean field, per-value biases fitted by ``optimize()`` on
the training answers (dspydantic._choices, dspydantic.optimize.calibrate).

The optimizer is driven end to end through a backend that decodes "with logits" the way the local one does: it
reports each choice field's log-probabilities where it decides it and applies the biases the request's schema
carries. The real local backend's side (recording, applying, the saved state) is in test_local_prompter.py;
the fake OpenAI server checks that an API backend never receives the biases.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from dspydantic import ConfigurationError, Example, PersistenceError, Prompter
from dspydantic._choices import (
    BIAS_KEY,
    apply_choice_bias,
    choice_biases,
    choice_fields,
    open_value,
    strip_choice_bias,
    value_key,
)
from dspydantic._schema import model_schema
from dspydantic.lm._base import LMRequest, LMResponse
from dspydantic.optimize.calibrate import fit_choice_bias
from dspydantic.testing import FakeLLMServer, last_user_text


class Flags(BaseModel):
    spam: bool = False
    lang: Literal["en", "de"] | None = None


class Ticket(BaseModel):
    subject: str
    urgency: Literal["low", "medium", "high"]
    flags: Flags = Flags()
    tags: list[Literal["a", "b"]] = []


# --------------------------------------------------------------------------------------------------
# the schema side
# --------------------------------------------------------------------------------------------------


def test_choice_fields_and_the_bias_key_in_the_schema() -> None:
    schema = model_schema(Ticket)
    assert choice_fields(schema) == {
        "urgency": ["low", "medium", "high"], "flags.spam": [True, False], "flags.lang": ["en", "de", None],
    }
    bias = {"urgency": {'"low"': 1.5}, "flags.spam": {"true": -2.0}, "subject": {'"x"': 1.0}}
    biased = apply_choice_bias(schema, bias)
    assert choice_biases(biased) == {"urgency": {'"low"': 1.5}, "flags.spam": {"true": -2.0}}  # subject: no choice
    assert BIAS_KEY not in json.dumps(schema)  # a copy: the model's schema is untouched
    assert strip_choice_bias(biased) == schema and strip_choice_bias(schema) is schema
    assert value_key("low") == '"low"' and value_key(True) == "true" and value_key(None) == "null"


@pytest.mark.parametrize(("text", "where"), [
    ('{"urgency":', (("urgency",), "")),
    ('{"urgency": "me', (("urgency",), '"me')),
    ('{"urgency": "medium"', None),  # complete: nothing is being decided
    ('{"subject": "a \\" b", "flags": {"spam": tr', (("flags", "spam"), "tr")),
    ('{"tags": ["a", ', (("tags", 1), "")),
    ('{"subject": "x", "fl', None),  # inside a key
    ('{"a": 1}', None),
    ("not json", None),
])
def test_open_value_reads_a_json_prefix(text: str, where: Any) -> None:
    assert open_value(text) == where


# --------------------------------------------------------------------------------------------------
# the fit
# --------------------------------------------------------------------------------------------------


def _answers(pairs: list[tuple[str, float, float, float]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(label, logprob low, medium, high) -> recorded answers."""
    return [({"urgency": {'"low"': lo, '"medium"': me, '"high"': hi}}, {"urgency": label})
            for label, lo, me, hi in pairs]


def test_prior_matching_moves_a_value_the_model_never_picks() -> None:
    # "low" is always second: the model answers medium for every low ticket
    pairs = [("low", -1.0, -0.6, -3.0)] * 5 + [("medium", -2.0, -0.3, -3.0)] * 5 + [("high", -3.0, -1.5, -0.3)] * 3
    fitted, lines = fit_choice_bias(_answers(pairs), ["urgency"])
    bias = fitted["urgency"]
    assert bias['"low"'] > bias['"medium"']
    assert all(abs(b) <= 10 for b in bias.values())

    def choice(lo: float, me: float, hi: float) -> str:
        scored = {'"low"': lo, '"medium"': me, '"high"': hi}
        return max(scored, key=lambda k: scored[k] + bias.get(k, 0.0))

    assert choice(-1.0, -0.6, -3.0) == '"low"' and choice(-2.0, -0.3, -3.0) == '"medium"'
    assert choice(-3.0, -1.5, -0.3) == '"high"'
    assert lines == ["urgency 0.62 -> 1.00 on 13 training answers"]


def test_no_bias_where_it_does_not_help_or_there_are_too_few_answers() -> None:
    right = [("low", -0.2, -2.0, -3.0), ("medium", -2.0, -0.2, -3.0), ("high", -3.0, -2.0, -0.2)] * 3
    assert fit_choice_bias(_answers(right), ["urgency"]) == ({}, [])
    few = [("low", -1.0, -0.6, -3.0)] * 5
    assert fit_choice_bias(_answers(few), ["urgency"]) == ({}, [])
    # a label the decision did not offer, a field in a list and an unlabelled field are not fitted
    odd = [({"tags[]": {'"a"': -1.0, '"b"': -0.1}}, {"tags": ["a"]})] * 8
    assert fit_choice_bias(odd, ["tags[]", "urgency"]) == ({}, [])


# --------------------------------------------------------------------------------------------------
# optimize() on a backend that decodes with logits
# --------------------------------------------------------------------------------------------------

#: the scripted model's logits for urgency: calm tickets are "low" but it prefers "medium" by 0.5 nats
_CALM = {"low": -1.0, "medium": -0.5, "high": -3.0}
_BUSY = {"low": -3.0, "medium": -0.3, "high": -2.0}
_FIRE = {"low": -4.0, "medium": -1.5, "high": -0.2}


def _ticket(i: int) -> tuple[str, str]:
    kind = ("calm", "busy", "fire")[i % 3]
    return f"Ticket {i:02d}: a {kind} request", {"calm": "low", "busy": "medium", "fire": "high"}[kind]


TICKETS = [Example(text=t, expected_output={"subject": f"Ticket {i:02d}", "urgency": u})
           for i, (t, u) in enumerate(map(_ticket, range(24)))]


class Subject(BaseModel):
    subject: str
    urgency: Literal["low", "medium", "high"]


class LogitsModel:
    """An LMBackend playing a model that decodes with logits: urgency is the argmax of its logits plus the
    biases the schema carries, and each answer reports the decision's log-probabilities."""

    cache_id = "scripted:logits"
    context_window = None
    choice_bias = True

    def __init__(self, calm: dict[str, float] | None = None) -> None:
        self.schemas: list[dict[str, Any]] = []
        self.calm = calm or _CALM

    def complete(self, request: LMRequest) -> LMResponse:
        assert request.json_schema is not None
        self.schemas.append(request.json_schema)
        text = last_user_text({"messages": request.messages})
        kind = text.split(" a ")[-1].split()[0]
        logits = {"calm": self.calm, "busy": _BUSY, "fire": _FIRE}[kind]
        bias = choice_biases(request.json_schema).get("urgency", {})
        urgency = max(logits, key=lambda v: logits[v] + bias.get(value_key(v), 0.0))
        answer = {"subject": text.split(":")[0], "urgency": urgency}
        return LMResponse(text=json.dumps(answer), prompt_tokens=10, completion_tokens=10,
                          choice_logprobs={"urgency": {value_key(v): lp for v, lp in logits.items()}})

    async def acomplete(self, request: LMRequest) -> LMResponse:
        return self.complete(request)

    def close(self) -> None:
        return None


def test_optimize_fits_choice_biases_and_the_candidate_wins_with_them(tmp_path: Path) -> None:
    backend = LogitsModel()
    p = Prompter(Subject, lm=backend)
    result = p.optimize(TICKETS[:16], valset=TICKETS[16:], optimizer="hard_demos", max_labeled_demos=0)
    bias = p.state.choice_bias["urgency"]
    assert bias['"low"'] - bias['"medium"'] > 0.5  # enough to turn the calm tickets to "low"
    assert "choice biases fitted: urgency 0.62 -> 1.00 on 16 training answers" in result.message
    # the candidate (biases) beats the baseline (none) on the 8 validation tickets: every calm one was wrong
    assert result.accepted is True and result.candidate_score == 1.0
    assert result.baseline_score is not None and result.baseline_score < 1.0
    # served: the biases travel in the request's schema; a calm ticket is now "low"
    assert p.run("Ticket 99: a calm request").urgency == "low"
    assert choice_biases(backend.schemas[-1]) == {"urgency": bias}
    # they are saved and loaded with the prompt state
    p.save(tmp_path / "p")
    q = Prompter.load(tmp_path / "p", model=Subject, lm=LogitsModel())
    assert q.state.choice_bias == p.state.choice_bias
    assert q.run("Ticket 98: a calm request").urgency == "low"
    # choice_bias=False: no fitting pass, no biases
    r = Prompter(Subject, lm=LogitsModel())
    off = r.optimize(TICKETS[:16], valset=TICKETS[16:], optimizer="hard_demos", max_labeled_demos=0,
                     choice_bias=False)
    assert r.state.choice_bias == {} and "choice biases" not in off.message
    assert off.lm_calls < result.lm_calls


def test_no_fitting_pass_when_the_training_split_has_no_wrong_choice() -> None:
    backend = LogitsModel(calm={"low": -0.2, "medium": -2.0, "high": -3.0})  # right on every ticket
    p = Prompter(Subject, lm=backend)
    result = p.optimize(TICKETS[:16], valset=TICKETS[16:], optimizer="hard_demos", max_labeled_demos=0)
    assert "choice biases: not fitted, the prompts chose every enum and boolean field right" in result.message
    assert p.state.choice_bias == {}
    # the training pass of hard_demos (16 tickets) and one scoring of the 8 validation tickets (the candidate is
    # the baseline: no demos, no biases)
    assert result.lm_calls == len(backend.schemas) == result.n_train + result.n_val


def test_an_api_backend_never_receives_the_biases_and_optimize_does_not_fit_them(
    srv: FakeLLMServer,
) -> None:
    srv.set_responder(lambda body: {"subject": "Ticket 01", "urgency": "low"})
    p = Prompter(Subject, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    p.state = p.state.replace(choice_bias={"urgency": {'"low"': 2.0}})  # e.g. a prompter fitted on the local model
    assert p.run("Ticket 01: a calm request").urgency == "low"
    sent = srv.requests[-1].body["response_format"]["json_schema"]["schema"]
    assert BIAS_KEY not in json.dumps(sent)
    before = srv.request_count
    q = Prompter(Subject, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    result = q.optimize(TICKETS[:8], valset=TICKETS[8:12], optimizer="hard_demos", max_labeled_demos=0)
    assert "choice biases" not in result.message and q.state.choice_bias == {}
    assert srv.request_count - before == result.requests  # no fitting pass on an API backend


@pytest.mark.parametrize("bias", [math.nan, 10.5, -math.inf, "1", True])
def test_a_choice_bias_out_of_bounds_is_refused_when_set(bias: Any) -> None:
    p = Prompter(Subject, lm=LogitsModel())
    with pytest.raises(ConfigurationError, match=r"choice_bias\['urgency'\]\['\"low\"'\] must be a number within"):
        p.state = p.state.replace(choice_bias={"urgency": {'"low"': bias}})
    p.state = p.state.replace(choice_bias={"urgency": {'"low"': -10.0}})  # the bound itself is fine


@pytest.mark.parametrize("raw", [
    {"urgency": {'"low"': math.inf}}, {"urgency": {'"low"': 11.0}}, {"urgency": {'"low"': "1"}},
    {"urgency": {'"low"': True}}, {"urgency": [1.0]}, ["urgency"],
])
def test_a_saved_choice_bias_out_of_bounds_is_refused(tmp_path: Path, raw: Any) -> None:
    p = Prompter(Subject, lm=LogitsModel())
    p.state = p.state.replace(choice_bias={"urgency": {'"low"': 1.0}})
    p.save(tmp_path / "p")
    d = tmp_path / "p"
    rel = "prompts.json"
    data = json.loads((d / rel).read_text())

    def put(node: Any) -> bool:
        if isinstance(node, dict):
            if "choice_bias" in node:
                node["choice_bias"] = raw
                return True
            return any(put(v) for v in node.values())
        return False

    assert put(data)
    # what whoever controls the folder can do: rewrite the file and its checksum in the manifest
    blob = json.dumps(data).encode()
    (d / rel).write_bytes(blob)
    manifest = json.loads((d / "dspydantic.json").read_text())
    manifest["files"][rel] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    (d / "dspydantic.json").write_text(json.dumps(manifest))
    with pytest.raises(PersistenceError, match=r"choice_bias|Infinity is not JSON"):
        Prompter.load(tmp_path / "p", model=Subject, lm=LogitsModel())
