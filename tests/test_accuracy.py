"""Accuracy work (issue 14), through the fake OpenAI-compatible server: labels are checked against the model
before any LM call, and numbers written as documents write them are read as numbers."""

from __future__ import annotations

from datetime import date

import pytest
from pydantic import BaseModel, Field

from dspydantic import ConfigurationError, Example, Prompter
from dspydantic._numbers import parse_number
from dspydantic.errors import LabelError
from dspydantic.testing import FakeLLMServer


class Line(BaseModel):
    sku: str
    qty: int


class Invoice(BaseModel):
    vendor: str = Field(description="Company that issued the invoice")
    total: float
    currency: str | None = None
    issued: date | None = None
    lines: list[Line] = Field(default_factory=list)


def good(i: int) -> Example:
    return Example(text=f"Invoice {i} from Acme, total {i}.50 EUR",
                   expected_output={"vendor": "Acme", "total": i + 0.5})


def prompter(srv: FakeLLMServer) -> Prompter:
    srv.respond_from_schema({"vendor": "Acme", "total": 1.5})
    return Prompter(Invoice, model_id="openai/fake", api_base=srv.base_url, api_key="k", cache=False)


# --------------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------------

BAD_LABELS = [
    ({"vendr": "Acme", "total": 1.0}, "vendr", "does not have"),
    ({"vendor": "Acme", "total": "ten"}, "total", "valid number"),
    ({"vendor": "Acme", "total": 1.0, "issued": "last tuesday"}, "issued", "date"),
    ({"vendor": "Acme", "total": 1.0, "lines": [{"sku": "A", "qty": 1}, {"sku": "B", "qtty": 2}]}, "lines[1].qtty",
     "does not have"),
    ({"vendor": "Acme", "total": 1.0, "lines": [{"sku": "A", "qty": "two"}]}, "lines.0.qty", "integer"),
    ({"vendor": "Acme"}, "total", "required field"),
]


@pytest.mark.parametrize(("label", "field", "why"), BAD_LABELS)
@pytest.mark.parametrize("verb", ["optimize", "evaluate"])
def test_a_label_that_does_not_fit_is_refused_before_any_lm_call(
    srv: FakeLLMServer, verb: str, label: dict, field: str, why: str
) -> None:
    p = prompter(srv)
    examples = [good(i) for i in range(5)]
    examples.insert(3, Example(text="Invoice from Acme, 1 EUR", expected_output=label))
    with pytest.raises(LabelError) as info:
        if verb == "optimize":
            p.optimize(examples, optimizer="bootstrap", max_lm_calls=20)
        else:
            p.evaluate(examples, num_threads=1)
    err = info.value
    assert isinstance(err, ConfigurationError)
    assert (err.index, err.field) == (3, field)
    assert "example 3" in str(err) and field in str(err) and why in str(err)
    assert srv.request_count == 0  # not one LM request was made


def test_valset_labels_are_checked_too_and_named_as_such(srv: FakeLLMServer) -> None:
    p = prompter(srv)
    valset = [good(7), Example(text="x", expected_output={"vendor": "Acme", "total": "lots"})]
    with pytest.raises(LabelError, match="valset example 1") as info:
        p.optimize([good(i) for i in range(4)], valset=valset, optimizer="bootstrap", max_lm_calls=20)
    assert info.value.field == "total"
    assert srv.request_count == 0


def test_a_string_label_for_a_structured_model_is_refused(srv: FakeLLMServer) -> None:
    p = prompter(srv)
    with pytest.raises(LabelError, match="example 1: expected_output is a string"):
        p.evaluate([good(0), Example(text="a", expected_output="Acme, 1.50")], num_threads=1)
    assert srv.request_count == 0


def test_labels_that_fit_are_scored_partial_labels_and_document_numbers_included(srv: FakeLLMServer) -> None:
    p = prompter(srv)
    examples = [
        Example(text="Invoice from Acme, 1.50 EUR", expected_output={"vendor": "Acme", "total": 1.5}),
        Example(text="Invoice from Acme, 1,50 EUR", expected_output={"vendor": "Acme", "total": "1,50"}),
        Example(text="Invoice from Acme", expected_output={"vendor": "Acme", "total": 1.5}),  # optional ones left out
        Example(text="Invoice from Acme", expected_output=Invoice(vendor="Acme", total=1.5)),
    ]
    report = p.evaluate(examples, num_threads=1)
    assert srv.request_count == 4 and report.n == 4
    assert report.per_field["vendor"] == 1.0 and report.per_field["total"] == 1.0


# --------------------------------------------------------------------------------------------------
# numbers written as documents write them
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1.200,50", 1200.5), ("1,200.50", 1200.5), ("CHF 1'234.50", 1234.5), ("6,40 €", 6.4), ("GBP 6.40", 6.4),
        ("1,200", 1200), ("€1,777.18", 1777.18), ("1.234.567", 1234567), ("2,380.00", 2380.0), ("-3.5", -3.5),
        ("1 234,5", 1234.5), ("ten", None), ("12 or 13", None), ("1.2.3,4", None), ("1,23,4", None), ("", None),
    ],
)
def test_parse_number(text: str, value: float | None) -> None:
    assert parse_number(text) == value


