"""Field typing (``PromptState.field_values``, :mod:`dspydantic._retype`): a value the answer puts in the wrong one
of the model's nullable string fields is moved to the field whose labelled values it is like. The typer on its own,
then end to end against the fake OpenAI-compatible server: what run() and predict_with_confidence() return, what
optimize() fits and decides, and what a saved prompter keeps and refuses."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from dspydantic import Example, PersistenceError, Prompter
from dspydantic._render import PromptState
from dspydantic._retype import FieldTyper, fit_field_values, retypable_fields, retype_json
from dspydantic._schema import model_schema
from dspydantic.errors import ConfigurationError
from dspydantic.testing import FakeLLMServer, last_user_text

from .test_load_attacks import edit_json


class Place(BaseModel):
    city: str | None = None
    state: str | None = None
    country: str | None = None
    park: str | None = None


TOWNS = ["Dunedin", "Vigus", "Deaver", "Sanborn", "Gambier", "Netawaka", "Berville", "Wyatte", "Lansford", "Slade",
         "Maumee", "Gost", "Conda", "Antlers"]
CODES = ["ND", "TN", "SC", "MN", "WI", "AK", "MI", "HI", "MH", "KY", "UT", "FL"]
COUNTRIES = ["Finland", "Rwanda", "Norway", "Sweden", "Hungary", "Czechia", "Guyana", "Mongolia", "Greece", "Turkey",
             "Guam", "Montserrat", "Iceland", "Lesotho", "Uganda", "Tonga"]
PARKS = ["Agate Fossil Beds National Monument", "Navajo National Monument", "Bartholomew's Cobble National Preserve"]
#: (text, label): the labels of a small training split (about a dozen values of each location field: the typer
#: moves a value only on that much evidence)
LABELLED = (
    [(f"Will it rain in {t} {c}?", {"city": t, "state": c}) for t, c in zip(TOWNS, CODES, strict=False)]
    + [(f"Is it warm in {c}", {"country": c}) for c in COUNTRIES]
    + [(f"Fog in {t}", {"city": t}) for t in TOWNS[len(CODES):]]
    + [(f"Sun at {p}", {"park": p}) for p in PARKS]
)
FIELDS = ["city", "state", "country", "park"]


def typer() -> FieldTyper:
    return FieldTyper(fit_field_values([label for _, label in LABELLED], FIELDS))


# --------------------------------------------------------------------------------------------------
# the typer
# --------------------------------------------------------------------------------------------------


def test_a_value_is_moved_to_the_empty_field_whose_labelled_values_it_is_like() -> None:
    t = typer()
    fixed, moves = retype_json(t, {"city": "Conda", "state": None, "country": "VT", "park": None})
    assert fixed == {"city": "Conda", "state": "VT", "country": None, "park": None}
    assert [(m.source, m.target, m.value) for m in moves] == [("country", "state", "VT")]
    fixed, _ = retype_json(t, {"city": "Okanogan National Forest", "state": None, "country": None, "park": None})
    assert fixed["park"] == "Okanogan National Forest" and fixed["city"] is None


def test_words_no_label_had_move_nothing_and_a_filled_field_is_never_overwritten() -> None:
    t = typer()
    # an unseen name (one capitalised word: every location field had such values) stays where the model put it
    for field in ("city", "country"):
        data = {f: None for f in FIELDS} | {field: "Haiti"}
        assert retype_json(t, data) == (data, [])
    # the state's code would fit "state", but that field already has a value: nothing moves
    data = {"city": None, "state": "Kansas", "country": "KY", "park": None}
    assert retype_json(t, data) == (data, [])


def test_a_value_given_to_several_fields_stays_in_the_one_it_fits_best() -> None:
    fixed, moves = retype_json(typer(), {"city": "Navajo National Monument", "state": None,
                                         "country": "Navajo National Monument", "park": None})
    # dropped from one of the two, then moved from the other to the park it is like
    assert fixed == {"city": None, "state": None, "country": None, "park": "Navajo National Monument"}
    assert [m.target for m in moves] == [None, "park"]


def test_typing_is_fitted_only_where_labels_give_each_value_one_field() -> None:
    assert fit_field_values([{"city": "Oslo", "country": "oslo "}, {"city": "Rome"}], FIELDS) == {}
    assert fit_field_values([{"city": "Oslo"}, {"city": "Rome"}], FIELDS) == {}  # one field has values
    assert fit_field_values([{"city": "Oslo", "country": "Norway", "state": 3}], FIELDS) == {
        "city": ("Oslo",), "country": ("Norway",)}


class Mixed(BaseModel):
    a: str | None = None
    b: str
    c: Literal["x", "y"] | None = None
    d: int | None = None
    e: str | None = None
    f: list[str] | None = None


def test_only_nullable_plain_string_fields_take_part() -> None:
    assert retypable_fields(model_schema(Mixed)) == ["a", "e"]


# --------------------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------------------


def swapping_responder(body: dict[str, Any]) -> Any:
    """A small model's mistakes: a two-letter code after a town is answered as the country, a monument as the
    city; everything else right."""
    text = last_user_text(body).split("\n")[-1]
    out: dict[str, Any] = {f: None for f in FIELDS}
    if m := re.search(r"in ([A-Z][a-z]+),? ([A-Z]{2})\b", text):
        out["city"], out["country"] = m.group(1), m.group(2)
    elif m := re.search(r"at ([A-Z][\w ]+ National \w+)", text):
        out["city"] = m.group(1)
    elif m := re.search(r"in ([A-Z][a-z]+)", text):
        out["country"] = m.group(1)
    return out


def served(srv: FakeLLMServer, **state: Any) -> Prompter[Place]:
    p = Prompter(Place, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    p.state = p.state.replace(**state)
    return p


def test_run_and_predict_with_confidence_serve_the_corrected_answer_with_its_evidence(srv: FakeLLMServer) -> None:
    srv.set_responder(swapping_responder)
    values = fit_field_values([label for _, label in LABELLED], FIELDS)
    text = "Will it be foggy in Dunedin ND?"
    assert served(srv).run(text) == Place(city="Dunedin", country="ND")  # the model's answer, as it is
    p = served(srv, field_values=values)
    assert p.run(text) == Place(city="Dunedin", state="ND")
    r = p.predict_with_confidence(text)
    assert r.data == Place(city="Dunedin", state="ND")
    # the value's grounding went with it: the span of "ND" is the state's now, the country has none
    assert [text[a:b] for a, b in r.spans["state"]] == ["ND"] and "country" not in r.spans
    assert r.field_signals["country"].null and not r.field_signals["state"].null
    assert r.field_signals["state"].grounding == 1.0


def test_optimize_fits_field_typing_on_the_training_labels_and_validation_decides(srv: FakeLLMServer) -> None:
    srv.set_responder(swapping_responder)
    train = [Example(text=t, expected_output=label) for t, label in LABELLED]
    val = [Example(text="Is it cold in Deaver, SC", expected_output={"city": "Deaver", "state": "SC"}),
           Example(text="Rain in Maumee OH", expected_output={"city": "Maumee", "state": "OH"}),
           Example(text="Sun at Cedar Breaks National Monument",
                   expected_output={"park": "Cedar Breaks National Monument"}),
           Example(text="Is it warm in Haiti", expected_output={"country": "Haiti"})]
    p = Prompter(Place, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    result = p.optimize(train, valset=val, optimizer="nearest_demos", max_labeled_demos=2)
    cand = result.candidate_state
    assert cand is not None
    fitted = fit_field_values([lb for _, lb in LABELLED], FIELDS)  # the same values, in the split's order
    assert {f: sorted(v) for f, v in cand.field_values.items()} == {f: sorted(v) for f, v in fitted.items()}
    assert "field typing: the labelled values of 4 string field(s) on 33 training example(s)" in result.message
    # the model's answers never change (the fake server ignores the demos): the typing alone lifts validation
    assert result.baseline_score == 0.625 and result.candidate_score == 1.0 and result.accepted
    assert p.run("Rain in Maumee OH") == Place(city="Maumee", state="OH")
    # switched off: the candidate is the pool alone, and wins nothing
    q = Prompter(Place, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    off = q.optimize(train, valset=val, optimizer="nearest_demos", max_labeled_demos=2, field_typing=False)
    assert off.candidate_state is not None and not off.candidate_state.field_values
    assert off.candidate_score == 0.625 and not off.accepted


def test_saved_typing_is_loaded_as_it_was_and_is_part_of_the_fingerprint(srv: FakeLLMServer, tmp_path: Path) -> None:
    srv.set_responder(swapping_responder)
    p = served(srv)
    before = p.fingerprint
    p.state = p.state.replace(field_values=fit_field_values([label for _, label in LABELLED], FIELDS))
    assert p.fingerprint != before
    p.save(tmp_path / "p")
    q = Prompter.load(tmp_path / "p", model=Place, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    assert q.state == p.state and q.fingerprint == p.fingerprint
    assert q.run("Rain in Maumee OH") == Place(city="Maumee", state="OH")


def test_a_state_refuses_typing_it_could_not_save() -> None:
    for bad in ("Oslo", ["Oslo", 3], [b"ND"]):
        with pytest.raises(ConfigurationError, match=r"field_values\['city'\] must be a list of strings"):
            PromptState().replace(field_values={"city": bad, "state": ["ND"]})
    assert PromptState().replace(field_values={"city": ["Oslo"]}).field_values == {"city": ("Oslo",)}


@pytest.mark.parametrize(("value", "why"), [
    (["ND"], "field_values is not an object"),
    ({"state": "ND"}, r"field_values\['state'\] is not a list"),
    ({"state": [1]}, r"field_values\['state'\] is not a list"),
    ({"state": ["x" * 201]}, r"field_values\['state'\] is not a list"),
])
def test_tampered_typing_is_refused_with_what_is_wrong(tmp_path: Path, value: Any, why: str) -> None:
    p = Prompter(Place, model_id="openai/fake", api_base="http://127.0.0.1:9/v1", api_key="k")
    p.state = p.state.replace(field_values={"city": ("Oslo",), "state": ("ND",)})
    p.save(tmp_path / "p")

    def tamper(data: dict[str, Any]) -> dict[str, Any]:
        data["optimized"]["field_values"] = value
        return data

    edit_json(tmp_path / "p", "prompts.json", tamper)
    with pytest.raises(PersistenceError, match=why):
        Prompter.load(tmp_path / "p", model=Place, model_id="openai/fake", api_base="http://127.0.0.1:9/v1")


def test_typing_that_names_fields_the_model_does_not_have_moves_nothing_there(srv: FakeLLMServer) -> None:
    # a saved state may name anything: only the model's nullable string fields take part
    srv.set_responder(swapping_responder)
    p = served(srv, field_values={"country": ("Norway",), "secret": ("ND", "SC", "TN", "MN")})
    assert p.renderer.typer is None  # one field of the model left: nothing to move between
    assert p.run("Will it be foggy in Dunedin ND?") == Place(city="Dunedin", country="ND")
