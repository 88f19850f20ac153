"""Evaluators: score one extracted value against its expected value, in ``[0, 1]``.

Every evaluator has the same two-method shape, compatible with dspydantic 0.1's evaluators::

    evaluator = SomeEvaluator(config={...}, lm=None)
    score = evaluator.evaluate(extracted, expected, input_data=None, field_path=None)

Built-in evaluators and their registry names:

==========================  ==================================================================
``exact``, ``string_check``  type-aware equality (:class:`StringCheckEvaluator`)
``levenshtein``              normalized edit-distance similarity (:class:`LevenshteinEvaluator`)
``text_similarity``          embedding cosine similarity (:class:`TextSimilarityEvaluator`)
``score_judge``              an LLM gives a score (:class:`ScoreJudge`); alias ``score_model_grader``
``label_model_grader``       an LLM picks a label (:class:`LabelModelGrader`)
``python_code``              your own function or source code (:class:`PythonCodeEvaluator`)
``predefined_score``         the extracted value *is* the score (:class:`PredefinedScoreEvaluator`)
==========================  ==================================================================

Values are compared as JSON-like Python values; :func:`normalize_value` turns labels written with
Python values (dates, ``Decimal``, enums, Pydantic models, tuples, sets) into that form
(:mod:`.values`). This module is the evaluators' public face and registry: the base class lives in
:mod:`.evaluator_base`, the comparisons without an LM in :mod:`.matching`, the LLM judges in :mod:`.judges`.

Use :func:`get_evaluator` to build one from a name, a ``{"type": name, "config": {...}}`` dict, an
instance, an :class:`Evaluator` subclass, or a plain callable ``(extracted, expected) -> float | bool``,
and :func:`register_evaluator` to add your own class under a name.
"""

from __future__ import annotations

import contextvars
import hashlib
import inspect
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ..errors import ConfigurationError
from .evaluator_base import Evaluator, InputData
from .judges import LabelModelGrader, ScoreJudge
from .matching import LevenshteinEvaluator, StringCheckEvaluator, TextSimilarityEvaluator
from .values import as_bool, as_number, clip, normalize_value, score_from, values_equal

__all__ = [
    "EVALUATOR_REGISTRY",
    "Evaluator",
    "EvaluatorSpec",
    "LabelModelGrader",
    "LevenshteinEvaluator",
    "PredefinedScoreEvaluator",
    "PythonCodeEvaluator",
    "ScoreJudge",
    "StringCheckEvaluator",
    "TextSimilarityEvaluator",
    "available_evaluators",
    "get_evaluator",
    "normalize_value",
    "register_evaluator",
    "scoring_example",
    "values_equal",
]


EvaluatorSpec = Any
"""A name, ``{"type": name, "config": {...}}``, an :class:`Evaluator` (class or instance) or a callable."""



class PythonCodeEvaluator(Evaluator):
    """Your own scoring function (``python_code``); the result is turned into a float and clipped to [0, 1].

    Config (one of):

    * ``function``: a callable ``(extracted, expected, input_data=None, field_path=None) -> float | bool``;
      ``input_data`` / ``field_path`` are passed only when the function accepts them, so
      ``lambda extracted, expected: ...`` works too;
    * ``code``: Python source that defines that function, named ``evaluate`` (or as given in
      ``function_name``). **The source is executed with ``exec`` in this process with your full
      privileges** — only pass code you wrote or trust, exactly as if you imported it.

    Exceptions raised by the function propagate unchanged.
    """

    name = "python_code"

    def __init__(self, config: dict[str, Any] | None = None, lm: Any = None) -> None:
        super().__init__(config, lm)
        function = self.config.get("function")
        code = self.config.get("code")
        if function is None and code is None:
            raise ConfigurationError("python_code needs config 'function' (a callable) or 'code' (source)")
        if function is None:
            function = self._compile(str(code), str(self.config.get("function_name", "evaluate")))
        if not callable(function):
            raise ConfigurationError("python_code: 'function' must be callable")
        self.function: Callable[..., Any] = function
        self._pass_kwargs = self._accepts_context(function)

    @staticmethod
    def _compile(code: str, function_name: str) -> Callable[..., Any]:
        namespace: dict[str, Any] = {"__name__": "dspydantic_python_code_evaluator"}
        try:
            compiled = compile(code, "<python_code evaluator>", "exec")
        except SyntaxError as exc:
            raise ConfigurationError(f"python_code: the code does not compile: {exc}") from exc
        exec(compiled, namespace)  # the user asked for their own code to run; see the class docstring
        function = namespace.get(function_name)
        if not callable(function):
            raise ConfigurationError(f"python_code: the code must define a function named {function_name!r}")
        return function

    @staticmethod
    def _accepts_context(function: Callable[..., Any]) -> bool:
        try:
            params = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            return True
        names = {p.name for p in params}
        return (
            any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
            or {
                "input_data",
                "field_path",
            }
            <= names
        )

    def evaluate(
        self, extracted: Any, expected: Any, input_data: InputData = None, field_path: str | None = None
    ) -> float:
        if self._pass_kwargs:
            result = self.function(extracted, expected, input_data=input_data, field_path=field_path)
        else:
            result = self.function(extracted, expected)
        return score_from(result, "python_code function")



