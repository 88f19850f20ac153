"""Values moved to the field they belong to: field typing learned from labelled values.

A small model often writes a value into a sibling field: a state's two-letter code as the country, a park as
the city, a date as the location. A :class:`~dspydantic.PromptState` with ``field_values`` (top-level string
field -> the values its labels had in the training split; fitted by ``optimize()``) corrects that after the
answer is parsed and grounded:

* a value given in several of those fields stays only in the one it fits best (a label gives a value one
  field: ``optimize()`` fits field typing only when no training label repeats a value across fields);
* a value is moved to another of those fields that the answer left empty when it is much more like that
  field's labelled values than its own: naive Bayes over the value's lower-cased words, the shapes of its
  tokens (``ND`` -> ``AA``, ``Dunedin`` -> ``Aaa``, ``2038`` -> ``dd``) and its token count, each feature's
  rate smoothed toward its rate over all fields, at log-odds of at least :data:`MARGIN` (20 to 1). A
  feature no labelled value had counts for no field, so an unseen city name moves nothing.

Only nullable string fields take part (a value leaves a field by the field becoming ``None``); a correction
the model's validation would refuse is not made. Deterministic, cheap, no LM call. The moves are reported
so the answer's evidence (confidence, spans) can follow its value.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["MARGIN", "MAX_FIELD_VALUES", "FieldTyper", "Move", "fit_field_values", "retypable_fields", "retype_json",
           "retype_model"]

#: log-odds a value must fit another field by before it is moved there (e**3 ~ 20 to 1)
MARGIN = 3.0
#: smoothing weight of the overall feature rate in each field's rate
_PRIOR_WEIGHT = 2.0
#: the most labelled values kept per field, and the longest value kept
MAX_FIELD_VALUES = 1000
MAX_VALUE_CHARS = 200
_TOKEN = re.compile(r"\w+|[^\w\s]")


def _key(value: str) -> str:
    """A value as compared across fields: whitespace runs collapsed, case folded."""
    return " ".join(value.split()).casefold()


def _shape(token: str) -> str:
    s = re.sub(r"[A-Z]", "A", token)
    s = re.sub(r"[a-z]", "a", s)
    s = re.sub(r"\d", "d", s)
    return re.sub(r"(.)\1+", r"\1\1", s) if len(s) > 2 else s


def features(value: str) -> frozenset[str]:
    """The features of one value: ``w:`` lower-cased words, ``s:`` token shapes, ``n:`` token count (1-3+)."""
    tokens = _TOKEN.findall(value)
    out = {"w:" + t.lower() for t in tokens} | {"s:" + _shape(t) for t in tokens}
    out.add(f"n:{min(len(tokens), 3)}")
    return frozenset(out)


def retypable_fields(schema: Mapping[str, Any]) -> list[str]:
    """The top-level properties of an (inlined) JSON schema that are nullable plain strings (no enum, const,
    format or pattern): the fields field typing may move values between."""
    out = []
    for name, prop in (schema.get("properties") or {}).items():
        if not isinstance(prop, Mapping):
            continue
        variants = prop.get("anyOf") or prop.get("oneOf") or [prop]
        types: list[Any] = []
        plain = True
        for v in variants:
            if not isinstance(v, Mapping) or any(k in v for k in ("enum", "const", "format", "pattern")):
                plain = False
                break
            t = v.get("type")
            types.extend(t if isinstance(t, list) else [t])
        if plain and set(types) == {"string", "null"}:
            out.append(str(name))
    return out


def fit_field_values(labels: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Each of ``fields``' non-empty string values in ``labels`` (the training split's expected outputs), or
    ``{}`` when fewer than two fields have a value or when some label gives one value to two fields."""
    values: dict[str, list[str]] = {f: [] for f in fields}
    for label in labels:
        seen: set[str] = set()
        for f in fields:
            v = label.get(f)
            if not isinstance(v, str) or not v.strip() or len(v) > MAX_VALUE_CHARS:
                continue
            key = _key(v)
            if key in seen:
                return {}
            seen.add(key)
            if len(values[f]) < MAX_FIELD_VALUES:
                values[f].append(v)
    kept = {f: tuple(vs) for f, vs in values.items() if vs}
    return kept if len(kept) >= 2 else {}


