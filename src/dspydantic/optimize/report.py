"""What evaluation returns, and the scoring of a prompter on examples (optimize's result: :mod:`.result`).

:func:`score_examples` runs the Prompter's own extraction plan (renderer, re-asks, validation) on each
example and scores the output with :func:`~dspydantic.optimize.scoring.score_output`; both
:func:`evaluate_prompter` and the optimizer's baseline/candidate comparison use it, so a reported
score is always the score of the prompt as served. No DSPy import here.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._example import Example
from .._fanout import fan_out
from .._result import ExtractionResult, Usage
from ..errors import ConfigurationError, ExtractionError
from .result import OptimizationResult
from .scoring import EvaluationSummary, FieldEvaluators, OutputScore, WholeOutput, aggregate, resolve_evaluators

if TYPE_CHECKING:
    from .._prompter import Prompter

__all__ = [
    "EvaluationReport",
    "ExampleOutcome",
    "ExampleScorer",
    "FailingExample",
    "OptimizationResult",
    "evaluate_prompter",
    "score_examples",
]


# --------------------------------------------------------------------------------------------------
# scoring a prompter on examples
# --------------------------------------------------------------------------------------------------


def _is_judge(plan: FieldEvaluators | WholeOutput) -> bool:
    return isinstance(plan, FieldEvaluators) and not getattr(plan.default, "needs_expected", True)


class ExampleScorer:
    """Scores one extraction: labelled examples with the evaluator (``exact`` by default), unlabelled
    ones (``expected_output=None``) with an LLM judge (``score_judge`` on ``judge_lm``, unless the
    evaluator itself needs no label)."""

    def __init__(
        self,
        model: Any,
        evaluator: Any = None,
        *,
        judge_lm: Any = None,
        include_fields: Sequence[str] | None = None,
        exclude_fields: Sequence[str] | None = None,
    ) -> None:
        self.model = model
        self.include_fields = list(include_fields) if include_fields is not None else None
        self.exclude_fields = list(exclude_fields) if exclude_fields is not None else None
        self.plan = resolve_evaluators(evaluator, lm=judge_lm)
        self._judge_lm = judge_lm
        self._judge: FieldEvaluators | WholeOutput | None = self.plan if _is_judge(self.plan) else None

    def judge(self) -> FieldEvaluators | WholeOutput:
        if self._judge is None:
            if self._judge_lm is None:
                raise ConfigurationError("unlabelled examples need an LLM judge, and no LM was given for it")
            self._judge = resolve_evaluators("score_judge", lm=self._judge_lm)
        return self._judge

    def score(
        self,
        example: Example,
        predicted: Mapping[str, Any] | None,
        error: str | None = None,
        *,
        index: int | None = None,
    ) -> OutputScore:
        """Score one output; ``index`` is the example's position among those scored (what
        ``predefined_score``'s ``scores`` list is indexed by)."""
        from .evaluators import scoring_example
        from .scoring import score_output

        expected = example.expected_dict()
        plan = self.plan if expected is not None else self.judge()
        text = example.text if isinstance(example.text, str) else json.dumps(example.text, default=str)
        with scoring_example(index):
            s = score_output(
                expected,
                dict(predicted) if predicted is not None else None,
                evaluator_spec=plan,
                include_fields=self.include_fields,
                exclude_fields=self.exclude_fields,
                input_data={"text": text} if text is not None else None,
                model=self.model,
            )
        if predicted is None:
            # no valid output at all: nothing is right, not even the absent fields
            n = max(1, len(s.fields))
            return OutputScore(
                score=0.0,
                fields={p: 0.0 for p in s.fields},
                feedback=[f"no valid output: {error or 'extraction failed'}"],
                tp=0.0,
                fp=0.0,
                fn=float(n),
            )
        return s


@dataclass
class ExampleOutcome:
    """One example run through a prompter and scored."""

    index: int
    example: Example
    predicted: dict[str, Any] | None
    score: OutputScore
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    #: the extraction itself (field confidences and their signals: what a calibrator is fitted on)
    result: ExtractionResult[Any] | None = field(default=None, repr=False)


def score_examples(
    prompter: Prompter,
    examples: Sequence[Example],
    scorer: ExampleScorer,
    *,
    num_threads: int = 4,
    on_item: Callable[[int, int], None] | None = None,
    positions: Sequence[int | None] | None = None,
) -> list[ExampleOutcome]:
    """Run ``prompter`` on every example (``num_threads`` at a time) and score each output; in order.
    ``positions`` are the examples' positions evaluators see (their index here by default).

    An output that never validates (after the Prompter's re-asks) scores 0; LM/transport errors and a
    spent budget propagate.
    """
    items = list(examples)
    outcomes: list[ExampleOutcome | None] = [None] * len(items)
    done = itertools.count(1)  # next() on a count is atomic: safe from the worker threads (as predict_batch)

    def one(i: int) -> None:
        ex = items[i]
        predicted: dict[str, Any] | None = None
        error: str | None = None
        usage = Usage()
        res: ExtractionResult[Any] | None = None
        try:
            res = prompter._run_plan(ex)
            predicted = dict(res.data.model_dump(mode="json"))
            usage = res.usage
        except ExtractionError as exc:
            error = str(exc)
            if isinstance(exc.usage, Usage):
                usage = exc.usage
        position = i if positions is None else positions[i]
        outcomes[i] = ExampleOutcome(
            index=i, example=ex, predicted=predicted, score=scorer.score(ex, predicted, error, index=position),
            error=error, usage=usage, result=res,
        )
        finished = next(done)
        if on_item is not None:
            on_item(finished, len(items))

    fan_out(one, range(len(items)), num_threads)
    return [o for o in outcomes if o is not None]


