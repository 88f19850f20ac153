"""Confidence thresholds, one format for every router of answers: a number every field must reach, or a map of
field paths to numbers (``{"total": 0.9, "*": 0.6}``: ``"*"`` for the fields not named). The service's
``min_confidence``, the store's ``review_below`` and the fallback chain's ``min_confidence`` all take either."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._result import ExtractionResult
from ..errors import ConfigurationError

__all__ = ["OVERALL", "Threshold", "check_threshold", "effective_confidence", "fields_below"]

#: a confidence threshold: one number for every field, or field path -> number (``"*"``: any other field)
Threshold = float | Mapping[str, float]
#: the key of :func:`fields_below`'s answer when the result has no per-field confidences
OVERALL = "*"


def effective_confidence(result: ExtractionResult[Any], fields: Sequence[str] | None = None) -> float:
    """The confidence a threshold is checked against: the minimum per-field confidence (over ``fields`` when
    given and present, else over all fields) when the result has per-field confidences, else ``confidence``."""
    per_field = result.field_confidences or {}
    if fields:
        chosen = [per_field[f] for f in fields if f in per_field]
        if chosen:
            return min(chosen)
    if per_field:
        return min(per_field.values())
    return result.confidence


def check_threshold(
    threshold: Any, model: Any = None, *, what: str = "min_confidence", schema: Mapping[str, Any] | None = None
) -> Threshold:
    """``threshold`` checked (numbers in [0, 1]; a map's keys are field paths of ``model`` — or of the JSON
    ``schema`` — when given, or ``"*"``); returns it as a float or a plain dict. Raises
    :class:`ConfigurationError`."""
    if isinstance(threshold, Mapping):
        if not threshold:
            raise ConfigurationError(f"{what} is an empty map: name at least one field (or '*' for every field)")
        out: dict[str, float] = {}
        for key, value in threshold.items():
            if not isinstance(key, str) or not key:
                raise ConfigurationError(f"{what}: field paths are non-empty strings, got {key!r}")
            out[key] = _unit(value, f"{what}[{key!r}]")
        if model is not None or schema is not None:
            from .._schema import inline_schema, model_schema, walk_fields

            tree = model_schema(model) if model is not None else inline_schema(dict(schema or {}))
            known = {path for path, _, _ in walk_fields(tree)}
            unknown = sorted(k for k in out if k != OVERALL and k not in known)
            if unknown:
                owner = model.__name__ if model is not None else "the model"
                raise ConfigurationError(
                    f"{what} names field(s) {unknown} that {owner} does not have; its fields are "
                    f"{sorted(known)} (and '*' for every field not named)"
                )
        return out
    return _unit(threshold, what)


def _unit(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise ConfigurationError(f"{what} must be a number in [0, 1], got {value!r}")
    return float(value)


def fields_below(
    result: ExtractionResult[Any], threshold: Threshold, fields: Sequence[str] | None = None
) -> dict[str, tuple[float, float]]:
    """The fields of ``result`` under their threshold: path -> (confidence, threshold); empty when it passes.

    * a number: every field's confidence (over ``fields`` when given and present) must reach it;
    * a map: each field named in it must reach its own value; ``"*"`` applies to every field not named.
      Named fields the result has no confidence for are not checked.

    Without per-field confidences the overall ``confidence`` (the lowest field's) is checked, against the
    number or, for a map, against its highest value (it bounds every field from below: nothing is let
    through that a field's own threshold could refuse); the answer's key is then ``"*"``.
    """
    per_field = result.field_confidences or {}
    if not per_field:
        limit = threshold if not isinstance(threshold, Mapping) else max(threshold.values())
        conf = float(result.confidence)
        return {OVERALL: (conf, float(limit))} if conf < limit else {}
    if not isinstance(threshold, Mapping):
        chosen = {f: per_field[f] for f in fields or () if f in per_field} or per_field
        return {f: (float(c), float(threshold)) for f, c in chosen.items() if c < threshold}
    default = threshold.get(OVERALL)
    out: dict[str, tuple[float, float]] = {}
    for path, conf in per_field.items():
        own = threshold.get(path)
        bound = own if own is not None else default
        if bound is not None and conf < bound:
            out[path] = (float(conf), float(bound))
    return out
