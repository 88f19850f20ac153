"""What optimization and evaluation return, and the scoring of a prompter on examples.

:func:`score_examples` runs the Prompter's own extraction plan (renderer, re-asks, validation) on each
example and scores the output with :func:`~dspydantic.optimize.scoring.score_output`; both
:func:`evaluate_prompter` and the optimizer's baseline/candidate comparison use it, so a reported
score is always the score of the prompt as served. No DSPy import here.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._example import Example
from .._render import Demo, PromptState
from .._result import ExtractionResult, Usage
from ..errors import ConfigurationError, ExtractionError
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

    def score(self, example: Example, predicted: Mapping[str, Any] | None, error: str | None = None) -> OutputScore:
        from .scoring import score_output

        expected = example.expected_dict()
        plan = self.plan if expected is not None else self.judge()
        text = example.text if isinstance(example.text, str) else json.dumps(example.text, default=str)
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
) -> list[ExampleOutcome]:
    """Run ``prompter`` on every example (``num_threads`` at a time) and score each output; in order.

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
        outcomes[i] = ExampleOutcome(
            index=i, example=ex, predicted=predicted, score=scorer.score(ex, predicted, error), error=error,
            usage=usage, result=res,
        )
        finished = next(done)
        if on_item is not None:
            on_item(finished, len(items))

    if num_threads <= 1 or len(items) <= 1:
        for i in range(len(items)):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=min(num_threads, len(items))) as pool:
            futures = [pool.submit(one, i) for i in range(len(items))]
            first: BaseException | None = None
            for f in futures:
                try:
                    f.result()
                except BaseException as exc:  # re-raised below, after every worker ended
                    if first is None:
                        first = exc
            if first is not None:
                raise first
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
    """What :meth:`Prompter.evaluate` returns.

    ``score`` is the mean example score; ``per_field`` the mean score of each field path (its
    accuracy with the ``exact`` evaluator); ``precision``/``recall``/``f1`` are micro-averaged over
    (field, value) pairs, a correctly absent value counting as a true positive; ``failures`` are the
    examples scoring below ``threshold`` (1.0: anything not fully right).
    """

    score: float
    per_field: dict[str, float]
    precision: float
    recall: float
    f1: float
    n: int
    failures: list[FailingExample]
    outcomes: list[ExampleOutcome] = field(default_factory=list, repr=False)
    usage: Usage = field(default_factory=Usage)
    threshold: float = 1.0

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
        score=summary.score,
        per_field=dict(summary.per_field),
        precision=summary.precision,
        recall=summary.recall,
        f1=summary.f1,
        n=summary.n,
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
    from .bridge import Budget, Gateway

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


# --------------------------------------------------------------------------------------------------
# optimization result
# --------------------------------------------------------------------------------------------------


