"""Dates written the way documents write them: ``"March 5, 2024"``, ``"9. Februar 2024"``, ``"14.02.2024"``.

A JSON-schema grammar for a ``date`` field makes a small model convert the document's date to ISO while it
writes it, and a 0.5B model mostly gets that wrong (the demo's invoices: 1 date in 12 right). The local
backend instead lets it copy the date as written (:func:`dates_as_text`: the grammar's ``format: date``
becomes a short free string) and turns the copy back into ISO here (:func:`dates_from_text`), so the answer
still fits the schema it was asked for.

Rules (:func:`parse_date`):

* ISO and year-first dates: ``2024-03-05``, ``2024/03/05``, ``2024.03.05``, ``2024年3月5日``;
* a month name (English, German, French, Dutch, Italian, Spanish; full or three letters) with a day and a
  four-digit year in either order: ``March 5, 2024``, ``5 March 2024``, ``9. Februar 2024``, ``3 avril 2024``;
* numbers with a four-digit year last: ``.`` and ``-`` are day first (``14.02.2024``, ``12-02-2024``); ``/`` is
  day first when the first number is over 12, month first when the second is, and otherwise **ambiguous**:
  decided by another date of the same answer written with ``/`` that is not (``14/10/2024`` beside
  ``03/11/2024``), else month first (``9/3/2024`` is September 3).

Anything else is not a date: a nullable field gets ``None`` (an honest "not found"), a required one keeps the
text for validation to refuse (and the Prompter to re-ask).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import date
from typing import Any

__all__ = ["dates_as_text", "dates_as_written", "dates_from_text", "parse_date"]

#: the longest date text the grammar lets the model write
DATE_TEXT_MAX_LENGTH = 32

_MONTHS: dict[str, int] = {}
for _number, _names in enumerate(
    (
        "january januar janvier januari gennaio enero jan jän janv",
        "february februar février fevrier februari febbraio febrero feb févr fevr",
        "march märz maerz mars maart marzo mar mär mrt",
        "april avril aprile abril apr avr",
        "may mai mei maggio mayo",
        "june juni juin giugno junio jun",
        "july juli juillet luglio julio jul juil",
        "august août aout augustus agosto aug",
        "september septembre settembre septiembre sep sept set",
        "october oktober octobre ottobre octubre oct okt ott",
        "november novembre noviembre nov",
        "december dezember décembre decembre dicembre diciembre dec dez déc dic",
    ),
    start=1,
):
    for _name in _names.split():
        _MONTHS[_name] = _number

_YEAR_FIRST = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})$|^(\d{4})年(\d{1,2})月(\d{1,2})日$")
_NUMERIC = re.compile(r"^(\d{1,2})([./-])(\d{1,2})\2(\d{4})$")
#: a time of day after the date (``2024-05-18 12:41``, ``2024年5月18日 12:41:07``), dropped
_TIME = re.compile(r"(?:\s+|T)\d{1,2}:\d{2}(?::\d{2})?\s*$")
_WORD = re.compile(r"[^\W\d_]+\.?", re.UNICODE)


def _make(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _slash_order(text: str) -> str | None:
    """``"day"`` / ``"month"`` when a ``/`` date says which comes first, else None (ambiguous or not one)."""
    m = _NUMERIC.match(text.strip())
    if m is None or m.group(2) != "/":
        return None
    a, b = int(m.group(1)), int(m.group(3))
    if a > 12 >= b:
        return "day"
    if b > 12 >= a:
        return "month"
    return None


def parse_date(text: str, *, slash_order: str | None = None) -> date | None:
    """The date ``text`` writes, or None (see the module docs; ``slash_order``: ``"day"`` or ``"month"`` first
    for an ambiguous ``/`` date, month first when not given)."""
    s = _TIME.sub("", " ".join(text.strip().split())).rstrip(".,;")
    if not s or len(s) > 64:
        return None
    m = _YEAR_FIRST.match(s)
    if m:
        y, mo, d = (int(g) for g in (m.groups()[:3] if m.group(1) else m.groups()[3:]))
        return _make(y, mo, d)
    m = _NUMERIC.match(s)
    if m:
        a, sep, b, y = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        if sep != "/" or a > 12:
            return _make(y, b, a)
        if b > 12:
            return _make(y, a, b)
        return _make(y, b, a) if slash_order == "day" else _make(y, a, b)
    words = [w.rstrip(".").lower() for w in _WORD.findall(s)]
    months = [_MONTHS[w] for w in words if w in _MONTHS]
    numbers = [int(n) for n in re.findall(r"\d+", s)]
    years = [n for n in numbers if 1000 <= n <= 9999]
    days = [n for n in numbers if 1 <= n <= 31]
    if len(months) == 1 and len(years) == 1 and len(days) == 1 and len(numbers) == 2:
        return _make(years[0], months[0], days[0])
    return None


def dates_as_text(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a JSON schema for grammar-constrained decoding where each ``format: date`` string is a short
    free string (the date as the document writes it)."""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(x) for x in node]
        if not isinstance(node, dict):
            return node
        out = {k: (v if k in ("enum", "const", "default", "examples") else walk(v)) for k, v in node.items()}
        if out.get("type") == "string" and out.get("format") == "date":
            out.pop("format")
            out["maxLength"] = min(int(out.get("maxLength", DATE_TEXT_MAX_LENGTH)), DATE_TEXT_MAX_LENGTH)
        return out

    result: dict[str, Any] = walk(schema)
    return result


