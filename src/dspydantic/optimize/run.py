"""``Prompter.optimize()``: split, baseline, optimizer stages, an honest comparison, adoption.

The run, top to bottom:

1. **Check** everything that can be checked without an LM call (examples, split sizes, the optimizer
   name and its optional dependency, its keyword arguments, the budget) — an impossible choice raises
   :class:`~dspydantic.errors.ConfigurationError` before the first request.
2. **Split** the examples, shuffled with ``seed``, into a training split and a validation split
   (``valset=`` replaces the split; training examples whose input also appears in it are dropped).
   Optimizers only ever see the training split: demos and candidate generation never touch validation.
3. **Baseline**: the current prompts, given the same number of few-shot demos the optimizer may use
   (the current demos, topped up with the first labelled training examples as plain demos), scored on the
   validation split with the Prompter's own extraction plan.
4. **Stages**: ``gepa`` evolves field descriptions and the system / instruction prompts
   (:mod:`.fields`); the DSPy optimizers (BootstrapFewShot, its random search, MIPROv2, COPRO, SIMBA, or a
   teleprompter instance) optimize the instruction and demos of a one-predictor program whose prompt is
   rendered by our renderer (:mod:`.bridge`). Stages run in order, each from the previous one's result.
5. **Candidate** scored on the same validation items with the same renderer; it is adopted only if it
   beats the baseline (``result.accepted``) and the original prompts as they were (scored too when the
   baseline's demos make it differ from them: demos can hurt a small model), else the Prompter keeps its
   original prompts.

``max_lm_calls`` / ``max_tokens`` are hard budgets over every request of the run (cache hits included,
so a rerun from the cache stops at the same point). The optimization phase leaves a reserve to score the
final candidate; when a budget runs out the run stops cleanly with the best candidate seen so far
(``result.budget_exhausted``).
"""


from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._cost import cost_usd
from .._example import Example
from .._render import PromptState
from .._schema import iter_field_paths
from ..errors import ConfigurationError
from ._quiet import quiet
from .decision import Paired, Verdict, decide, paired
from .gateway import Budget, BudgetExhausted
from .options import OptimizeOptions
from .progress import Progress
from .report import EvaluationReport, OptimizationResult, _check_examples
from .runner import Run
from .split import Split, plain_demos, split_examples
from .stages import ALIASES, STAGES, Plan, configure_stages, plan_stages

if TYPE_CHECKING:
    from .._prompter import Prompter

log = logging.getLogger("dspydantic")

__all__ = ["ALIASES", "OPTIMIZERS", "STAGES", "OptimizeOptions", "optimize_prompter"]

#: canonical optimizer names -> (DSPy class name or None for our GEPA stage, min training examples)
OPTIMIZERS: dict[str, tuple[str | None, int]] = {name: (s.dspy_class, s.min_train) for name, s in STAGES.items()}

#: a calibrator is fitted at the end of optimize() only on at least this many scored validation fields
_MIN_CALIBRATION_FIELDS = 30
#: below this many validation examples the result message says the decision is noisy
_FEW_VAL = 5


@dataclass
class _Scored:
    """The prompt states of one run and their validation reports (``None``: not scored)."""

    original: PromptState
    baseline_state: PromptState
    baseline: EvaluationReport | None = None
    as_it_was: EvaluationReport | None = None  # the original prompts, when the baseline differs from them
    candidate_state: PromptState | None = None
    candidate: EvaluationReport | None = None
    stages: list[str] = field(default_factory=list)