# --------------------------------------------------------------------------------------------------
# evaluation report
# --------------------------------------------------------------------------------------------------


@dataclass
class FailingExample:
    """An example whose output was not fully right."""

    index: int
    example: Example
    expected: dict[str, Any] | None
    predicted: dict[str, Any] | None
    score: float
    field_scores: dict[str, float]
    feedback: list[str]
    error: str | None = None


@dataclass
class EvaluationReport:
    """What :meth:`Prompter.evaluate` returns: the :class:`EvaluationSummary` of the scores (``stats``)
    with the examples behind it.

    ``score`` is the mean example score; ``per_field`` the mean score of each field path (its
    accuracy with the ``exact`` evaluator); ``precision``/``recall``/``f1`` are micro-averaged over
    (field, value) pairs, a correctly absent value counting as a true positive (these and ``n`` are
    ``stats``' fields); ``failures`` are the examples scoring below ``threshold`` (1.0: anything not
    fully right).
    """

    stats: EvaluationSummary
    failures: list[FailingExample]
    outcomes: list[ExampleOutcome] = field(default_factory=list, repr=False)
    usage: Usage = field(default_factory=Usage)
    threshold: float = 1.0

    @property
    def score(self) -> float:
        return self.stats.score

    @property
    def per_field(self) -> dict[str, float]:
        return self.stats.per_field

    @property
    def precision(self) -> float:
        return self.stats.precision

    @property
    def recall(self) -> float:
        return self.stats.recall

    @property
    def f1(self) -> float:
        return self.stats.f1

    @property
    def n(self) -> int:
        return self.stats.n

    @property
    def accuracy(self) -> float:
        """Fraction of examples that are fully right."""
        return sum(1 for o in self.outcomes if o.score.score >= 1.0) / self.n if self.n else 0.0

    @property
    def per_field_accuracy(self) -> dict[str, float]:
        return dict(self.per_field)

    def summary(self) -> str:
        lines = [
            f"score {self.score:.3f} over {self.n} examples  (P {self.precision:.3f}  R {self.recall:.3f}  "
            f"F1 {self.f1:.3f}; {len(self.failures)} not fully right)"
        ]
        for path, s in sorted(self.per_field.items()):
            lines.append(f"  {path:<40} {s:.3f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def build_report(outcomes: Sequence[ExampleOutcome], *, threshold: float = 1.0) -> EvaluationReport:
    summary: EvaluationSummary = aggregate([o.score for o in outcomes])
    usage = Usage()
    failures = []
    for o in outcomes:
        usage.add(o.usage)
        if o.score.score < threshold:
            failures.append(
                FailingExample(
                    index=o.index,
                    example=o.example,
                    expected=o.example.expected_dict(),
                    predicted=o.predicted,
                    score=o.score.score,
                    field_scores=dict(o.score.fields),
                    feedback=list(o.score.feedback),
                    error=o.error,
                )
            )
    return EvaluationReport(
        stats=summary,
        failures=failures,
        outcomes=list(outcomes),
        usage=usage,
        threshold=threshold,
    )


def evaluate_prompter(
    prompter: Prompter,
    examples: Sequence[Example],
    evaluator: Any = None,
    *,
    evaluate_fn: Any = None,
    include_fields: Sequence[str] | None = None,
    exclude_fields: Sequence[str] | None = None,
    num_threads: int = 4,
    threshold: float = 1.0,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> EvaluationReport:
    """Score ``prompter`` as it is served on labelled (or, with an LLM judge, unlabelled) examples."""
    if evaluator is not None and evaluate_fn is not None:
        raise ConfigurationError("pass evaluator or its alias evaluate_fn, not both")
    evaluator = evaluator if evaluator is not None else evaluate_fn
    items = _check_examples(examples)
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ConfigurationError(f"num_threads must be a positive int, got {num_threads!r}")
    from .._example import check_labels

    check_labels(prompter.model, items)  # every label fits the model, before any LM call
    from .gateway import Budget, Gateway

    scorer = ExampleScorer(
        prompter.model,
        evaluator,
        # the judge goes through the Prompter's cache and transport retries too
        judge_lm=Gateway(prompter, Budget()).lm,
        include_fields=include_fields,
        exclude_fields=exclude_fields,
    )
    if any(ex.expected_output is None for ex in items):
        scorer.judge()  # fail now, before any call, if no judge can be built

    def on_item(done: int, total: int) -> None:
        if on_progress is not None:
            on_progress({"event": "evaluate", "done": done, "total": total})

    outcomes = score_examples(prompter, items, scorer, num_threads=num_threads, on_item=on_item)
    return build_report(outcomes, threshold=threshold)


def _check_examples(examples: Any) -> list[Example]:
    if examples is None or isinstance(examples, (str, bytes, Mapping)):
        raise ConfigurationError("examples must be a list of dspydantic.Example")
    items = list(examples)
    if not items:
        raise ConfigurationError("no examples given")
    bad = [i for i, ex in enumerate(items) if not isinstance(ex, Example)]
    if bad:
        raise ConfigurationError(
            f"examples must be dspydantic.Example instances; item {bad[0]} is {type(items[bad[0]]).__name__}"
        )
    return items