@dataclass
class OptimizationResult:
    """What :meth:`Prompter.optimize` returns (and stores as ``prompter.optimization_result``).

    Scores are measured on the held-out validation split, which no optimizer ever saw: ``baseline_*``
    for the prompts the Prompter had, given the same number of few-shot demos the candidate may use
    (plain labelled training examples; see ``baseline_state``), ``candidate_*`` for the best candidate
    the optimizer found, rendered exactly as it is served. ``accepted`` says whether the candidate beat
    the baseline and was adopted; if not the Prompter keeps its original prompts (``state``), or, with
    ``fallback="baseline"``, serves the baseline exactly as it was scored.

    Usage counts this run only: ``lm_calls`` are real LM calls (cache hits in ``cache_hits``),
    ``requests`` is both (what ``max_lm_calls`` limits), tokens are those of real calls and
    ``estimated_cost_usd`` their price where the model's price is known (``None`` otherwise).

    ``validated`` is False when nothing could be scored on held-out examples (``optimize()`` got a single
    example and no ``valset``): the scores are then NaN, never made up, and ``message`` says so.
    """

    baseline_score: float
    optimized_score: float
    accepted: bool
    message: str
    optimizer: str
    optimizer_reason: str
    state: PromptState
    baseline_state: PromptState
    candidate_state: PromptState | None
    candidate_score: float | None
    baseline_per_field: dict[str, float]
    candidate_per_field: dict[str, float]
    n_train: int
    n_val: int
    n_examples: int
    lm_calls: int
    requests: int
    cache_hits: int
    prompt_tokens: int
    completion_tokens: int
    estimated_cost_usd: float | None
    wall_time_s: float
    budget_exhausted: bool = False
    seed: int = 0
    stages: list[str] = field(default_factory=list)
    demo_budget: int = 0
    field_descriptions_before: dict[str, str] = field(default_factory=dict)
    baseline_report: EvaluationReport | None = field(default=None, repr=False)
    candidate_report: EvaluationReport | None = field(default=None, repr=False)
    #: the original prompts as they were, scored on the same validation split when the baseline had demos
    #: they lack (``compare_original=True``); ``None`` when baseline and original are the same prompts
    original_score: float | None = None
    original_per_field: dict[str, float] = field(default_factory=dict)
    original_report: EvaluationReport | None = field(default=None, repr=False)
    #: False when there was no held-out validation at all (one example, no valset): scores are NaN
    validated: bool = True
    #: the field-confidence calibrator fitted on the validation outcomes of the served prompts
    #: (a :class:`dspydantic.confidence.CalibrationReport`), and a line saying what was done
    calibration: Any = field(default=None, repr=False)
    calibration_note: str | None = None

    # -- the adopted prompts (dspydantic 0.1 names) --------------------------------------------------
    @property
    def optimized_descriptions(self) -> dict[str, str]:
        """Every field path's description in the adopted prompts."""
        return dict(self._descriptions(self.state))

    @property
    def optimized_system_prompt(self) -> str | None:
        return self.state.system_prompt

    @property
    def optimized_instruction_prompt(self) -> str | None:
        return self.state.instruction_prompt

    @property
    def optimized_demos(self) -> list[dict[str, Any]]:
        """The adopted demos: ours (``input``/``output``) and 0.1's keys (``input_data``/``expected_output``)."""
        from .._compat import legacy_demo_json

        return [{**d.to_json(), **legacy_demo_json(d)} for d in self.state.demos]

    @property
    def demos(self) -> tuple[Demo, ...]:
        return self.state.demos

    @property
    def per_field_before(self) -> dict[str, float]:
        return dict(self.baseline_per_field)

    @property
    def per_field_after(self) -> dict[str, float]:
        """Per-field scores of what the prompter serves now (the baseline's when that was not scored)."""
        if self.accepted:
            return dict(self.candidate_per_field)
        if self.state != self.baseline_state and self.original_per_field:
            return dict(self.original_per_field)
        return dict(self.baseline_per_field)

    @property
    def improvement(self) -> float:
        return self.optimized_score - self.baseline_score

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def api_calls(self) -> int:
        """dspydantic 0.1's name for :attr:`lm_calls` (the LM calls this run made; cache hits excluded)."""
        return self.lm_calls

    @property
    def metrics(self) -> dict[str, Any]:
        """A flat dict of the numbers (dspydantic 0.1 had ``metrics``; its keys are here too)."""
        base = self.baseline_score
        return {
            "average_score": self.optimized_score,
            "improvement_percent": self.improvement / base * 100 if base == base and base > 0 else 0.0,
            "validation_size": self.n_val,
            "training_size": self.n_train,
            "validated": self.validated,
            "baseline_score": self.baseline_score,
            "optimized_score": self.optimized_score,
            "candidate_score": self.candidate_score,
            "original_score": self.original_score,
            "improvement": self.improvement,
            "accepted": self.accepted,
            "optimizer": self.optimizer,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "lm_calls": self.lm_calls,
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "estimated_cost_usd": self.estimated_cost_usd,
            "wall_time_s": self.wall_time_s,
            "budget_exhausted": self.budget_exhausted,
        }

    # -- persistence (``Prompter.save`` stores ``to_json()`` as report.json) ------------------------------
    FORMAT = "dspydantic.optimization_result/1"

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict of everything but the per-example reports."""
        out: dict[str, Any] = {"format": self.FORMAT}
        for name in (
            "baseline_score", "optimized_score", "accepted", "message", "optimizer", "optimizer_reason",
            "candidate_score", "baseline_per_field", "candidate_per_field", "n_train", "n_val", "n_examples",
            "lm_calls", "requests", "cache_hits", "prompt_tokens", "completion_tokens", "estimated_cost_usd",
            "wall_time_s", "budget_exhausted", "seed", "stages", "demo_budget", "field_descriptions_before",
            "original_score", "original_per_field", "validated",
        ):
            value = getattr(self, name)
            if isinstance(value, float) and value != value:  # NaN is not JSON
                value = None
            out[name] = value
        for name in ("state", "baseline_state", "candidate_state"):
            st = getattr(self, name)
            out[name] = _state_json(st) if st is not None else None
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OptimizationResult:
        """Rebuild from :meth:`to_json` output (raises ``ValueError`` on anything else)."""
        if not isinstance(data, Mapping) or data.get("format") != cls.FORMAT:
            raise ValueError("not a dspydantic optimization result")
        kw = {k: v for k, v in data.items() if k != "format"}
        for name in ("baseline_score", "optimized_score"):
            if kw.get(name) is None:
                kw[name] = float("nan")
        for name in ("state", "baseline_state", "candidate_state"):
            kw[name] = _state_from_json(kw[name]) if kw.get(name) is not None else None
        if kw.get("state") is None or kw.get("baseline_state") is None:
            raise ValueError("an optimization result needs its state and baseline_state")
        return cls(**kw)

    def _descriptions(self, state: PromptState) -> Mapping[str, str]:
        return {**self.field_descriptions_before, **dict(state.field_descriptions)}

    def summary(self) -> str:
        verdict = "accepted" if self.accepted else "not accepted"
        if not self.validated:
            return f"{self.optimizer}: not validated (no held-out example); {self.message}"
        lines = [
            f"{self.optimizer}: baseline {self.baseline_score:.3f} -> candidate "
            + (f"{self.candidate_score:.3f}" if self.candidate_score is not None else "n/a")
            + (f", original prompts {self.original_score:.3f}" if self.original_score is not None else "")
            + f" ({verdict}); train {self.n_train}, validation {self.n_val}",
            f"{self.lm_calls} LM calls ({self.cache_hits} cache hits), {self.prompt_tokens} prompt + "
            f"{self.completion_tokens} completion tokens"
            + (f", ~${self.estimated_cost_usd:.4f}" if self.estimated_cost_usd is not None else "")
            + f", {self.wall_time_s:.1f} s" + (" (budget exhausted)" if self.budget_exhausted else ""),
            self.message,
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _state_json(state: PromptState) -> dict[str, Any]:
    return {
        "system_prompt": state.system_prompt,
        "instruction_prompt": state.instruction_prompt,
        "field_descriptions": dict(state.field_descriptions),
        "demos": [d.to_json() for d in state.demos],
    }


def _state_from_json(data: Mapping[str, Any]) -> PromptState:
    return PromptState(
        system_prompt=data.get("system_prompt"),
        instruction_prompt=data.get("instruction_prompt"),
        field_descriptions={str(k): str(v) for k, v in (data.get("field_descriptions") or {}).items()},
        demos=tuple(Demo.from_json(d) for d in data.get("demos") or ()),
    )