#: the position of the example being scored, set by the scorer in the thread that scores it
_EXAMPLE_INDEX: contextvars.ContextVar[int | None] = contextvars.ContextVar("dspydantic_example_index", default=None)


@contextmanager
def scoring_example(index: int | None) -> Iterator[None]:
    """Evaluators called inside this block score the example at position ``index`` of the examples being
    scored (what ``predefined_score``'s ``scores`` list is indexed by); per thread and per task."""
    token = _EXAMPLE_INDEX.set(index)
    try:
        yield
    finally:
        _EXAMPLE_INDEX.reset(token)


class PredefinedScoreEvaluator(Evaluator):
    """The extracted value *is* the score (``predefined_score``); the expected value is not needed.

    Booleans give 1.0 / 0.0, numbers (or numeric strings) are divided by ``max_value`` when that is
    configured and clipped to ``[0, 1]``; ``None`` or anything non-numeric scores 0.0.

    For compatibility with dspydantic 0.1, config ``scores`` (a list, one score per example) instead
    gives every field of example ``i`` the score ``scores[i]``, ignoring the values (0.0 past the end).
    ``i`` is the example's position among the examples scored: in ``Prompter.evaluate()`` the list it
    was given, in ``optimize()`` the validation split (or, for the optimizers' metric, the training
    split); the scorer sets it (:func:`scoring_example`) in the thread that scores the example, so the
    scores never depend on which thread scores what, or in what order. Called directly, outside a
    scorer, an example is known by its ``(input_data, field_path, extracted)``: the ``i``-th distinct
    one seen gets ``scores[i]``, and the same one always gets the same score.
    """

    name = "predefined_score"
    needs_expected = False
    none_in_label_means_absent = False

    def __init__(self, config: dict[str, Any] | None = None, lm: Any = None) -> None:
        super().__init__(config, lm)
        max_value = self.config.get("max_value")
        self.max_value: float | None = None if max_value is None else float(max_value)
        if self.max_value is not None and self.max_value <= 0:
            raise ConfigurationError("predefined_score: max_value must be positive")
        scores = self.config.get("scores")
        if scores is not None and not isinstance(scores, list):
            raise ConfigurationError("predefined_score: 'scores' must be a list")
        self.scores: list[Any] | None = scores
        self._seen: dict[str, int] = {}  # direct calls: key -> position, in the order first seen
        self._lock = threading.Lock()

    def normalize(self, value: Any) -> float:
        value = normalize_value(value)
        if isinstance(value, bool):
            return 1.0 if value else 0.0
        flag = as_bool(value)
        if flag is not None:
            return 1.0 if flag else 0.0
        number = as_number(value)
        if number is None:
            return 0.0
        if self.max_value is not None:
            number = number / self.max_value
        return clip(float(number))

    def position(self, extracted: Any, input_data: Any = None, field_path: str | None = None) -> int:
        """The index into ``scores`` for this call (see the class docstring)."""
        index = _EXAMPLE_INDEX.get()
        if index is not None:
            return index
        key = hashlib.sha256(
            json.dumps([normalize_value(input_data), field_path, normalize_value(extracted)], sort_keys=True,
                       default=str).encode()
        ).hexdigest()
        with self._lock:
            return self._seen.setdefault(key, len(self._seen))

    def evaluate(
        self, extracted: Any, expected: Any, input_data: InputData = None, field_path: str | None = None
    ) -> float:
        if self.scores is None:
            return self.normalize(extracted)
        i = self.position(extracted, input_data, field_path)
        return self.normalize(self.scores[i]) if 0 <= i < len(self.scores) else 0.0


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------

EVALUATOR_REGISTRY: dict[str, type[Evaluator]] = {}
_REGISTRY_LOCK = threading.Lock()


def register_evaluator(name: str, evaluator_class: type[Evaluator]) -> None:
    """Register ``evaluator_class`` under ``name`` (replacing any class registered under that name); the
    parameter names are dspydantic 0.1's.

    ``evaluator_class`` must be constructible as ``cls(config=dict, lm=backend_or_None)`` and have
    ``evaluate(extracted, expected, input_data=None, field_path=None) -> float``; subclassing
    :class:`Evaluator` gives you both.
    """
    if not isinstance(name, str) or not name:
        raise ConfigurationError("evaluator names must be non-empty strings")
    cls = evaluator_class
    if not isinstance(cls, type) or not callable(getattr(cls, "evaluate", None)):
        raise ConfigurationError(f"{cls!r} is not an evaluator class (it needs an evaluate method)")
    with _REGISTRY_LOCK:
        EVALUATOR_REGISTRY[name] = cls


