"""JSON-like values: normalisation, type-aware equality, and a score in [0, 1] from what an evaluator returns."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Any

from pydantic import BaseModel

__all__ = ["as_bool", "as_number", "clip", "normalize_text", "normalize_value", "score_from", "to_text",
           "values_equal"]


def normalize_value(value: Any) -> Any:
    """Turn ``value`` into a JSON-like Python value (dict / list / str / int / float / bool / None).

    Pydantic models are dumped in JSON mode, enums become their values, dates / datetimes / times
    become ISO strings, ``Decimal`` becomes ``int`` when written without decimals (``Decimal("120")``)
    else ``float`` (``Decimal("120.0")`` → ``120.0``), tuples and sets
    become lists (sets sorted for determinism) and mapping keys become strings.
    """
    if value is None or (isinstance(value, (bool, str, int, float)) and not isinstance(value, Enum)):
        return value
    if isinstance(value, Enum):
        return normalize_value(value.value)
    if isinstance(value, BaseModel):
        return normalize_value(value.model_dump(mode="json"))
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent >= 0:  # written without decimals: Decimal("120")
            return int(value)
        return float(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(normalize_value(k)): normalize_value(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        items = [normalize_value(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True, default=str))
    if isinstance(value, (list, tuple)):
        return [normalize_value(v) for v in value]
    try:
        from pydantic_core import to_jsonable_python

        return normalize_value(to_jsonable_python(value))
    except Exception:
        return str(value)


_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
_TRUE = frozenset({"true", "yes"})
_FALSE = frozenset({"false", "no"})


def as_number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        s = value.strip()
        if _THOUSANDS.match(s):
            s = s.replace(",", "")
        try:
            number = float(s)
        except ValueError:  # written as documents write numbers: "1.200,50", "6,40 EUR"
            from .._numbers import parse_number

            return parse_number(s)
        return number if math.isfinite(number) else None
    return None


def as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        s = value.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    return None


def _as_datetime(value: str) -> datetime | None:
    if not _ISO_DATE.match(value.strip()):
        return None
    try:
        return datetime.fromisoformat(value.strip())
    except ValueError:
        return None


def normalize_text(text: str, *, case_sensitive: bool, strip: bool) -> str:
    if strip:
        text = " ".join(text.split())
    if not case_sensitive:
        text = text.casefold()
    return text


def values_equal(
    extracted: Any,
    expected: Any,
    *,
    case_sensitive: bool = False,
    strip: bool = True,
    rel_tol: float = 1e-9,
    abs_tol: float = 0.0,
) -> bool:
    """Type-aware equality of two (JSON-like or Python) values.

    * numbers compare numerically (``120 == 120.0``, ``Decimal("1.5") == 1.5``), and a string equals a
      number when it parses as that number (``"120" == 120``, ``"1,200.50" == 1200.5``); two strings
      are compared as text, so ``"007" != "7"``;
    * enums compare by value, dates / datetimes by their ISO form; two ISO datetime strings are
      compared as instants (``"2024-03-01T10:00:00Z" == "2024-03-01T10:00:00+00:00"``);
    * booleans equal booleans and the strings ``"true"/"yes"`` / ``"false"/"no"``, never numbers;
    * strings compare after collapsing whitespace (``strip``) and casefolding (unless
      ``case_sensitive``);
    * dicts compare key by key and lists item by item (in order), recursively; ``None`` equals only
      ``None``.
    """
    a, b = normalize_value(extracted), normalize_value(expected)
    opts = {"case_sensitive": case_sensitive, "strip": strip, "rel_tol": rel_tol, "abs_tol": abs_tol}
    return _equal(a, b, opts)


def _equal(a: Any, b: Any, opts: dict[str, Any]) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, dict) or isinstance(b, dict):
        if not (isinstance(a, dict) and isinstance(b, dict)) or a.keys() != b.keys():
            return False
        return all(_equal(a[k], b[k], opts) for k in a)
    if isinstance(a, list) or isinstance(b, list):
        if not (isinstance(a, list) and isinstance(b, list)) or len(a) != len(b):
            return False
        return all(_equal(x, y, opts) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        ba, bb = as_bool(a), as_bool(b)
        return ba is not None and ba == bb
    if isinstance(a, (int, float)) or isinstance(b, (int, float)):
        na, nb = as_number(a), as_number(b)
        if na is None or nb is None:
            return False
        return math.isclose(na, nb, rel_tol=opts["rel_tol"], abs_tol=opts["abs_tol"])
    if isinstance(a, str) and isinstance(b, str):
        da, db = _as_datetime(a), _as_datetime(b)
        if da is not None and db is not None and (len(a.strip()) > 10) == (len(b.strip()) > 10):
            try:
                return da == db
            except TypeError:  # naive vs aware
                return False
        case_sensitive, strip = opts["case_sensitive"], opts["strip"]
        return normalize_text(a, case_sensitive=case_sensitive, strip=strip) == normalize_text(
            b, case_sensitive=case_sensitive, strip=strip
        )
    return bool(a == b)


def to_text(value: Any) -> str:
    value = normalize_value(value)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def clip(score: float) -> float:
    if math.isnan(score):
        return 0.0
    return max(0.0, min(1.0, score))



def score_from(result: Any, what: str) -> float:
    if isinstance(result, bool):
        return 1.0 if result else 0.0
    number = as_number(result) if not isinstance(result, Decimal) else float(result)
    if number is None:
        score = getattr(result, "score", None)  # an OutputScore / dspy.Prediction-like result
        if score is None:
            raise TypeError(f"{what} must return a number or a bool, got {type(result).__name__}")
        return score_from(score, what)
    return clip(float(number))

