"""Numbers written the way documents write them: ``"1.200,50"``, ``"1,200.50"``, ``"CHF 1'234.50"``, ``"6,40 €"``.

A model (or a label) may give a number field a string copied from the document; JSON and Pydantic only
read ``1200.5``. :func:`parse_number` reads the common conventions; :func:`coerce_number_strings` applies it
to the values Pydantic refused as numbers, so an answer such as ``{"total": "1.200,50"}`` validates as
``1200.5`` instead of failing (or, under a number-only grammar, being written as ``1.20050``).

Rules for the separators (spaces, apostrophes and thin/no-break spaces are always digit-group separators):

* both ``.`` and ``,`` present: the last one is the decimal mark (``1.200,50``, ``1,200.50``);
* one of them, several times: digit groups (``1.200.000``, ``1,200,000``);
* a single ``,``: digit groups when exactly three digits follow (``1,200``), else the decimal mark (``6,40``);
* a single ``.``: the decimal mark (``6.40``, ``1.200`` is 1.2), except for an integer field, where
  ``1.200`` followed by exactly three digits is 1200.

Currency symbols and codes around the number are dropped (``EUR 6.40``, ``6,40 €``, ``$1,200``); anything
else (``"ten"``, ``"1.2.3,4,5"``, ``"12 or 13"``) is not a number and is left for Pydantic to refuse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["coerce_number_strings", "parse_number"]

_CURRENCY = r"(?:[A-Z]{3}|[$€£¥₹₩₽¤]|Fr\.?|CHF|kr)"
_SHAPE = re.compile(
    rf"^\s*(?:{_CURRENCY}\s*)?(?P<sign>[-+−]?)\s*(?:{_CURRENCY}\s*)?"
    r"(?P<num>\d[\d.,'’ \u00a0\u202f]*\d|\d)"
    rf"\s*(?:{_CURRENCY}\.?)?\s*(?:-)?\s*$"
)
_GROUPS = re.compile(r"['’ \u00a0\u202f]")


def parse_number(text: str, *, integer: bool = False) -> float | int | None:
    """The number ``text`` writes, or None when it is not one number (see the module docs)."""
    m = _SHAPE.match(text)
    if m is None:
        return None
    body = _GROUPS.sub("", m.group("num"))
    negative = m.group("sign") in ("-", "−") or text.rstrip().endswith("-")
    dots, commas = body.count("."), body.count(",")
    if dots and commas:
        decimal = "." if body.rfind(".") > body.rfind(",") else ","
        group = "," if decimal == "." else "."
        whole, _, frac = body.rpartition(decimal)
        if decimal in whole or not _valid_groups(whole, group):
            return None
        digits = whole.replace(group, "") + "." + frac
    elif dots + commas == 0:
        digits = body
    else:
        sep = "." if dots else ","
        parts = body.split(sep)
        if len(parts) > 2:
            if not _valid_groups(body, sep):
                return None
            digits = "".join(parts)
        elif len(parts[1]) == 3 and (sep == "," or integer) and 1 <= len(parts[0]) <= 3:
            digits = "".join(parts)
        else:
            digits = parts[0] + "." + parts[1]
    if not re.fullmatch(r"\d+(\.\d+)?", digits):
        return None
    value: float | int = int(digits) if "." not in digits else float(digits)
    if integer and isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    return -value if negative else value


def _valid_groups(whole: str, sep: str) -> bool:
    """``1.234.567``: a first group of 1-3 digits, then groups of exactly three."""
    parts = whole.split(sep)
    return 1 <= len(parts[0]) <= 3 and all(len(p) == 3 for p in parts[1:]) if len(parts) > 1 else True


def coerce_number_strings(obj: Any, schema: Mapping[str, Any]) -> tuple[Any, int]:
    """``(copy of obj, how many values changed)``: each string where ``schema`` (an inlined JSON schema)
    expects a number and no string, replaced by the number it writes (strings that write no number stay,
    for validation to refuse)."""
    count = 0

    def walk(value: Any, node: Mapping[str, Any]) -> Any:
        nonlocal count
        variants = _variants(node)
        if isinstance(value, str):
            kinds = {t for v in variants for t in _types(v)}
            if kinds & {"number", "integer"} and "string" not in kinds:
                number = parse_number(value, integer="number" not in kinds)
                if number is not None:
                    count += 1
                    return number
            return value
        if isinstance(value, dict):
            props: dict[str, Any] = {}
            extra: list[Mapping[str, Any]] = []
            for v in variants:
                if isinstance(v.get("properties"), Mapping):
                    props.update(v["properties"])
                if isinstance(v.get("additionalProperties"), Mapping):
                    extra.append(v["additionalProperties"])
            return {
                k: walk(x, props[k]) if isinstance(props.get(k), Mapping) else walk(x, extra[0]) if extra else x
                for k, x in value.items()
            }
        if isinstance(value, list):
            items = [v["items"] for v in variants if isinstance(v.get("items"), Mapping)]
            return [walk(x, items[0]) for x in value] if items else value
        return value

    out = walk(obj, schema)
    return out, count


def _variants(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    out: list[Mapping[str, Any]] = []
    stack: list[Any] = [node]
    while stack:
        n = stack.pop()
        if not isinstance(n, Mapping):
            continue
        out.append(n)
        for key in ("anyOf", "oneOf", "allOf"):
            if isinstance(n.get(key), list):
                stack.extend(n[key])
    return out


def _types(node: Mapping[str, Any]) -> set[str]:
    t = node.get("type")
    if isinstance(t, str):
        return {t}
    return {x for x in t if isinstance(x, str)} if isinstance(t, list) else set()
