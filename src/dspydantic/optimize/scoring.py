"""Score one whole extraction against its label, field by field, and aggregate many such scores.

:func:`score_output` walks the label and the prediction together (both as JSON-like values; see
:func:`~dspydantic.optimize.values.normalize_value`) and scores every *leaf field*:

* nested objects recurse: ``address.city``;
* a list of scalars (``tags``) is one field, scored as a multiset: the F1 of its items, items being
  matched one-to-one under the field's evaluator (so ``["a", "b"]`` vs ``["b", "a"]`` is 1.0);
* a list of objects (``items``) is matched item to item by an optimal assignment on the items' mean
  field scores (``scipy.optimize.linear_sum_assignment`` when SciPy is installed, else a built-in
  Hungarian algorithm); each item field becomes one leaf, ``items[].name``, whose score is the sum
  over matched pairs divided by the larger of the two list lengths, so unmatched items count as wrong;
* a ``dict[str, X]`` field (known from the Pydantic model) is one field scored key by key: the mean
  over the union of keys (a missing key scores 0);
* ``None`` or missing on both sides scores 1.0 ("correctly absent"); ``None`` against a value scores
  0.0 — except that ``predefined_score`` (which needs no label) always scores the predicted value, and
  the LLM judges score every predicted value of an output that has no label at all
  (``expected=None``; list items are then scored one by one, with no matching); see
  ``Evaluator.needs_expected`` / ``none_in_label_means_absent``.

The output's ``score`` is the mean over its leaf fields. Field paths use dots, ``[]`` for "any item of
a list" and are what ``include_fields``, ``exclude_fields`` and ``field_overrides`` refer to (a path
also covers everything below it; ``items.name`` and ``items[].name`` are the same path).

Precision / recall counts are over (field, value) pairs and are *soft*: a leaf scored ``s`` with both
values present adds ``s`` to ``tp`` and ``1 - s`` to both ``fp`` and ``fn``; a missing prediction adds
1 to ``fn``, an unexpected one 1 to ``fp``, and a correctly absent value 1 to ``tp``. List items count
one pair per item. With the ``exact`` evaluator all counts are whole numbers.
"""

from __future__ import annotations

import collections.abc
import json
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from .._schema import join_path
from .assignment import assign
from .evaluators import Evaluator
from .field_evaluators import FieldEvaluators, WholeOutput, path_segments, resolve_evaluators, whole_output
from .values import normalize_value, score_from