def available_evaluators() -> list[str]:
    """The registered evaluator names, sorted."""
    return sorted(EVALUATOR_REGISTRY)


class _AdaptedEvaluator(Evaluator):
    """Wraps any object with an ``evaluate(extracted, expected, ...)`` method (duck-typed evaluators)."""

    def __init__(self, inner: Any) -> None:
        super().__init__({})
        self.inner = inner
        self.needs_expected = bool(getattr(inner, "needs_expected", True))
        self.none_in_label_means_absent = bool(getattr(inner, "none_in_label_means_absent", True))

    def evaluate(
        self, extracted: Any, expected: Any, input_data: InputData = None, field_path: str | None = None
    ) -> float:
        result = self.inner.evaluate(extracted, expected, input_data=input_data, field_path=field_path)
        return score_from(result, f"{type(self.inner).__name__}.evaluate")

    def __repr__(self) -> str:
        return f"_AdaptedEvaluator({self.inner!r})"


def _construct(cls: type[Any], config: dict[str, Any], lm: Any) -> Evaluator:
    try:
        instance = cls(config=config, lm=lm)
    except TypeError as exc:
        # a duck-typed class written for dspydantic 0.1 takes config only (with "lm" inside it)
        if "lm" not in str(exc):
            raise
        instance = cls(config={**config, "lm": lm} if lm is not None else config)
    return instance if isinstance(instance, Evaluator) else _AdaptedEvaluator(instance)


def _lookup(name: str) -> type[Evaluator]:
    try:
        return EVALUATOR_REGISTRY[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown evaluator {name!r}; known evaluators: {', '.join(available_evaluators())}"
        ) from None


def get_evaluator(name_or_spec: EvaluatorSpec, lm: Any = None) -> Evaluator:
    """Build an evaluator from a spec.

    ``name_or_spec`` may be:

    * a registered name, e.g. ``"exact"`` or ``"levenshtein"``;
    * a dict ``{"type": name, "config": {...}}`` or ``{"class": EvaluatorClass, "config": {...}}``;
    * an :class:`Evaluator` instance (returned as is) or class (instantiated with an empty config), or
      any object with an ``evaluate(extracted, expected, input_data=None, field_path=None)`` method;
    * a plain callable ``(extracted, expected) -> float | bool`` (it may also accept ``input_data``
      and ``field_path`` keywords), wrapped in a :class:`PythonCodeEvaluator`.

    ``lm`` is handed to evaluators that need one (the LLM judges); a ``"lm"`` inside the config wins.
    Raises :class:`ConfigurationError` for unknown names (listing the known ones) or malformed specs.
    """
    spec = name_or_spec
    if spec is None:
        spec = "exact"
    if isinstance(spec, Evaluator):
        return spec
    if isinstance(spec, str):
        return _construct(_lookup(spec), {}, lm)
    if isinstance(spec, type):
        return _construct(spec, {}, lm)
    if isinstance(spec, Mapping):
        config = spec.get("config") or {}
        if not isinstance(config, Mapping):
            raise ConfigurationError(f"an evaluator's 'config' must be a dict, got {type(config).__name__}")
        config = dict(config)
        effective_lm = config.pop("lm", None) or lm
        if "class" in spec:
            cls = spec["class"]
            if not isinstance(cls, type):
                raise ConfigurationError("an evaluator spec's 'class' must be a class")
            return _construct(cls, config, effective_lm)
        if "type" in spec:
            return _construct(_lookup(str(spec["type"])), config, effective_lm)
        raise ConfigurationError(
            "an evaluator spec dict needs a 'type' (a registered name) or a 'class'; "
            f"known evaluators: {', '.join(available_evaluators())}"
        )
    if callable(getattr(spec, "evaluate", None)):
        return _AdaptedEvaluator(spec)
    if callable(spec):
        return PythonCodeEvaluator(config={"function": spec})
    raise ConfigurationError(
        f"cannot make an evaluator from {type(spec).__name__}: pass a name, a dict, an Evaluator or a callable"
    )


for _name, _cls in (
    ("exact", StringCheckEvaluator),
    ("string_check", StringCheckEvaluator),
    ("levenshtein", LevenshteinEvaluator),
    ("text_similarity", TextSimilarityEvaluator),
    ("score_judge", ScoreJudge),
    ("score_model_grader", ScoreJudge),
    ("label_model_grader", LabelModelGrader),
    ("python_code", PythonCodeEvaluator),
    ("predefined_score", PredefinedScoreEvaluator),
):
    register_evaluator(_name, _cls)
del _name, _cls