def optimize_prompter(
    prompter: Prompter, examples: Sequence[Example], options: OptimizeOptions | None = None, **kwargs: Any
) -> OptimizationResult:
    """Optimize ``prompter``'s prompts from labelled ``examples`` and adopt the result if it beats the baseline.

    The keywords are :class:`~dspydantic.optimize.options.OptimizeOptions`' fields (or pass one as
    ``options``); any other keyword goes to the chosen DSPy teleprompter's constructor or ``compile()``.
    The run is described at the top of this module.
    """
    started = time.perf_counter()
    # -- 1. checks and 2. the split (no LM call before the end of this block) ------------------------------
    if options is not None and kwargs:
        raise ConfigurationError(f"pass options= or keyword arguments, not both (got {sorted(kwargs)})")
    opts = options if options is not None else OptimizeOptions.from_kwargs(kwargs)
    items = _check_examples(examples)
    from .._example import check_labels

    check_labels(prompter.model, items)  # every label fits the model, before any LM call
    check_labels(prompter.model, opts.valset or (), what="valset example")
    # one example and no valset: nothing can be validated; the arguments are still checked (see _unvalidated)
    single = opts.valset is None and len(items) < 2
    split = Split(items, []) if single else split_examples(
        items, opts.valset, opts.train_split, opts.seed, opts.max_val_examples
    )
    plan = plan_stages(opts.optimizer, len(split.train))
    configure_stages(plan, 1 << 30 if single else len(split.train), opts)
    if single:
        return _unvalidated(prompter, items[0], plan, opts, started)
    original = prompter.state
    s = _Scored(original, plain_demos(prompter, original, split.train, plan.demo_budget))
    # the baseline has demos the original prompts lack: the original is scored too (a candidate must beat both)
    compare_original = opts.compare_original and s.baseline_state != original
    reserve = _reserve(prompter, split, opts, compare_original)
    budget = Budget(max_requests=opts.max_lm_calls, max_tokens=opts.max_tokens)
    n_val = len(split.val)
    log.info("optimize: %s (%s); %d training, %d validation examples", plan.name, plan.reason, len(split.train), n_val)

    with Progress(opts.on_progress, verbose=opts.verbose, max_calls=opts.max_lm_calls) as progress:
        needs_judge = any(ex.expected_output is None for ex in items)
        run = Run(prompter, split, plan, opts, budget=budget, progress=progress, needs_judge=needs_judge)
        progress.emit({"event": "start", "optimizer": plan.name, "reason": plan.reason, "n_train": len(split.train),
                       "n_val": n_val, "demo_budget": plan.demo_budget})
        if n_val < _FEW_VAL:
            log.info("optimize: only %d validation example(s): the accept/reject decision is noisy", n_val)
            run.notes.append(
                f"only {n_val} validation example(s) decided this (one example moves the score by "
                f"{1 / n_val:.2f}); give more examples or valset= for a firmer decision"
            )
        descriptions_before = dict(prompter.renderer.descriptions)
        # -- 3. baseline (the reserve is kept for the candidate) -----------------------------------------
        budget.set_phase(
            requests=None if opts.max_lm_calls is None else opts.max_lm_calls - reserve,
            tokens=None if opts.max_tokens is None else opts.max_tokens // 2,
        )
        try:
            s.baseline = run.score(s.baseline_state, "baseline")
            if compare_original:
                s.as_it_was = run.score(original, "original")
                # plain demos made the original prompts worse: hard_demos builds its candidate without demos
                run.demos_hurt = s.as_it_was.score > s.baseline.score
        except BudgetExhausted:
            pass
        if s.baseline is not None:
            # -- 4. stages, each from the previous one's result ------------------------------------------
            if opts.max_tokens is not None:
                budget.set_phase(
                    requests=budget.ceiling_requests,
                    tokens=max(0, opts.max_tokens - math.ceil(1.25 * budget.tokens)),
                )
            state = original
            with quiet():  # (closing waits for DSPy's leftover worker threads: they stay quiet too)
                try:
                    state = run.run_stages(state, s.stages)
                finally:
                    run.close()
            s.candidate_state = state
            # -- 5. the candidate, on the same validation items --------------------------------------------
            budget.lift()
            s.candidate = _score_candidate(run, s)
        # -- 5. the decision (.decision) -------------------------------------------------------------------
        fresh = s.candidate is not s.baseline and s.candidate is not s.as_it_was
        difference = _difference(s.baseline, s.candidate) if fresh else None
        verdict = decide(
            _score(s.baseline),
            _score(s.candidate),
            original=_score(s.as_it_was),
            fresh=fresh,
            min_improvement=opts.min_improvement,
            fallback=opts.fallback,
            added=len(s.baseline_state.demos) - len(original.demos),
            difference=difference,
            min_standard_errors=opts.min_standard_errors,
        )
        adopted = original
        if verdict.accepted and s.candidate_state is not None:
            adopted = s.candidate_state
        elif verdict.serve_baseline:
            adopted = s.baseline_state
        notes = ([difference.describe()] if difference is not None else []) + run.notes
        message = verdict.message + (". " + "; ".join(notes) if notes else "")
        result = _result(prompter, opts, plan, split, len(items), s, verdict, adopted, message, budget, started,
                         descriptions_before, difference)
        if opts.calibrate:
            _calibrate(prompter, result, adopted, [
                (s.candidate_state, s.candidate), (s.baseline_state, s.baseline), (original, s.as_it_was),
            ])
        log.info("optimize: %s", message)
        progress.emit({"event": "done", "accepted": verdict.accepted, "message": message, **budget.snapshot()})
    if adopted != original:
        prompter.state = adopted
    prompter.optimization_result = result
    return result