@dataclass(frozen=True)
class Move:
    """One correction: ``value`` left ``source`` for ``target`` (None: dropped, it stays in another field)."""

    source: str
    target: str | None
    value: str


class FieldTyper:
    """Naive Bayes over the labelled values of each field (see the module docs)."""

    def __init__(self, field_values: Mapping[str, Sequence[str]]) -> None:
        self.fields = tuple(field_values)
        self._n = {f: len(vs) for f, vs in field_values.items()}
        self._counts = {f: Counter(x for v in vs for x in features(v)) for f, vs in field_values.items()}
        total = sum(self._n.values()) or 1
        overall: Counter[str] = Counter()
        for c in self._counts.values():
            overall.update(c)
        self._rate = {x: c / total for x, c in overall.items()}
        self._prior = {f: math.log((n + 1) / (total + len(self.fields))) for f, n in self._n.items()}

    def log_scores(self, value: str) -> dict[str, float]:
        """Field -> log P(field) + the sum of log P(feature | field) over the value's features some labelled
        value had."""
        seen = [(x, rate) for x in features(value) if (rate := self._rate.get(x)) is not None]
        return {
            f: self._prior[f] + sum(
                math.log((self._counts[f][x] + _PRIOR_WEIGHT * rate) / (self._n[f] + _PRIOR_WEIGHT)) for x, rate in seen
            )
            for f in self.fields
        }

    def corrections(self, data: Mapping[str, Any]) -> list[Move]:
        """The moves that would correct ``data`` (a JSON object of the model), in order."""
        current = {f: data.get(f) for f in self.fields}
        moves: list[Move] = []
        by_value: dict[str, list[str]] = {}
        for f, v in current.items():
            if isinstance(v, str) and v.strip():
                by_value.setdefault(_key(v), []).append(f)
        for holders in by_value.values():
            if len(holders) > 1:
                scores = self.log_scores(str(current[holders[0]]))
                best = max(holders, key=lambda f: (scores[f], -holders.index(f)))
                for f in holders:
                    if f != best:
                        moves.append(Move(f, None, str(current[f])))
                        current[f] = None
        for f in self.fields:
            v = current[f]
            empty = [g for g in self.fields if g != f and not current[g]]
            if not isinstance(v, str) or not v.strip() or not empty:
                continue
            scores = self.log_scores(v)
            best = max(empty, key=lambda g: (scores[g], -self.fields.index(g)))
            if scores[best] - scores[f] >= MARGIN:
                moves.append(Move(f, best, v))
                current[best], current[f] = v, None
        return moves


def apply_moves(data: Mapping[str, Any], moves: Sequence[Move]) -> dict[str, Any]:
    """``data`` with ``moves`` made."""
    out = dict(data)
    for m in moves:
        if m.target is not None:
            out[m.target] = out.get(m.source)
        out[m.source] = None
    return out


def retype_json(typer: FieldTyper, data: Mapping[str, Any]) -> tuple[dict[str, Any], list[Move]]:
    """``data`` (an answer as JSON) corrected, and the moves made."""
    moves = typer.corrections(data)
    return (apply_moves(data, moves) if moves else dict(data)), moves


def retype_model(typer: FieldTyper, model: type[BaseModel], data: BaseModel) -> tuple[BaseModel, list[Move]]:
    """A validated answer corrected (a new instance of ``model``), and the moves made; ``data`` itself with
    no moves when there is nothing to correct or the corrected answer would not validate."""
    from pydantic import ValidationError

    fixed, moves = retype_json(typer, data.model_dump(mode="json", by_alias=True))
    if not moves:
        return data, []
    try:
        return model.model_validate(fixed), moves
    except ValidationError:
        return data, []