def test_integer_fields_read_a_dot_before_three_digits_as_digit_groups() -> None:
    assert parse_number("1.200", integer=True) == 1200 and parse_number("1.200") == 1.2
    assert parse_number("1.5", integer=True) is None


def test_an_answer_with_document_numbers_validates_to_the_number(srv: FakeLLMServer) -> None:
    srv.respond_by_substring({
        "Acme": {"vendor": "Acme GmbH", "total": "1.200,50", "currency": "EUR",
                 "lines": [{"sku": "B-1", "qty": "1.000"}]},
        "Cafe": {"vendor": "Corner Cafe", "total": "GBP 6.40"},
        "Bad": {"vendor": "Bad", "total": "a lot"},
    })
    p = Prompter(Invoice, model_id="openai/fake", api_base=srv.base_url, api_key="k", cache=False, max_retries=0)
    inv = p.run("Invoice from Acme GmbH. Total due: 1.200,50 EUR; 1.000 x B-1")
    assert inv.total == 1200.5 and inv.lines[0].qty == 1000
    assert p.run("Receipt: Corner Cafe, 2 coffees, GBP 6.40").total == 6.4
    assert srv.request_count == 2  # read, not re-asked
    from dspydantic import ExtractionError

    with pytest.raises(ExtractionError, match="total"):  # not a number: still refused
        p.run("Bad invoice")


def test_the_local_grammar_writes_numbers_as_text_and_everything_else_as_before() -> None:
    import json
    import re

    from dspydantic._schema import NUMBER_TEXT_PATTERN, model_schema, numbers_as_text

    class M(BaseModel):
        total: float
        count: int | None = None
        ratio: list[float] = Field(default_factory=list)
        code: int = Field(json_schema_extra={"enum": [1, 2]})
        name: str = "x"

    schema = model_schema(M)
    out = numbers_as_text(schema)
    props = out["properties"]
    text = {"type": "string", "pattern": NUMBER_TEXT_PATTERN}
    assert props["total"] == text
    assert text in props["count"]["anyOf"] and {"type": "null"} in props["count"]["anyOf"]
    assert props["ratio"]["items"] == text
    assert props["code"] == schema["properties"]["code"]  # an enum of numbers stays as it is
    assert props["name"] == schema["properties"]["name"] and out["required"] == schema["required"]
    assert numbers_as_text(schema) == out and model_schema(M) == schema  # pure: the input is not changed
    for written in ("1.200,50", "2,380.00", "6.40", "-3", "1'234.50"):
        assert re.fullmatch(NUMBER_TEXT_PATTERN.strip("^$"), written)
    assert not re.fullmatch(NUMBER_TEXT_PATTERN.strip("^$"), "ten")
    llama_grammar = pytest.importorskip("llama_cpp.llama_grammar")
    gbnf = llama_grammar.LlamaGrammar.from_json_schema(json.dumps(out), verbose=False)._grammar
    assert "[0-9.,' ]" in gbnf  # llama.cpp's converter turns the pattern into a grammar rule


# --------------------------------------------------------------------------------------------------
# absent is an answer
# --------------------------------------------------------------------------------------------------


class Slots(BaseModel):
    city: str | None = None
    country: str | None = None
    vendor: str = "?"


def test_absent_fields_turns_values_the_document_lacks_into_null_and_survives_save(
    srv: FakeLLMServer, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from dspydantic.confidence import absent_fields

    assert absent_fields(Slots) == ["city", "country"]  # nullable free strings only, never the required vendor
    from dspydantic._schema import model_schema

    assert absent_fields(model_schema(Slots)) == ["city", "country"]  # the schema a Prompter checks against
    srv.respond_by_substring({"Paris": {"city": "paris", "country": "Atlantis", "vendor": "Nowhere Inc"}})
    p = Prompter(Slots, model_id="openai/fake", api_base=srv.base_url, api_key="k", cache=False,
                 require_grounding=absent_fields(Slots))
    got = p.run("Will it rain in Paris tomorrow?")
    # "paris" is in the document (case aside): kept; "Atlantis" is not: null; vendor is not nullable: kept
    assert (got.city, got.country, got.vendor) == ("paris", None, "Nowhere Inc")
    assert srv.request_count == 1
    p.save(tmp_path / "p")
    again = Prompter.load(tmp_path / "p", model=Slots, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    assert again.run("Will it rain in Paris tomorrow?").country is None


def test_the_local_answer_is_turned_back_into_the_json_numbers_its_schema_asks_for() -> None:
    import json

    from dspydantic._schema import numbers_from_text

    schema = Invoice.model_json_schema()  # with $defs: Line is a reference
    raw = '{"vendor": "Acme", "total": "1.200,50", "lines": [{"sku": "B-1", "qty": "1.000"}]}'
    assert json.loads(numbers_from_text(raw, schema)) == {
        "vendor": "Acme", "total": 1200.5, "lines": [{"sku": "B-1", "qty": 1000}]
    }
    assert numbers_from_text('{"vendor": "Acme", "total": 2}', schema) == '{"vendor": "Acme", "total": 2}'
    assert numbers_from_text('{"total": "a lot"}', schema) == '{"total": "a lot"}'  # left for validation
    assert numbers_from_text("not json", schema) == "not json"
