"""Which evaluator scores which field: a default plus per-path overrides, or one whole-output metric."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError
from .evaluators import Evaluator, get_evaluator

__all__ = ["FieldEvaluators", "WholeOutput", "path_segments", "resolve_evaluators", "whole_output"]


@dataclass(frozen=True)
class WholeOutput:
    """Marks a callable ``(expected, predicted) -> float | bool`` that scores the *whole* output.

    Both arguments are JSON-like values (dicts for models; the ``output`` string in free-text mode).
    Build it with :func:`whole_output`.
    """

    function: Callable[[Any, Any], Any]


def whole_output(function: Callable[[Any, Any], Any]) -> WholeOutput:
    """Use ``function(expected, predicted)`` as the score of the whole output instead of field scores."""
    if not callable(function):
        raise ConfigurationError("whole_output needs a callable (expected, predicted) -> float")
    return WholeOutput(function)


_WHOLE_OUTPUT_FIRST_PARAMS = frozenset({"expected", "expected_output", "example", "gold"})


def _is_whole_output_callable(spec: Any) -> bool:
    if isinstance(spec, (Evaluator, type, str, Mapping)) or not callable(spec):
        return False
    if callable(getattr(spec, "evaluate", None)):
        return False
    try:
        params = list(inspect.signature(spec).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] in _WHOLE_OUTPUT_FIRST_PARAMS


_INDEX = re.compile(r"\[\d*\]|\{\}")


def path_segments(path: str) -> tuple[str, ...]:
    """A field path's names without list / dict markers: ``items[].name`` -> ``("items", "name")``."""
    return tuple(s for s in _INDEX.sub("", path).split(".") if s)


class FieldEvaluators:
    """A default evaluator plus per-path overrides; an override also covers the paths below it.

    The most specific override wins: for ``items[].name`` an override on ``items[].name`` (or
    ``items.name``) beats one on ``items``, which beats the default.
    """

    def __init__(self, default: Evaluator, overrides: Mapping[str, Evaluator] | None = None) -> None:
        self.default = default
        self.overrides = dict(overrides or {})
        self._by_segments = sorted(
            ((path_segments(path), ev) for path, ev in self.overrides.items()), key=lambda item: -len(item[0])
        )
        self._cache: dict[str, Evaluator] = {}

    def for_path(self, path: str) -> Evaluator:
        """The evaluator for the field at ``path``."""
        found = self._cache.get(path)
        if found is not None:
            return found
        segments = path_segments(path)
        evaluator = self.default
        for prefix, ev in self._by_segments:
            if segments[: len(prefix)] == prefix:
                evaluator = ev
                break
        self._cache[path] = evaluator
        return evaluator

    def __repr__(self) -> str:
        return f"FieldEvaluators(default={self.default!r}, overrides={self.overrides!r})"


def resolve_evaluators(spec: Any = None, lm: Any = None) -> FieldEvaluators | WholeOutput:
    """Turn an ``evaluator_spec`` into evaluators once (reuse the result across many outputs).

    ``spec`` is anything :func:`~dspydantic.optimize.evaluators.get_evaluator` accepts (applied to
    every field), or ``{"default": spec, "field_overrides": {path: spec}}``, or a whole-output metric:
    a :func:`whole_output` wrapper, or a plain callable whose **first parameter is named** ``expected``,
    ``expected_output``, ``example`` or ``gold`` (called as ``fn(expected, predicted)``; field
    evaluators take ``(extracted, expected)`` in the other order). ``None`` means ``"exact"``.
    """
    if isinstance(spec, (FieldEvaluators, WholeOutput)):
        return spec
    if _is_whole_output_callable(spec):
        return WholeOutput(spec)
    if isinstance(spec, Mapping) and ("default" in spec or "field_overrides" in spec):
        unknown = set(spec) - {"default", "field_overrides"}
        if unknown:
            raise ConfigurationError(
                f"an evaluator config with 'default'/'field_overrides' cannot also have {sorted(unknown)}"
            )
        overrides = spec.get("field_overrides") or {}
        if not isinstance(overrides, Mapping):
            raise ConfigurationError("'field_overrides' must be a dict of field path -> evaluator spec")
        return FieldEvaluators(
            get_evaluator(spec.get("default") or "exact", lm=lm),
            {str(path): get_evaluator(s, lm=lm) for path, s in overrides.items()},
        )
    return FieldEvaluators(get_evaluator(spec, lm=lm))
