"""Dates as documents write them (the local grammar lets the model copy them; ``_dates`` reads them back)."""

from __future__ import annotations

import json
from datetime import date

import pytest
from pydantic import BaseModel

from dspydantic._dates import dates_as_text, dates_as_written, dates_from_text, parse_date
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


class Bill(BaseModel):
    vendor: str
    issued: date | None = None
    due: date | None = None


@pytest.mark.parametrize(
    ("document", "issued", "due"),
    [
        ("Bill from Acme, dated March 5, 2024, payable by April 4, 2024.", "March 5, 2024", "April 4, 2024"),
        ("Rechnung vom 9. Februar 2024, zahlbar bis 23.02.2024", "9. Februar 2024", "23.02.2024"),
        ("Facture du 3 avril 2024 (échéance : 3 mai 2024)", "3 avril 2024", "3 mai 2024"),
        ("Issued 14/10/2024 - due 13/11/2024!", "14/10/2024", "13/11/2024"),
        ("領収書 2024年5月18日 12:41", "2024年5月18日", "2024-06-01"),  # a date the text doesn't write stays ISO
    ],
)
def test_a_demo_answer_shows_its_dates_as_its_document_writes_them(document: str, issued: str, due: str) -> None:
    schema = model_schema(Bill)
    labelled = {"vendor": "Acme", "issued": str(parse_date(issued) or issued), "due": str(parse_date(due) or due)}
    answer = json.dumps(labelled)
    written = json.loads(dates_as_written(answer, document, schema))
    assert (written["issued"], written["due"]) == (issued, due)
    # and the model's copy of them reads back as the label
    assert json.loads(dates_from_text(json.dumps(written), schema)) == labelled


def test_answers_without_dates_to_rewrite_are_returned_as_they_are() -> None:
    schema = model_schema(Bill)
    unchanged = '{"vendor": "Acme",  "issued": null}'  # the same string object back: nothing re-encoded
    assert dates_as_written(unchanged, "dated March 5, 2024", schema) is unchanged
    assert dates_as_written("not json", "March 5, 2024", schema) == "not json"
    assert dates_as_written('["2024-03-05"]', "March 5, 2024", schema) == '["2024-03-05"]'
    bad = '{"vendor": "Acme", "issued": "5th of March"}'
    assert dates_as_written(bad, "March 5, 2024", schema) is bad


def test_the_local_backend_rewrites_only_answers_that_follow_a_document() -> None:
    from dspydantic.lm.local.backend import _demo_dates_as_written

    schema = model_schema(Bill)
    messages = [
        {"role": "system", "content": "Extract. Example date 2024-03-05."},
        {"role": "user", "content": "Acme bill, dated March 5, 2024"},
        {"role": "assistant", "content": '{"vendor": "Acme", "issued": "2024-03-05", "due": null}'},
        {"role": "user", "content": "Globex bill of 05.03.2024"},
    ]
    out = _demo_dates_as_written(messages, schema)
    assert json.loads(out[2]["content"])["issued"] == "March 5, 2024"
    assert out[0] == messages[0] and out[3] == messages[3]
    assert json.loads(messages[2]["content"])["issued"] == "2024-03-05"  # the caller's messages untouched