def _score(report: EvaluationReport | None) -> float | None:
    return report.score if report is not None else None


def _difference(baseline: EvaluationReport | None, candidate: EvaluationReport | None) -> Paired | None:
    """The candidate against the baseline, validation example by validation example."""
    if baseline is None or candidate is None:
        return None
    return paired({o.index: o.score.score for o in baseline.outcomes},
                  {o.index: o.score.score for o in candidate.outcomes})


def _reserve(prompter: Prompter, split: Split, opts: OptimizeOptions, compare_original: bool) -> int:
    """The requests kept back to score the final candidate; ``max_lm_calls`` must cover them and the
    baseline (and the original prompts, when they are scored too)."""
    n_val = len(split.val)
    unlabelled_val = sum(1 for ex in split.val if ex.expected_output is None)
    n_fields = max(1, len(iter_field_paths(prompter._base_schema)))
    per_scoring = n_val + unlabelled_val * n_fields
    reserve = per_scoring + max(1, per_scoring // 5)
    needed = per_scoring * (2 if compare_original else 1) + reserve
    if opts.max_lm_calls is not None and opts.max_lm_calls < needed:
        what = "the baseline, the original prompts and one candidate" if compare_original else (
            "the baseline and one candidate"
        )
        raise ConfigurationError(
            f"max_lm_calls={opts.max_lm_calls} cannot score {what} on the {n_val} validation example(s) (that "
            f"needs about {needed} requests); raise it or set max_val_examples"
        )
    return reserve


def _score_candidate(run: Run, s: _Scored) -> EvaluationReport | None:
    """The candidate's report: the baseline's or the original's when it is one of them, else scored now."""
    if s.candidate_state == s.baseline_state:
        return s.baseline
    if s.candidate_state == s.original and s.as_it_was is not None:
        return s.as_it_was
    assert s.candidate_state is not None
    try:
        return run.score(s.candidate_state, "candidate")
    except BudgetExhausted:
        run.notes.append("the budget ran out while scoring the candidate")
        return None


def _result(
    prompter: Prompter,
    opts: OptimizeOptions,
    plan: Plan,
    split: Split,
    n_examples: int,
    s: _Scored,
    verdict: Verdict,
    adopted: PromptState,
    message: str,
    budget: Budget,
    started: float,
    descriptions_before: Mapping[str, str],
    difference: Paired | None,
) -> OptimizationResult:
    snap = budget.snapshot()
    baseline, candidate, as_it_was = s.baseline, s.candidate, s.as_it_was
    return OptimizationResult(
        baseline_score=baseline.score if baseline is not None else float("nan"),
        optimized_score=verdict.served_score,
        accepted=verdict.accepted,
        message=message,
        optimizer=plan.name,
        optimizer_reason=plan.reason,
        state=adopted,
        baseline_state=s.baseline_state,
        candidate_state=s.candidate_state,
        candidate_score=candidate.score if candidate is not None else None,
        baseline_per_field=dict(baseline.per_field) if baseline is not None else {},
        candidate_per_field=dict(candidate.per_field) if candidate is not None else {},
        original_score=as_it_was.score if as_it_was is not None else None,
        original_per_field=dict(as_it_was.per_field) if as_it_was is not None else {},
        n_train=len(split.train),
        n_val=len(split.val),
        n_examples=n_examples,
        lm_calls=snap["lm_calls"],
        requests=snap["requests"],
        cache_hits=snap["cache_hits"],
        prompt_tokens=snap["prompt_tokens"],
        completion_tokens=snap["completion_tokens"],
        estimated_cost_usd=cost_usd(prompter.model_id, snap["prompt_tokens"], snap["completion_tokens"]),
        wall_time_s=time.perf_counter() - started,
        budget_exhausted=budget.exhausted,
        seed=opts.seed,
        stages=s.stages,
        demo_budget=plan.demo_budget,
        field_descriptions_before=dict(descriptions_before),
        baseline_report=baseline,
        candidate_report=candidate,
        original_report=as_it_was,
        difference=difference,
    )


def _unvalidated(
    prompter: Prompter, example: Example, plan: Plan, opts: OptimizeOptions, started: float
) -> OptimizationResult:
    """``optimize([one_example])`` without a valset: there is nothing to validate a candidate on, so no
    optimizer runs and no score is made up (NaN, ``validated=False``). A labelled example becomes a plain
    few-shot demo -- the one thing it can give without a held-out comparison -- and the message says so."""
    original = prompter.state
    state = plain_demos(prompter, original, [example], len(original.demos) + 1)
    if state != original:
        what = "the example was added as a few-shot demo (unvalidated); the prompts are unchanged"
    else:
        what = "the example has no label (or is already a demo), so nothing changed"
    message = (
        f"no held-out validation was possible: optimize() got 1 example and no valset, so nothing was scored "
        f"and no optimizer ran; {what}. Give at least 2 examples (or valset=...) to optimize and validate"
    )
    nan = float("nan")
    with Progress(opts.on_progress, verbose=opts.verbose) as progress:
        progress.emit({"event": "start", "optimizer": plan.name, "reason": "1 example, no valset: nothing to "
                       "validate on", "n_train": 1, "n_val": 0, "demo_budget": len(state.demos)})
        result = OptimizationResult(
            baseline_score=nan, optimized_score=nan, accepted=False, message=message, optimizer=plan.name,
            optimizer_reason="1 example and no valset: used as a demo, no optimizer run", state=state,
            baseline_state=original, candidate_state=state, candidate_score=None, baseline_per_field={},
            candidate_per_field={}, n_train=1, n_val=0, n_examples=1, lm_calls=0, requests=0, cache_hits=0,
            prompt_tokens=0, completion_tokens=0, estimated_cost_usd=None,
            wall_time_s=time.perf_counter() - started, seed=opts.seed, demo_budget=len(state.demos),
            field_descriptions_before=dict(prompter.renderer.descriptions), validated=False,
        )
        log.info("optimize: %s", message)
        progress.emit({"event": "done", "accepted": False, "message": message, "lm_calls": 0, "requests": 0})
    prompter.state = state
    prompter.optimization_result = result
    return result


def _calibrate(
    prompter: Prompter,
    result: OptimizationResult,
    adopted: PromptState,
    scored: Sequence[tuple[PromptState | None, EvaluationReport | None]],
) -> None:
    """Fit the field-confidence calibrator on the validation outcomes of the prompts the Prompter now
    serves (held out from everything the demos and prompts were made from); no extra LM call."""
    from ..confidence.fit import calibration_pairs, fit_from_outcomes

    report = next((r for st, r in scored if st == adopted and r is not None), None)
    if report is None:
        result.calibration_note = "no calibrator: the served prompts were not scored on the validation split"
        return
    n = len(calibration_pairs(report.outcomes).labels)
    if n < _MIN_CALIBRATION_FIELDS:
        result.calibration_note = (
            f"no calibrator: {n} scored validation field(s), fewer than {_MIN_CALIBRATION_FIELDS}; call "
            "prompter.calibrate(held-out examples) with more"
        )
        return
    try:
        result.calibration = fit_from_outcomes(report.outcomes)
    except ConfigurationError as exc:
        result.calibration_note = f"no calibrator: {exc}"
        return
    prompter.calibrator = result.calibration.calibrator
    result.calibration_note = result.calibration.summary() + " (validation split)"