def dates_from_text(text: str, schema: dict[str, Any]) -> str:
    """The answer of a grammar built by :func:`dates_as_text` with each date turned back into ISO where
    ``schema`` (the request's, before :func:`dates_as_text`) wants a ``format: date`` string; a text that
    writes no date becomes ``null`` where the schema allows it. Text that is not one JSON object is returned
    unchanged."""

    try:
        obj = json.loads(text)
    except ValueError:
        return text
    if not isinstance(obj, dict):
        return text
    found = _date_slots(obj, schema)
    if not found:
        return text
    orders = {_slash_order(c[k]) for c, k, _ in found} - {None}
    order = orders.pop() if len(orders) == 1 else None  # the answer's other dates decide an ambiguous one
    for container, key, nullable in found:
        parsed = parse_date(container[key], slash_order=order)
        if parsed is not None:
            container[key] = parsed.isoformat()
        elif nullable:
            container[key] = None
    return json.dumps(obj, ensure_ascii=False)


def _date_slots(obj: dict[str, Any], schema: dict[str, Any]) -> list[tuple[Any, Any, bool]]:
    """Where ``obj`` (an answer) holds a string for a ``format: date`` field: (container, key, nullable)."""
    from ._numbers import _variants
    from ._schema import inline_schema

    found: list[tuple[list[Any] | dict[str, Any], Any, bool]] = []  # (container, key, nullable)

    def walk(value: Any, node: Mapping[str, Any], container: Any, key: Any) -> None:
        vs = _variants(node)
        if isinstance(value, str):
            if any(v.get("format") == "date" for v in vs) and not any(
                v.get("type") == "string" and v.get("format") != "date" for v in vs
            ):
                found.append((container, key, any(v.get("type") == "null" for v in vs)))
            return
        if isinstance(value, dict):
            props: dict[str, Any] = {}
            for v in vs:
                if isinstance(v.get("properties"), Mapping):
                    props.update(v["properties"])
            for k, x in value.items():
                if isinstance(props.get(k), Mapping):
                    walk(x, props[k], value, k)
        elif isinstance(value, list):
            items = [v["items"] for v in vs if isinstance(v.get("items"), Mapping)]
            if items:
                for i, x in enumerate(value):
                    walk(x, items[0], value, i)

    walk(obj, inline_schema(schema), None, None)
    return found


#: a window of up to this many words of a document is tried as a date (``Monday, 5 March 2024``: four)
_WINDOW = 4


def _written_forms(source: str) -> dict[date, str]:
    """Each date ``source`` writes -> its first text in the document (either reading of an ambiguous ``/``)."""
    spans = [m.span() for m in re.finditer(r"\S+", source)]
    forms: dict[date, str] = {}
    for size in range(1, _WINDOW + 1):  # the shortest text that writes the date ("dated March 5, 2024": 3 words)
        for i in range(len(spans) - size + 1):
            text = source[spans[i][0] : spans[i + size - 1][1]].strip(" .,;:!?()[]'\"")
            for order in ("month", "day"):
                parsed = parse_date(text, slash_order=order)
                if parsed is not None and parsed not in forms:
                    forms[parsed] = text
    return forms


def dates_as_written(answer: str, source: str, schema: dict[str, Any]) -> str:
    """A labelled answer (a few-shot demo's, ISO dates) with each date written as ``source``, the demo's
    document, writes it (``2024-03-05`` -> ``March 5, 2024``), for a grammar built by :func:`dates_as_text`.

    Under that grammar the model copies dates as written; a demo showing ISO dates teaches it to convert
    them instead, which a small model gets wrong (the demo's invoices with 4 plain demos: invoice dates
    0.917 -> 0.75 against zero-shot). A date the document does not write stays as it is; text that is not
    one JSON object is returned unchanged."""
    try:
        obj = json.loads(answer)
    except ValueError:
        return answer
    if not isinstance(obj, dict):
        return answer
    slots = [(c, k) for c, k, _ in _date_slots(obj, schema) if isinstance(c[k], str)]
    if not slots:
        return answer
    forms = _written_forms(source)
    changed = False
    for container, key in slots:
        try:
            wanted = date.fromisoformat(container[key])
        except ValueError:
            continue
        written = forms.get(wanted)
        if written is not None and written != container[key]:
            container[key] = written
            changed = True
    return json.dumps(obj, ensure_ascii=False) if changed else answer
