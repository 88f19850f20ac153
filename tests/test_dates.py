"""Dates as documents write them (the local grammar lets the model copy them; ``_dates`` reads them back)."""

from __future__ import annotations

import json
from datetime import date

import pytest
from pydantic import BaseModel

from dspydantic._dates import dates_as_text, dates_from_text, parse_date
from dspydantic._schema import model_schema


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("March 5, 2024", date(2024, 3, 5)),
        ("5 March 2024", date(2024, 3, 5)),
        ("9. Februar 2024", date(2024, 2, 9)),
        ("3 avril 2024", date(2024, 4, 3)),
        ("7 juillet 2024.", date(2024, 7, 7)),
        ("2024-11-08", date(2024, 11, 8)),
        ("2024/07/31", date(2024, 7, 31)),
        ("2024年5月18日 12:41", date(2024, 5, 18)),
        ("14.02.2024", date(2024, 2, 14)),
        ("03.04.2024", date(2024, 4, 3)),  # dots: day first
        ("12-02-2024", date(2024, 2, 12)),  # dashes: day first
        ("14/06/2024", date(2024, 6, 14)),  # the first number can't be a month
        ("02/14/2024", date(2024, 2, 14)),  # the second can't be
        ("9/3/2024", date(2024, 9, 3)),  # ambiguous: month first
        ("31.02.2024", None),  # no such day
        ("Q1 2024", None),
        ("due in 30 days", None),
        ("", None),
    ],
)
def test_parse_date(text: str, expected: date | None) -> None:
    assert parse_date(text) == expected


def test_an_ambiguous_slash_date_follows_the_answers_other_dates() -> None:
    assert parse_date("03/11/2024", slash_order="day") == date(2024, 11, 3)

    class Invoice(BaseModel):
        invoice_date: date | None = None
        due_date: date | None = None
        total: float

    schema = model_schema(Invoice)
    out = json.loads(dates_from_text(json.dumps({"invoice_date": "03/11/2024", "due_date": "14/11/2024",
                                                  "total": 1.0}), schema))
    assert out == {"invoice_date": "2024-11-03", "due_date": "2024-11-14", "total": 1.0}
    out = json.loads(dates_from_text(json.dumps({"invoice_date": "10/02/2024", "due_date": "11/01/2024",
                                                  "total": 1.0}), schema))
    assert out["invoice_date"] == "2024-10-02" and out["due_date"] == "2024-11-01"  # nothing decides: month first
    # a text that writes no date: None where the field allows it, and the answer validates
    out = json.loads(dates_from_text(json.dumps({"invoice_date": "soon", "total": 2.0}), schema))
    assert out["invoice_date"] is None and Invoice.model_validate(out).total == 2.0


def test_the_grammar_schema_frees_only_date_strings_and_a_required_date_keeps_bad_text() -> None:
    class Order(BaseModel):
        placed: date
        note: str
        lines: list[date]

    schema = model_schema(Order)
    free = dates_as_text(schema)
    props = free["properties"]
    assert "format" not in json.dumps(props["placed"]) and props["placed"]["maxLength"] == 32
    assert props["note"] == schema["properties"]["note"]
    assert "format" not in json.dumps(props["lines"])
    answer = json.dumps({"placed": "sometime", "note": "5 March 2024", "lines": ["5 March 2024", "2024/01/02"]})
    out = json.loads(dates_from_text(answer, schema))
    # the required date keeps its text (validation refuses it, the Prompter re-asks); a plain string is untouched
    assert out == {"placed": "sometime", "note": "5 March 2024", "lines": ["2024-03-05", "2024-01-02"]}
    assert dates_from_text("not json", schema) == "not json"