__all__ = [
    "EvaluationSummary",
    "FieldEvaluators",
    "OutputScore",
    "WholeOutput",
    "aggregate",
    "resolve_evaluators",
    "score_output",
    "whole_output",
]


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp > 0 else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn > 0 else (1.0 if fp == 0 else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


@dataclass(frozen=True)
class OutputScore:
    """The score of one prediction against its label.

    ``score`` is the mean over ``fields`` (path → score in [0, 1]); ``feedback`` has one readable line
    per field that is not fully right (``"total: expected 120.0, got 12.0"``); ``tp`` / ``fp`` /
    ``fn`` are the (soft) counts of (field, value) pairs behind :attr:`precision`, :attr:`recall` and
    :attr:`f1`.
    """

    score: float
    fields: dict[str, float] = field(default_factory=dict)
    feedback: list[str] = field(default_factory=list)
    tp: float = 0.0
    fp: float = 0.0
    fn: float = 0.0

    @property
    def precision(self) -> float:
        return _prf(self.tp, self.fp, self.fn)[0]

    @property
    def recall(self) -> float:
        return _prf(self.tp, self.fp, self.fn)[1]

    @property
    def f1(self) -> float:
        return _prf(self.tp, self.fp, self.fn)[2]


@dataclass(frozen=True)
class EvaluationSummary:
    """Many :class:`OutputScore` s summed up: mean score, mean per field path, micro P/R/F1, count."""

    score: float
    per_field: dict[str, float]
    precision: float
    recall: float
    f1: float
    n: int


def aggregate(scores: Sequence[OutputScore]) -> EvaluationSummary:
    """Summarise scores: ``score`` is their mean, ``per_field`` the mean of each path over the outputs
    that have it, and precision / recall / F1 are computed from the summed counts (micro-average)."""
    n = len(scores)
    if n == 0:
        return EvaluationSummary(score=0.0, per_field={}, precision=0.0, recall=0.0, f1=0.0, n=0)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for s in scores:
        for path, value in s.fields.items():
            sums[path] = sums.get(path, 0.0) + value
            counts[path] = counts.get(path, 0) + 1
    tp, fp, fn = (sum(getattr(s, name) for s in scores) for name in ("tp", "fp", "fn"))
    precision, recall, f1 = _prf(tp, fp, fn)
    return EvaluationSummary(
        score=sum(s.score for s in scores) / n,
        per_field={path: sums[path] / counts[path] for path in sums},
        precision=precision,
        recall=recall,
        f1=f1,
        n=n,
    )


# --------------------------------------------------------------------------------------------------
# walking the values
# --------------------------------------------------------------------------------------------------


def _map_paths(model: type[BaseModel]) -> frozenset[str]:
    """Paths of the ``dict[str, X]`` fields of ``model`` (``[]`` for list items), e.g. ``items[].prices``."""
    out: set[str] = set()

    def walk_type(tp: Any, path: str, depth: int) -> None:
        if depth > 12:
            return
        origin, args = get_origin(tp), get_args(tp)
        if origin is Annotated:
            walk_type(args[0], path, depth + 1)
        elif origin is Union or origin is types.UnionType:
            for arg in args:
                walk_type(arg, path, depth + 1)
        elif tp is dict or (isinstance(origin, type) and issubclass(origin, collections.abc.Mapping)):
            out.add(path)
        elif tp in (list, tuple, set, frozenset) or (
            isinstance(origin, type)
            and issubclass(origin, (collections.abc.Sequence, collections.abc.Set))
            and not issubclass(origin, (str, bytes))
        ):
            for arg in args:
                if arg is not Ellipsis:
                    walk_type(arg, path + "[]", depth + 1)
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            for name, info in tp.model_fields.items():
                walk_type(info.annotation, join_path(path, name), depth + 1)

    walk_type(model, "", 0)
    return frozenset(out)


def _fmt(value: Any, limit: int = 160) -> str:
    if value is None:
        return "missing"
    if isinstance(value, str):
        text = value if value else '""'
    elif isinstance(value, (dict, list, bool)):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass
class _Acc:
    fields: dict[str, float] = field(default_factory=dict)
    feedback: list[str] = field(default_factory=list)
    tp: float = 0.0
    fp: float = 0.0
    fn: float = 0.0

    def mean(self) -> float:
        return sum(self.fields.values()) / len(self.fields) if self.fields else 1.0

    def merge_counts(self, other: _Acc) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn


class _Scorer:
    def __init__(
        self,
        plan: FieldEvaluators,
        *,
        include: Sequence[str] | None,
        exclude: Sequence[str] | None,
        map_paths: frozenset[str],
        input_data: dict[str, Any] | None,
        labelled: bool,
    ) -> None:
        self.plan = plan
        self.labelled = labelled
        self.include = None if include is None else [path_segments(p) for p in include]
        self.exclude = [path_segments(p) for p in exclude or ()]
        self.map_paths = map_paths
        self.input_data = input_data

    # -- filtering ----------------------------------------------------------------------------------

    def _excluded(self, path: str) -> bool:
        segments = path_segments(path)
        return any(segments[: len(p)] == p for p in self.exclude)

    def _included(self, path: str) -> bool:
        """``path`` lies inside an included subtree (or nothing is included explicitly)."""
        if self.include is None:
            return True
        segments = path_segments(path)
        return any(segments[: len(p)] == p for p in self.include)

    def _on_the_way(self, path: str) -> bool:
        """``path`` is an ancestor of an included path."""
        if self.include is None:
            return True
        segments = path_segments(path)
        return any(p[: len(segments)] == segments for p in self.include)

    # -- scores -------------------------------------------------------------------------------------

    def _value_score(self, evaluator: Evaluator, expected: Any, predicted: Any, path: str) -> float:
        if expected is None and predicted is None:
            return 1.0
        if expected is None and (evaluator.needs_expected or (self.labelled and evaluator.none_in_label_means_absent)):
            return 0.0
        if predicted is None:
            return 0.0
        score = evaluator.evaluate(predicted, expected, input_data=self.input_data, field_path=path)
        return score_from(score, f"{type(evaluator).__name__}.evaluate")

    def compare(self, exp: Any, pred: Any, path: str, shown: str, acc: _Acc, absent: bool = False) -> None:
        """Score ``pred`` against ``exp`` at ``path`` into ``acc``. With ``absent`` one side is a whole
        missing list item: record 0 for every leaf and count the present side's values, calling no
        evaluator and writing no feedback (the caller writes one line for the item)."""
        if path in self.map_paths and (isinstance(exp, dict) or isinstance(pred, dict)):
            self._map(exp, pred, path, shown, acc, absent)
        elif isinstance(exp, dict) or isinstance(pred, dict):
            e = exp if isinstance(exp, dict) else {}
            p = pred if isinstance(pred, dict) else {}
            for key in [*e, *(k for k in p if k not in e)]:
                child = join_path(path, key)
                if self._excluded(child) or not (self._included(child) or self._on_the_way(child)):
                    continue
                self.compare(e.get(key), p.get(key), child, join_path(shown, key), acc, absent)
        elif isinstance(exp, list) or isinstance(pred, list):
            items_e = exp if isinstance(exp, list) else ([] if exp is None else [exp])
            items_p = pred if isinstance(pred, list) else ([] if pred is None else [pred])
            if any(isinstance(x, (dict, list)) for x in (*items_e, *items_p)):
                self._structures(items_e, items_p, path, shown, acc, absent)
            else:
                self._scalars(items_e, items_p, path, shown, acc, absent)
        else:
            self._leaf(exp, pred, path, shown, acc, absent)

    def _leaf(self, exp: Any, pred: Any, path: str, shown: str, acc: _Acc, absent: bool) -> None:
        if not self._included(path):
            return
        if absent:
            acc.fields[path] = 0.0
            acc.fn += exp is not None
            acc.fp += pred is not None
            return
        evaluator = self.plan.for_path(path)
        score = self._value_score(evaluator, exp, pred, path)
        acc.fields[path] = score
        if exp is None and pred is None:
            acc.tp += 1
        elif pred is None:
            acc.fn += 1
        elif exp is None:
            acc.tp += score
            acc.fp += 1 - score
        else:
            acc.tp += score
            acc.fp += 1 - score
            acc.fn += 1 - score
        if score < 1.0:
            line = f"{shown}: expected {_fmt(exp)}, got {_fmt(pred)}"
            acc.feedback.append(line + (f" (score {score:.2f})" if score > 0 else ""))

    def _scalars(self, e: list[Any], p: list[Any], path: str, shown: str, acc: _Acc, absent: bool) -> None:
        if not self._included(path):
            return
        n, m = len(e), len(p)
        if absent:
            acc.fields[path] = 0.0
            acc.fn += n
            acc.fp += m
            return
        if n == 0 and m == 0:
            acc.fields[path] = 1.0
            acc.tp += 1
            return
        evaluator = self.plan.for_path(path)
        if n == 0 and not self.labelled:  # no label at all: each predicted item is scored on its own
            item_scores = [self._value_score(evaluator, None, y, path) for y in p]
            acc.fields[path] = sum(item_scores) / m
            acc.tp += sum(item_scores)
            acc.fp += m - sum(item_scores)
            for y, item_score in zip(p, item_scores, strict=True):
                if item_score < 1.0:
                    acc.feedback.append(f"{shown}: item {_fmt(y)} scored {item_score:.2f}")
            return
        matrix = [[self._value_score(evaluator, x, y, path) for y in p] for x in e]
        pairs = [(i, j) for i, j in assign(matrix) if matrix[i][j] > 0]
        tp = sum(matrix[i][j] for i, j in pairs)
        score = 2 * tp / (n + m)
        acc.fields[path] = score
        acc.tp += tp
        acc.fp += m - tp
        acc.fn += n - tp
        if score < 1.0:
            matched_e = {i for i, _ in pairs}
            matched_p = {j for _, j in pairs}
            details = []
            missing = [_fmt(e[i]) for i in range(n) if i not in matched_e]
            unexpected = [_fmt(p[j]) for j in range(m) if j not in matched_p]
            partial = [f"{_fmt(e[i])} ~ {_fmt(p[j])}" for i, j in pairs if matrix[i][j] < 1.0]
            if missing:
                details.append("missing " + ", ".join(missing))
            if unexpected:
                details.append("unexpected " + ", ".join(unexpected))
            if partial:
                details.append("partly matching " + ", ".join(partial))
            acc.feedback.append(f"{shown}: expected {_fmt(e)}, got {_fmt(p)} ({'; '.join(details)})")

    def _structures(self, e: list[Any], p: list[Any], path: str, shown: str, acc: _Acc, absent: bool) -> None:
        n, m = len(e), len(p)
        if n == 0 and m == 0:
            if not absent:
                acc.fields[path] = 1.0
                acc.tp += 1
            return
        sub = f"{path}[]"
        if absent:
            for i, x in enumerate(e):
                self.compare(x, None, sub, f"{shown}[{i}]", acc, absent=True)
            for j, y in enumerate(p):
                self.compare(None, y, sub, f"{shown}[{j}]", acc, absent=True)
            return
        if n == 0 and not self.labelled:  # no label at all: each predicted item is scored on its own
            alone = [_Acc() for _ in p]
            for j, y in enumerate(p):
                self.compare(None, y, sub, f"{shown}[{j}]", alone[j])
            for key in dict.fromkeys(k for r in alone for k in r.fields):
                acc.fields[key] = sum(r.fields.get(key, 1.0) for r in alone) / m
            for r in alone:
                acc.merge_counts(r)
                acc.feedback.extend(r.feedback)
            return
        results = [[_Acc() for _ in range(m)] for _ in range(n)]
        for i, x in enumerate(e):
            for j, y in enumerate(p):
                self.compare(x, y, sub, f"{shown}[{i}]", results[i][j])
        matrix = [[r.mean() for r in row] for row in results]
        pairs = [(i, j) for i, j in assign(matrix) if matrix[i][j] > 0]
        matched_e = {i for i, _ in pairs}
        matched_p = {j for _, j in pairs}
        leftovers: list[_Acc] = []
        for i in range(n):
            if i not in matched_e:
                r = _Acc()
                self.compare(e[i], None, sub, f"{shown}[{i}]", r, absent=True)
                leftovers.append(r)
                acc.feedback.append(f"{shown}[{i}]: expected {_fmt(e[i])}, got missing")
        for j in range(m):
            if j not in matched_p:
                r = _Acc()
                self.compare(None, p[j], sub, f"{shown}[{j}]", r, absent=True)
                leftovers.append(r)
                acc.feedback.append(f"{shown}: unexpected extra item {_fmt(p[j])}")
        keys: dict[str, None] = {}
        for i, j in pairs:
            keys.update(dict.fromkeys(results[i][j].fields))
        for r in leftovers:
            keys.update(dict.fromkeys(r.fields))
        denominator = max(n, m)
        for key in keys:
            acc.fields[key] = sum(results[i][j].fields.get(key, 1.0) for i, j in pairs) / denominator
        for i, j in sorted(pairs):
            acc.merge_counts(results[i][j])
            acc.feedback.extend(results[i][j].feedback)
        for r in leftovers:
            acc.merge_counts(r)

    def _map(self, exp: Any, pred: Any, path: str, shown: str, acc: _Acc, absent: bool) -> None:
        if not self._included(path):
            return
        e = exp if isinstance(exp, dict) else {}
        p = pred if isinstance(pred, dict) else {}
        keys = [*e, *(k for k in p if k not in e)]
        if not keys:
            if not absent:
                acc.fields[path] = 1.0
                acc.tp += 1
            return
        scores = []
        for key in keys:
            r = _Acc()
            self.compare(e.get(key), p.get(key), f"{path}{{}}", f"{shown}[{json.dumps(key)}]", r, absent)
            scores.append(r.mean())
            acc.merge_counts(r)
            acc.feedback.extend(r.feedback)
        acc.fields[path] = 0.0 if absent else sum(scores) / len(scores)


# --------------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------------


def score_output(
    expected: Any,
    predicted: Any,
    *,
    evaluator_spec: Any = None,
    lm: Any = None,
    include_fields: Sequence[str] | None = None,
    exclude_fields: Sequence[str] | None = None,
    input_data: dict[str, Any] | None = None,
    model: type[BaseModel] | None = None,
) -> OutputScore:
    """Score ``predicted`` against the label ``expected``; see the module docstring for the rules.

    Args:
        expected: the label — a dict (Python values allowed: dates, ``Decimal``, enums, nested
            models), a Pydantic model, or a string (free-text mode: compared with the prediction's
            ``output`` field, or with the prediction itself when that is a string).
        predicted: the prediction — usually ``model.model_dump(mode="json")`` or the model itself.
        evaluator_spec: ``None`` (``"exact"``), anything
            :func:`~dspydantic.optimize.evaluators.get_evaluator` accepts, ``{"default": spec,
            "field_overrides": {path: spec}}``, a resolved :class:`FieldEvaluators`, or a whole-output
            metric (:func:`whole_output`, or a callable whose first parameter is named ``expected``,
            ``expected_output``, ``example`` or ``gold``), whose result is the score as is
            (``fields`` is then empty and the counts are ``tp = s``, ``fp = fn = 1 - s``).
        lm: the LM backend handed to LLM-judge evaluators.
        include_fields: only score these paths (and what is below them).
        exclude_fields: never score these paths (nor what is below them).
        input_data: the input the prediction was extracted from; passed to evaluators as context.
        model: the Pydantic model class, used to find ``dict[str, X]`` fields; taken from
            ``predicted`` / ``expected`` when they are model instances. Without it every dict is
            treated as a nested object.

    With no field left to score (everything filtered out) the score is 1.0.
    """
    plan = resolve_evaluators(evaluator_spec, lm=lm)
    if model is None:
        if isinstance(predicted, BaseModel):
            model = type(predicted)
        elif isinstance(expected, BaseModel):
            model = type(expected)
    exp = normalize_value(expected)
    pred = normalize_value(predicted)
    structured = isinstance(exp, dict) or (exp is None and isinstance(pred, dict))
    if not structured and isinstance(pred, dict) and "output" in pred:
        pred = pred["output"]
    if isinstance(plan, WholeOutput):
        s = score_from(plan.function(exp, pred), "the whole-output metric")
        feedback = [] if s >= 1.0 else [f"output scored {s:.2f} by the whole-output metric"]
        return OutputScore(score=s, fields={}, feedback=feedback, tp=s, fp=1 - s, fn=1 - s)
    scorer = _Scorer(
        plan,
        include=include_fields,
        exclude=exclude_fields,
        map_paths=_map_paths(model) if model is not None else frozenset(),
        input_data=input_data,
        labelled=exp is not None,
    )
    acc = _Acc()
    if structured:
        scorer.compare(exp, pred, "", "", acc)
    else:
        scorer.compare(exp, pred, "output", "output", acc)
    return OutputScore(score=acc.mean(), fields=acc.fields, feedback=acc.feedback, tp=acc.tp, fp=acc.fp, fn=acc.fn)
