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

import importlib.util
import inspect
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._example import Example
from .._render import Demo, PromptState, template_placeholders
from ..errors import ConfigurationError
from ._quiet import MARK as QUIET_MARK
from ._quiet import quiet
from .bridge import (
    Budget,
    BudgetExhausted,
    CandidateLedger,
    CandidateRejected,
    DocRegistry,
    Gateway,
    budgeted_prompter,
    external_target,
    normalized_output,
)
from .progress import Progress
from .report import (
    EvaluationReport,
    ExampleScorer,
    OptimizationResult,
    _check_examples,
    build_report,
    score_examples,
)

if TYPE_CHECKING:
    from .._prompter import Prompter

log = logging.getLogger("dspydantic")

__all__ = ["OPTIMIZERS", "optimize_prompter"]

#: canonical optimizer names -> (DSPy class name or None for our GEPA stage, min training examples)
OPTIMIZERS: dict[str, tuple[str | None, int]] = {
    "gepa": (None, 1),
    "bootstrap": ("BootstrapFewShot", 1),
    "random_search": ("BootstrapFewShotWithRandomSearch", 2),
    "miprov2": ("MIPROv2", 4),
    "copro": ("COPRO", 1),
    "simba": ("SIMBA", 2),
}
_ALIASES = {
    "gepa": "gepa",
    "bootstrap": "bootstrap",
    "bootstrapfewshot": "bootstrap",
    "bootstrap_few_shot": "bootstrap",
    "random_search": "random_search",
    "randomsearch": "random_search",
    "bootstrapfewshotwithrandomsearch": "random_search",
    "bootstrap_random_search": "random_search",
    "mipro": "miprov2",
    "miprov2": "miprov2",
    "mipro_v2": "miprov2",
    "copro": "copro",
    "simba": "simba",
}
_REQUIRES = {"miprov2": ("optuna", "MIPROv2"), "simba": ("numpy", "SIMBA")}

#: keyword arguments this module interprets itself (the rest go to the DSPy teleprompters)
_OWN_KWARGS = frozenset(
    {
        "reflection_lm",
        "prompt_model",
        "max_metric_calls",
        "max_full_evals",
        "auto",
        "max_bootstrapped_demos",
        "max_labeled_demos",
        "max_demos",
        "metric_threshold",
        "min_improvement",
        "reflection_minibatch_size",
        "reflection_temperature",
        "optimize_prompts",
        "optimize_descriptions",
        "gepa_val_size",
        "fallback",
        "compare_original",
        "calibrate",
    }
)
#: a calibrator is fitted at the end of optimize() only on at least this many scored validation fields
_MIN_CALIBRATION_FIELDS = 30
_GEPA_PRESETS = {"light": 6, "medium": 12, "heavy": 24}
_DEFAULT_DEMOS = 4
#: below this many validation examples the result message says the decision is noisy
_FEW_VAL = 5


# --------------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------------


@dataclass
class _Stage:
    name: str
    teleprompter: Any = None
    demo_budget: int = 0
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    compile_kwargs: dict[str, Any] = field(default_factory=dict)
    live: Any = None  # the running teleprompter / GEPA adapters (for the best-so-far on a spent budget)


@dataclass
class _Plan:
    name: str
    reason: str
    stages: list[_Stage]

    @property
    def demo_budget(self) -> int:
        return max((s.demo_budget for s in self.stages), default=0)


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "_").replace(" ", "")
    if key in _ALIASES:
        return _ALIASES[key]
    raise ConfigurationError(
        f"unknown optimizer {name!r}; choose 'auto', one of {sorted(OPTIMIZERS)}, a list of them "
        "(run in order, e.g. ['gepa', 'bootstrap']), or a DSPy teleprompter instance"
    )


def _has_module(name: str) -> bool:
    """Whether ``name`` can be imported (a ``None`` entry in ``sys.modules`` blocks an import)."""
    import sys

    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _auto(n_train: int) -> tuple[str, str]:
    have_optuna = _has_module("optuna")
    if n_train < 4:
        return "gepa", f"{n_train} training example(s): too few for demos; GEPA rewrites descriptions and prompts"
    if n_train < 50:
        return "bootstrap", f"{n_train} training examples (< 50): BootstrapFewShot demos"
    if n_train < 200 or not have_optuna:
        why = "(< 200)" if n_train < 200 else "(optuna is not installed for MIPROv2)"
        return "random_search", f"{n_train} training examples {why}: BootstrapFewShotWithRandomSearch"
    return "miprov2", f"{n_train} training examples (>= 200): MIPROv2 instructions + demos"


def _plan(optimizer: Any, n_train: int) -> _Plan:
    if optimizer is None or (isinstance(optimizer, str) and optimizer.strip().lower() == "auto"):
        name, reason = _auto(n_train)
        return _Plan(name=name, reason="auto: " + reason, stages=[_Stage(name)])
    if isinstance(optimizer, str) and "+" in optimizer:
        optimizer = [p for p in optimizer.split("+") if p.strip()]
    if isinstance(optimizer, str):
        name = _canonical(optimizer)
        return _Plan(name=name, reason=f"chosen: {name}", stages=[_Stage(name)])
    if isinstance(optimizer, (list, tuple)):
        if not optimizer:
            raise ConfigurationError("optimizer list is empty")
        stages = []
        for item in optimizer:
            if isinstance(item, str):
                stages.append(_Stage(_canonical(item)))
            elif callable(getattr(item, "compile", None)):
                stages.append(_Stage("custom", teleprompter=item))
            else:
                raise ConfigurationError(f"optimizer list items must be names or teleprompters, got {item!r}")
        name = "+".join(s.name if s.name != "custom" else type(s.teleprompter).__name__ for s in stages)
        return _Plan(name=name, reason=f"chosen: {name}", stages=stages)
    if callable(getattr(optimizer, "compile", None)):
        cls = type(optimizer).__name__
        return _Plan(name=cls, reason=f"a {cls} instance", stages=[_Stage("custom", teleprompter=optimizer)])
    raise ConfigurationError(
        f"optimizer must be 'auto', a name, a list of names or a DSPy teleprompter instance, got {optimizer!r}"
    )


def _dspy_class(name: str) -> Any:
    import dspy.teleprompt as tp

    cls_name = OPTIMIZERS[name][0]
    return getattr(tp, str(cls_name))


def _params(fn: Any) -> set[str]:
    try:
        return {p.name for p in inspect.signature(fn).parameters.values() if p.kind != p.VAR_KEYWORD}
    except (TypeError, ValueError):
        return set()


def _configure_stages(plan: _Plan, n_train: int, kwargs: dict[str, Any]) -> None:
    """Check dependencies and distribute the optimizer keyword arguments (no LM call)."""
    own = {k: kwargs[k] for k in kwargs if k in _OWN_KWARGS}
    rest = {k: v for k, v in kwargs.items() if k not in _OWN_KWARGS}
    used: set[str] = set()
    demos_b = own.get("max_bootstrapped_demos", _DEFAULT_DEMOS)
    demos_l = own.get("max_labeled_demos", _DEFAULT_DEMOS)
    for key, val in (("max_bootstrapped_demos", demos_b), ("max_labeled_demos", demos_l)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 0:
            raise ConfigurationError(f"{key} must be a non-negative int, got {val!r}")
    for stage in plan.stages:
        if stage.name == "custom":
            tp = stage.teleprompter
            stage.demo_budget = max(
                int(getattr(tp, attr, 0) or 0) for attr in ("max_bootstrapped_demos", "max_labeled_demos", "max_demos")
            )
            continue
        needed = OPTIMIZERS[stage.name][1]
        if n_train < needed:
            raise ConfigurationError(
                f"optimizer {stage.name!r} needs at least {needed} training example(s); the training split has "
                f"{n_train}. Give more examples, a larger train_split, or optimizer='gepa'"
            )
        if stage.name in _REQUIRES:
            module, what = _REQUIRES[stage.name]
            if not _has_module(module):
                raise ConfigurationError(
                    f"{what} needs the '{module}' package: pip install 'dspydantic[optimizers]' (or {module})"
                )
        if stage.name == "gepa":
            stage.demo_budget = 0
            continue
        cls = _dspy_class(stage.name)
        init_p, compile_p = _params(cls.__init__), _params(cls.compile)
        init: dict[str, Any] = {}
        comp: dict[str, Any] = {}
        if stage.name in ("bootstrap", "random_search", "miprov2"):
            init.update(max_bootstrapped_demos=demos_b, max_labeled_demos=demos_l)
            stage.demo_budget = max(demos_b, demos_l)
        if stage.name == "simba":
            init["max_demos"] = own.get("max_demos", _DEFAULT_DEMOS)
            stage.demo_budget = int(init["max_demos"])
        if "metric_threshold" in own and "metric_threshold" in init_p:
            init["metric_threshold"] = own["metric_threshold"]
        if stage.name == "miprov2" and "auto" in own:
            init["auto"] = own["auto"]
        for k, v in rest.items():
            if k in init_p:
                init[k] = v
                used.add(k)
            elif k in compile_p:
                comp[k] = v
                used.add(k)
        stage.init_kwargs, stage.compile_kwargs = init, comp
    unknown = set(rest) - used
    if unknown:
        raise ConfigurationError(
            f"unknown optimizer argument(s) {sorted(unknown)} for {plan.name!r}; "
            f"dspydantic itself takes {sorted(_OWN_KWARGS)}"
        )


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------


@dataclass
class _Split:
    train: list[Example]
    val: list[Example]


def _input_key(ex: Example) -> str:
    import json

    return json.dumps(ex.input_kwargs(), sort_keys=True, default=str)


def _split(
    items: list[Example], valset: Sequence[Example] | None, train_split: float, seed: int, max_val: int | None
) -> _Split:
    rng = random.Random(seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    shuffled = [items[i] for i in order]
    if valset is not None:
        val = list(valset)
        val_keys = {_input_key(v) for v in val}
        train = [ex for ex in shuffled if _input_key(ex) not in val_keys]
        if len(train) < len(shuffled):
            log.warning(
                "dropped %d training example(s) whose input is also in valset", len(shuffled) - len(train)
            )
    else:
        if len(items) < 2:
            raise ConfigurationError(
                "optimize needs at least 2 examples (one to train on, one to validate on), or valset=..."
            )
        n_val = min(len(items) - 1, max(1, round(len(items) * (1.0 - train_split))))
        train, val = shuffled[: len(items) - n_val], shuffled[len(items) - n_val:]
    if max_val is not None:
        val = val[:max_val]
    if not train:
        raise ConfigurationError("the training split is empty")
    if not val:
        raise ConfigurationError("the validation split is empty")
    return _Split(train=train, val=val)


def _plain_demos(prompter: Prompter, state: PromptState, train: Sequence[Example], k: int) -> PromptState:
    """The baseline's demos: the current ones, topped up to ``k`` with the first labelled training
    examples as plain (input, label) demos."""
    demos = list(state.demos)
    if len(demos) >= k:
        return state
    have = {repr(d.input) for d in demos}
    for ex in train:
        if len(demos) >= k:
            break
        expected = ex.expected_dict()
        if expected is None:
            continue
        content = prompter._input(ex).as_content()
        if repr(content) in have:
            continue
        have.add(repr(content))
        demos.append(Demo(input=content, output=normalized_output(prompter, expected)))
    return state.replace(demos=demos)


class _Run:
    def __init__(
        self,
        prompter: Prompter,
        split: _Split,
        plan: _Plan,
        *,
        scorer: ExampleScorer,
        gateway: Gateway,
        score_scorer: ExampleScorer,
        score_gateway: Gateway,
        budget: Budget,
        progress: Progress,
        seed: int,
        sequential: bool,
        parallel_fields: bool,
        num_threads: int,
        include_fields: Sequence[str] | None,
        exclude_fields: Sequence[str] | None,
        own: dict[str, Any],
    ) -> None:
        self.prompter = prompter
        self.split = split
        self.plan = plan
        self.scorer = scorer  # optimization phase (its judge calls go through ``gateway``)
        self.gateway = gateway
        self.score_scorer = score_scorer  # baseline / candidate scoring
        self.score_gateway = score_gateway
        self.budget = budget
        self.progress = progress
        self.seed = seed
        self.sequential = sequential
        self.parallel_fields = parallel_fields
        self.num_threads = num_threads
        self.include_fields = include_fields
        self.exclude_fields = exclude_fields
        self.own = own
        self.notes: list[str] = []
        self._proposers: dict[int, Gateway] = {}
        self.ledger = CandidateLedger()

    # -- scoring on the validation split ---------------------------------------------------------------
    def score(self, state: PromptState, what: str) -> EvaluationReport:
        self.progress.emit({"event": "stage", "stage": f"scoring {what}"})
        clone = budgeted_prompter(self.prompter, state, self.score_gateway)
        outcomes = score_examples(clone, self.split.val, self.score_scorer, num_threads=self.num_threads)
        report = build_report(outcomes)
        self.progress.emit({"event": "score", "what": what, "score": report.score, "per_field": report.per_field})
        return report

    # -- stages ----------------------------------------------------------------------------------------
    def run_stages(self, state: PromptState, done: list[str]) -> PromptState:
        """Every stage in order, each from the previous one's result; a spent budget ends the run with the
        interrupted stage's best so far. ``done`` collects the names of the stages that finished."""
        for stage in self.plan.stages:
            try:
                state = self.run_stage(stage, state)
                done.append(stage.name)
            except BudgetExhausted:
                best, what = self.best_so_far(stage, state)
                self.notes.append(f"the budget ran out during {stage.name}; kept {what}")
                return best
        return state

    def run_stage(self, stage: _Stage, state: PromptState) -> PromptState:
        self.progress.emit({"event": "stage", "stage": stage.name if stage.name != "custom" else self.plan.name})
        if stage.name == "gepa":
            return self._gepa(stage, state)
        return self._dspy(stage, state)

    def best_so_far(self, stage: _Stage, state: PromptState) -> tuple[PromptState, str]:
        """After a spent budget: the best the interrupted stage had fully scored (or its input), and what
        that is in words."""
        from .fields import best_so_far

        seen = "the best candidate seen so far"
        if stage.name == "gepa":
            best = None
            for adapter in stage.live or []:
                candidate = best_so_far(adapter)
                if candidate is not None and adapter.best.score >= 0:
                    best = candidate
            return (best, seen) if best is not None else (state, "the prompts it started from")
        ctx = getattr(self, "_ctx", None)
        if ctx is None:
            return state, "the prompts it started from"
        evaluated = self.ledger.best()  # the best program the optimizer evaluated (MIPROv2, COPRO, SIMBA, ...)
        if evaluated is not None:
            instructions, program_demos, score, n = evaluated
            try:
                return ctx.state_for(instructions, program_demos), (
                    f"the best program it had evaluated ({score:.3f} on {n} training example(s))"
                )
            except CandidateRejected:
                pass
        traces = getattr(stage.live, "name2traces", None)  # BootstrapFewShot: the demos bootstrapped so far
        if isinstance(traces, Mapping) and traces.get("extract"):
            bootstrapped = ctx.demos_from_dspy(list(traces["extract"]))[: max(1, stage.demo_budget)]
            if bootstrapped:
                return state.replace(demos=bootstrapped), f"the {len(bootstrapped)} demo(s) bootstrapped so far"
        return state, "the prompts it started from"

    def proposer(self, key: str = "reflection_lm") -> Gateway:
        """The door for proposal prompts: the user's ``reflection_lm`` / ``prompt_model`` when given (counted
        against the same budget), else the optimization gateway (the Prompter's own LM)."""
        lm = self._proposal_lm(key)
        if lm is None:
            return self.gateway
        door = self._proposers.get(id(lm))
        if door is None:
            door = Gateway(self.prompter, self.budget, on_call=self.gateway.on_call, target=external_target(lm))
            self._proposers[id(lm)] = door
        return door

    def _proposal_lm(self, key: str) -> Any:
        """The user's LM for proposals of this kind (``reflection_lm`` and ``prompt_model`` stand in for
        each other), or ``None`` for the Prompter's own."""
        return self.own.get(key) or self.own.get("reflection_lm") or self.own.get("prompt_model")

    def close(self) -> None:
        """Close every door of the optimization phase (see :meth:`Gateway.close`)."""
        self.gateway.close()
        for door in self._proposers.values():
            door.close()

    def _reflect(self) -> Callable[[list[dict[str, Any]], dict[str, Any] | None, int | None], str]:
        door = self.proposer("reflection_lm")
        temperature = self.own.get("reflection_temperature", 1.0)
        floor = self.prompter.max_tokens

        def reflect(
            messages: list[dict[str, Any]], json_schema: dict[str, Any] | None = None, max_tokens: int | None = None
        ) -> str:
            if max_tokens is not None and floor is not None:
                max_tokens = max(max_tokens, floor)
            return door.complete_text(messages, temperature=temperature, json_schema=json_schema, max_tokens=max_tokens)

        return reflect

    def reflect_window(self) -> int | None:
        """The context window (tokens) of the LM that answers reflection prompts, when it is known."""
        lm = self._proposal_lm("reflection_lm")
        backend = self.prompter.backend if lm is None else lm
        window = getattr(backend, "context_window", None)
        return window if isinstance(window, int) and window > 0 else None

    def _gepa(self, stage: _Stage, state: PromptState) -> PromptState:
        from .fields import INSTRUCTION, PROMPTS, SYSTEM, field_components, field_groups, run_texts

        train = self.split.train
        n = len(train)
        if "max_metric_calls" in self.own:
            total = int(self.own["max_metric_calls"])
        elif "max_full_evals" in self.own:
            total = int(self.own["max_full_evals"]) * n
        else:
            total = _GEPA_PRESETS[str(self.own.get("auto", "light"))] * max(n, 8)
        paths = field_components(self.prompter._base_schema, self.include_fields, self.exclude_fields)
        if self.prompter.free_text or not self.own.get("optimize_descriptions", True):
            paths = []
        which = self.own.get("optimize_prompts", True)
        prompts: tuple[str, ...] = (
            PROMPTS if which is True else () if not which else tuple(p for p in PROMPTS if p in which)
        )
        groups: list[tuple[list[str], tuple[str, ...]]]
        if self.sequential:
            groups = [(g, ()) for g in field_groups(paths, self.parallel_fields)]
            if prompts:
                groups.append(([], prompts))
        else:
            groups = [(list(paths), prompts)]
        groups = [g for g in groups if g[0] or g[1]]
        stage.live = []
        reflect = self._reflect()
        rejected = 0
        for i, (group_paths, group_prompts) in enumerate(groups):
            share = max(2 * n, total // len(groups))
            result = run_texts(
                prompter=self.prompter,
                state=state,
                trainset=train,
                gateway=self.gateway,
                scorer=self.scorer,
                paths=group_paths,
                prompts=group_prompts,
                reflect=reflect,
                max_metric_calls=share,
                seed=self.seed + i,
                parallel_fields=self.parallel_fields,
                num_threads=self.num_threads,
                minibatch_size=int(self.own.get("reflection_minibatch_size", 3)),
                pareto_size=int(self.own.get("gepa_val_size", 32)),
                on_event=self.progress.emit,
                adapter_box=stage.live,
                reflect_window=self.reflect_window(),
            )
            rejected += result.rejected
            state = result.state
        if rejected:
            self.notes.append(f"{rejected} proposed prompt(s) were rejected for changing template placeholders")
        # placeholders of the adopted prompts are those of the originals (proposals were checked)
        before = self.prompter.state
        for name, original in ((SYSTEM, before.system_prompt), (INSTRUCTION, before.instruction_prompt)):
            new = state.system_prompt if name == SYSTEM else state.instruction_prompt
            if new is not None and template_placeholders(new) != template_placeholders(original or ""):
                state = state.replace(**{name: original})
        return state

    def _metric(self, feedback: bool) -> Callable[..., Any]:
        import dspy

        train = self.split.train
        threshold = self.own.get("metric_threshold")
        threshold = 1.0 if threshold is None else float(threshold)
        scorer = self.scorer

        ledger = self.ledger

        def metric(example: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
            idx = example.get("example_index") if hasattr(example, "get") else None
            if not isinstance(idx, int) or not 0 <= idx < len(train):
                return 0.0
            predicted = pred.get("extraction") if hasattr(pred, "get") else getattr(pred, "extraction", None)
            s = scorer.score(train[idx], predicted if isinstance(predicted, Mapping) else None)
            if trace is None:
                ledger.record(pred, idx, s.score)
            if feedback:
                return dspy.Prediction(score=s.score, feedback="\n".join(s.feedback) or "All fields correct.")
            if trace is not None:
                return s.score >= threshold
            return s.score

        return metric

    def _dspy(self, stage: _Stage, state: PromptState) -> PromptState:
        import dspy

        from .bridge import StudentContext, build_program, demos_to_dspy, make_lm, program_state, to_dspy_examples

        prompter = self.prompter
        registry = DocRegistry(prompter)
        trainset = to_dspy_examples(registry, prompter, self.split.train)
        ctx = StudentContext(prompter, state.replace(demos=()), registry)
        self._ctx = ctx
        program = build_program(ctx)
        program.extract.demos = demos_to_dspy(registry, state.demos)
        lm = make_lm(self.gateway)
        is_gepa = stage.name == "custom" and type(stage.teleprompter).__name__ == "GEPA"
        metric = self._metric(feedback=is_gepa)
        n = len(trainset)
        with dspy.context(lm=lm, **{QUIET_MARK: True}):
            if stage.name == "custom":
                tp = stage.teleprompter
                for attr in ("metric", "metric_fn"):
                    if hasattr(tp, attr):
                        setattr(tp, attr, metric)
                for attr in ("task_model", "prompt_model"):
                    if hasattr(tp, attr) and getattr(tp, attr) is None:
                        setattr(tp, attr, lm)
                stage.live = tp
                params = _params(tp.compile)
                kw: dict[str, Any] = {"trainset": trainset}
                if "valset" in params and n >= 4:
                    cut = n - max(1, n // 2)
                    kw = {"trainset": trainset[:cut], "valset": trainset[cut:]}
                if "eval_kwargs" in params:
                    kw["eval_kwargs"] = {"num_threads": self.num_threads, "display_progress": False}
                if "seed" in params:
                    kw["seed"] = self.seed
                compiled = tp.compile(program, **kw)
            else:
                compiled = self._compile_named(stage, program, trainset, metric, lm)
        try:
            return program_state(ctx, compiled)
        except CandidateRejected as exc:
            self.notes.append(f"{exc}; kept the original instruction")
            predictor = compiled.extract
            return ctx.state_for(ctx.original_instruction, list(predictor.demos or []))

    def _compile_named(self, stage: _Stage, program: Any, trainset: list[Any], metric: Any, lm: Any) -> Any:
        from .bridge import make_lm

        cls = _dspy_class(stage.name)
        init = dict(stage.init_kwargs)
        comp = dict(stage.compile_kwargs)
        n = len(trainset)
        door = self.proposer("prompt_model")
        prompt_model = lm if door is self.gateway else make_lm(door)
        if stage.name == "bootstrap":
            init.setdefault("max_rounds", 1)
            tp = cls(metric=metric, **init)
            stage.live = tp
            return tp.compile(program, trainset=trainset, **comp)
        if stage.name == "random_search":
            init.setdefault("num_candidate_programs", 4)
            init.setdefault("num_threads", self.num_threads)
            tp = cls(metric=metric, **init)
            stage.live = tp
            cut = n - max(1, n // 2)
            return tp.compile(program, trainset=trainset[:cut], valset=trainset[cut:], **comp)
        if stage.name == "miprov2":
            init.setdefault("auto", "light")
            init.setdefault("num_threads", self.num_threads)
            init.setdefault("seed", self.seed)
            init.setdefault("verbose", False)
            tp = cls(metric=metric, prompt_model=prompt_model, task_model=lm, **init)
            stage.live = tp
            cut = n - max(2, n // 2)
            dev = trainset[cut:]
            comp.setdefault("minibatch_size", min(35, len(dev)))
            comp.setdefault("minibatch", len(dev) > comp["minibatch_size"])
            return tp.compile(program, trainset=trainset[:cut], valset=dev, **comp)
        if stage.name == "copro":
            init.setdefault("breadth", 4)
            init.setdefault("depth", 2)
            init.setdefault("init_temperature", 1.0)
            tp = cls(metric=metric, prompt_model=prompt_model, **init)
            stage.live = tp
            comp.setdefault("eval_kwargs", {"num_threads": self.num_threads, "display_progress": False})
            return tp.compile(program, trainset=trainset, **comp)
        if stage.name == "simba":
            init.setdefault("bsize", min(8, n))
            init.setdefault("num_candidates", 4)
            init.setdefault("max_steps", 4)
            init.setdefault("num_threads", self.num_threads)
            tp = cls(metric=metric, prompt_model=prompt_model, **init)
            stage.live = tp
            comp.setdefault("seed", self.seed)
            return tp.compile(program, trainset=trainset, **comp)
        raise AssertionError(stage.name)  # pragma: no cover


# --------------------------------------------------------------------------------------------------
# the decision
# --------------------------------------------------------------------------------------------------


@dataclass
class _Verdict:
    accepted: bool
    serve_baseline: bool
    message: str
    served_score: float  # validation score of what the Prompter serves (the baseline's when unknown)


def _decide(
    baseline: EvaluationReport | None,
    original: EvaluationReport | None,
    candidate: EvaluationReport | None,
    min_improvement: float,
    fallback: str,
    added: int,
) -> _Verdict:
    """Adopt the candidate only if it beats the fair baseline and the original prompts as they were (when
    those were scored: the baseline has demos they lack); else keep the original prompts, or with
    ``fallback="baseline"`` serve the baseline if it scored above the original."""
    if baseline is None:
        return _Verdict(False, False, "the budget ran out while scoring the baseline; nothing changed", float("nan"))
    beats_baseline = candidate is not None and candidate.score > baseline.score + min_improvement
    beats_original = candidate is not None and (original is None or candidate.score > original.score + min_improvement)
    fresh = candidate is not None and candidate is not baseline and candidate is not original
    if fresh and beats_baseline and beats_original and candidate is not None:
        message = f"accepted: validation score {baseline.score:.3f} -> {candidate.score:.3f}"
        if original is not None:
            message += f" (the original prompts as they were: {original.score:.3f})"
        if added > 0:
            message += f" (the baseline had {added} plain training demo(s), the candidate's demo budget)"
        return _Verdict(True, False, message, candidate.score)
    baseline_better = original is None or baseline.score > original.score
    serve_baseline = added > 0 and fallback == "baseline" and baseline_better
    if serve_baseline:
        kept = f"serving the baseline as scored: the original prompts with {added} plain training demo(s)"
    elif added > 0 and fallback == "baseline" and original is not None:
        kept = f"kept the original prompts: they scored {original.score:.3f}, not below the baseline"
    else:
        kept = "kept the original prompts"
    if candidate is None:
        message = f"the candidate could not be scored within the budget; {kept}"
    elif not fresh:
        message = f"the optimizer proposed nothing new; {kept}"
    elif beats_baseline and original is not None:
        message = (
            f"not accepted: the candidate scored {candidate.score:.3f}, above the baseline {baseline.score:.3f} "
            f"but not above the original prompts as they were ({original.score:.3f}); {kept}"
        )
    else:
        message = (
            f"not accepted: the candidate scored {candidate.score:.3f}, not above the baseline "
            f"{baseline.score:.3f}; {kept}"
        )
    if added > 0 and not serve_baseline:
        message += f" (the baseline had {added} plain training demo(s), the candidate's demo budget"
        if baseline_better:
            message += "; to serve it as scored: prompter.state = result.baseline_state, or fallback='baseline'"
        message += ")"
    served = original.score if original is not None and not serve_baseline else baseline.score
    return _Verdict(False, serve_baseline, message, served)


def _unvalidated(
    prompter: Prompter,
    example: Example,
    plan: _Plan,
    *,
    on_progress: Callable[[dict[str, Any]], None] | None,
    verbose: bool,
    seed: int,
    started: float,
) -> OptimizationResult:
    """``optimize([one_example])`` without a valset: there is nothing to validate a candidate on, so no
    optimizer runs and no score is made up (NaN, ``validated=False``). A labelled example becomes a plain
    few-shot demo -- the one thing it can give without a held-out comparison -- and the message says so."""
    original = prompter.state
    state = _plain_demos(prompter, original, [example], len(original.demos) + 1)
    if state != original:
        what = "the example was added as a few-shot demo (unvalidated); the prompts are unchanged"
    else:
        what = "the example has no label (or is already a demo), so nothing changed"
    message = (
        f"no held-out validation was possible: optimize() got 1 example and no valset, so nothing was scored "
        f"and no optimizer ran; {what}. Give at least 2 examples (or valset=...) to optimize and validate"
    )
    nan = float("nan")
    with Progress(on_progress, verbose=verbose) as progress:
        progress.emit({"event": "start", "optimizer": plan.name, "reason": "1 example, no valset: nothing to "
                       "validate on", "n_train": 1, "n_val": 0, "demo_budget": len(state.demos)})
        result = OptimizationResult(
            baseline_score=nan, optimized_score=nan, accepted=False, message=message, optimizer=plan.name,
            optimizer_reason="1 example and no valset: used as a demo, no optimizer run", state=state,
            baseline_state=original, candidate_state=state, candidate_score=None, baseline_per_field={},
            candidate_per_field={}, n_train=1, n_val=0, n_examples=1, lm_calls=0, requests=0, cache_hits=0,
            prompt_tokens=0, completion_tokens=0, estimated_cost_usd=None,
            wall_time_s=time.perf_counter() - started, seed=seed, demo_budget=len(state.demos),
            field_descriptions_before=dict(prompter.renderer.descriptions), validated=False,
        )
        log.info("optimize: %s", message)
        progress.emit({"event": "done", "accepted": False, "message": message, "lm_calls": 0, "requests": 0})
    prompter.state = state
    prompter.optimization_result = result
    return result


# --------------------------------------------------------------------------------------------------
# cost
# --------------------------------------------------------------------------------------------------


def estimate_cost(model_id: str | None, prompt_tokens: int, completion_tokens: int) -> float | None:
    """USD for the given tokens from LiteLLM's bundled price table (no network); 0 for the local model,
    ``None`` when the model's price is unknown (one price lookup for the library: :mod:`dspydantic._cost`)."""
    from .._cost import cost_usd

    return cost_usd(model_id, prompt_tokens, completion_tokens)


# --------------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------------


def optimize_prompter(
    prompter: Prompter,
    examples: Sequence[Example],
    *,
    evaluator: Any = None,
    evaluate_fn: Any = None,
    optimizer: Any = "auto",
    train_split: float = 0.8,
    valset: Sequence[Example] | None = None,
    seed: int = 0,
    sequential: bool = False,
    parallel_fields: bool = True,
    include_fields: Sequence[str] | None = None,
    exclude_fields: Sequence[str] | None = None,
    max_val_examples: int | None = None,
    num_threads: int = 4,
    max_lm_calls: int | None = None,
    max_tokens: int | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    verbose: bool = False,
    **optimizer_kwargs: Any,
) -> OptimizationResult:
    """Optimize ``prompter``'s prompts from examples and adopt the result if it beats the baseline.

    Args:
        examples: labelled :class:`Example` s (``expected_output=None`` ones are scored by an LLM judge).
        evaluator: how a field is scored (``"exact"`` by default; any evaluator spec, see
            :mod:`dspydantic.optimize.evaluators`); ``evaluate_fn`` is an alias.
        optimizer: ``"auto"`` (picked from the training-split size; the choice and why are in
            ``result.optimizer`` / ``result.optimizer_reason``), ``"gepa"`` (field descriptions and system /
            instruction prompts), ``"bootstrap"``, ``"random_search"``, ``"miprov2"`` (needs optuna),
            ``"copro"``, ``"simba"`` (needs numpy), a list of those run in order (``"gepa+bootstrap"``
            works too), or a DSPy teleprompter instance (our metric replaces its metric).
        train_split: fraction of ``examples`` for training; the rest is the validation split.
        valset: an explicit validation set (then every example is for training).
        seed: shuffles the split and seeds the optimizers; same seed + same cached answers -> same result.
        sequential: GEPA optimizes field descriptions group by group (deepest fields first), then prompts,
            instead of all texts together.
        parallel_fields: a GEPA step rewrites every field that was wrong at once (one LM call), instead of
            one field per step.
        include_fields / exclude_fields: field paths that are scored (and optimized).
        max_val_examples: cap on the validation split (it is scored twice: baseline and candidate).
        num_threads: concurrent extractions when scoring.
        max_lm_calls / max_tokens: hard budgets for the whole run.
        on_progress: called with an event dict at every step (see :mod:`.progress`).
        verbose: log the steps and show a progress bar even when not on a terminal.
        optimizer_kwargs: ``max_bootstrapped_demos`` / ``max_labeled_demos`` (default 4 each),
            ``metric_threshold`` (score a bootstrapped demo needs; 1.0), ``reflection_lm`` /
            ``prompt_model`` (an LM for proposals instead of the Prompter's), ``max_metric_calls`` /
            ``max_full_evals`` / ``auto`` (GEPA budget; "light" by default), ``min_improvement`` (0),
            ``fallback`` (what the Prompter serves when the candidate does not win: ``"original"`` — its
            prompts as they were — or ``"baseline"`` — the baseline as scored, i.e. with the plain
            training demos it was given, if it scored above the original prompts), ``compare_original``
            (True: when the baseline has demos the original prompts lack, score the original prompts too,
            n_val more requests, and adopt a candidate only if it beats both; demos can hurt a small
            model), ``optimize_descriptions`` (GEPA: the field descriptions; True),
            ``optimize_prompts`` (GEPA: the system and instruction prompts — True, False or a list of
            ``"system_prompt"`` / ``"instruction_prompt"``), ``gepa_val_size`` (GEPA compares candidates
            on this many training examples; 32), ``reflection_minibatch_size`` (3), and any argument
            of the chosen DSPy teleprompter's constructor or ``compile``.
    """
    started = time.perf_counter()
    # -- 1. checks (no LM call before the end of this block) -----------------------------------------
    if evaluator is not None and evaluate_fn is not None:
        raise ConfigurationError("pass evaluator or its alias evaluate_fn, not both")
    evaluator = evaluator if evaluator is not None else evaluate_fn
    items = _check_examples(examples)
    val_items = _check_examples(valset) if valset is not None else None
    from .._example import check_labels

    check_labels(prompter.model, items)  # every label fits the model, before any LM call
    check_labels(prompter.model, val_items or (), what="valset example")
    if isinstance(train_split, bool) or not isinstance(train_split, (int, float)) or not 0 < train_split < 1:
        raise ConfigurationError(f"train_split must be a number between 0 and 1 (exclusive), got {train_split!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigurationError(f"seed must be an int, got {seed!r}")
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ConfigurationError(f"num_threads must be a positive int, got {num_threads!r}")
    limits = (("max_lm_calls", max_lm_calls), ("max_tokens", max_tokens), ("max_val_examples", max_val_examples))
    for name, value in limits:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigurationError(f"{name} must be a positive int or None, got {value!r}")
    # one example and no valset: nothing can be validated; the arguments are still checked (see _unvalidated)
    single = val_items is None and len(items) < 2
    split = _Split(items, []) if single else _split(items, val_items, float(train_split), seed, max_val_examples)
    plan = _plan(optimizer, len(split.train))
    _configure_stages(plan, 1 << 30 if single else len(split.train), optimizer_kwargs)
    own = {k: v for k, v in optimizer_kwargs.items() if k in _OWN_KWARGS}
    auto_preset = own.get("auto")
    if auto_preset is not None and auto_preset not in _GEPA_PRESETS:
        raise ConfigurationError(f"auto must be one of {sorted(_GEPA_PRESETS)}, got {auto_preset!r}")
    which = own.get("optimize_prompts", True)
    if not isinstance(which, bool):
        names = [which] if isinstance(which, str) else list(which)
        bad = [w for w in names if w not in ("system_prompt", "instruction_prompt")]
        if bad:
            raise ConfigurationError(
                f"optimize_prompts takes True, False or 'system_prompt' / 'instruction_prompt', got {bad}"
            )
        own["optimize_prompts"] = names
    for key in ("reflection_lm", "prompt_model"):
        if own.get(key) is not None:
            external_target(own[key])  # a ConfigurationError now for an unusable LM
    min_improvement = float(own.get("min_improvement", 0.0))
    fallback = own.get("fallback", "original")
    if fallback not in ("original", "baseline"):
        raise ConfigurationError(f"fallback must be 'original' or 'baseline', got {fallback!r}")
    if single:
        return _unvalidated(prompter, items[0], plan, on_progress=on_progress, verbose=verbose, seed=seed,
                            started=started)
    n_val = len(split.val)
    unlabelled_val = sum(1 for ex in split.val if ex.expected_output is None)
    from .._schema import iter_field_paths

    n_fields = max(1, len(iter_field_paths(prompter._base_schema)))
    per_scoring = n_val + unlabelled_val * n_fields
    reserve = per_scoring + max(1, per_scoring // 5)
    original = prompter.state
    baseline_state = _plain_demos(prompter, original, split.train, plan.demo_budget)
    # the baseline has demos the original prompts lack: the original is scored too (a candidate must beat both)
    compare_original = bool(own.get("compare_original", True)) and baseline_state != original
    needed = per_scoring * (2 if compare_original else 1) + reserve
    if max_lm_calls is not None and max_lm_calls < needed:
        what = "the baseline, the original prompts and one candidate" if compare_original else (
            "the baseline and one candidate"
        )
        raise ConfigurationError(
            f"max_lm_calls={max_lm_calls} cannot score {what} on the {n_val} validation example(s) (that needs "
            f"about {needed} requests); raise it or set max_val_examples"
        )
    budget = Budget(max_requests=max_lm_calls, max_tokens=max_tokens)
    log.info("optimize: %s (%s); %d training, %d validation examples", plan.name, plan.reason, len(split.train), n_val)

    with Progress(on_progress, verbose=verbose, max_calls=max_lm_calls) as progress:
        # two doors on one budget: the optimizers' door is closed when their phase ends, so a worker
        # thread DSPy leaves running after a spent budget cannot eat the reserve of the final scoring
        gateway = Gateway(prompter, budget, on_call=progress.lm_call)
        score_gateway = Gateway(prompter, budget, on_call=progress.lm_call)

        def make_scorer(door: Gateway) -> ExampleScorer:
            return ExampleScorer(
                prompter.model,
                evaluator,
                judge_lm=door.lm,
                include_fields=include_fields,
                exclude_fields=exclude_fields,
            )

        scorer, score_scorer = make_scorer(gateway), make_scorer(score_gateway)
        if any(ex.expected_output is None for ex in items):
            scorer.judge()
            score_scorer.judge()
        progress.emit(
            {
                "event": "start",
                "optimizer": plan.name,
                "reason": plan.reason,
                "n_train": len(split.train),
                "n_val": n_val,
                "demo_budget": plan.demo_budget,
            }
        )
        run = _Run(
            prompter,
            split,
            plan,
            scorer=scorer,
            gateway=gateway,
            score_scorer=score_scorer,
            score_gateway=score_gateway,
            budget=budget,
            progress=progress,
            seed=seed,
            sequential=sequential,
            parallel_fields=parallel_fields,
            num_threads=num_threads,
            include_fields=include_fields,
            exclude_fields=exclude_fields,
            own=own,
        )
        if n_val < _FEW_VAL:
            log.info("optimize: only %d validation example(s): the accept/reject decision is noisy", n_val)
            run.notes.append(
                f"only {n_val} validation example(s) decided this (one example moves the score by "
                f"{1 / n_val:.2f}); give more examples or valset= for a firmer decision"
            )
        descriptions_before = dict(prompter.renderer.descriptions)

        # -- 3. baseline ------------------------------------------------------------------------------
        budget.set_phase(
            requests=None if max_lm_calls is None else max_lm_calls - reserve,
            tokens=None if max_tokens is None else max_tokens // 2,
        )
        baseline: EvaluationReport | None = None
        as_it_was: EvaluationReport | None = None  # the original prompts, when the baseline differs from them
        try:
            baseline = run.score(baseline_state, "baseline")
            if compare_original:
                as_it_was = run.score(original, "original")
        except BudgetExhausted:
            pass
        candidate_state: PromptState | None = None
        candidate: EvaluationReport | None = None
        stages_done: list[str] = []
        if baseline is not None:
            # -- 4. stages ----------------------------------------------------------------------------
            if max_tokens is not None:
                budget.set_phase(
                    requests=budget.ceiling_requests,
                    tokens=max(0, max_tokens - math.ceil(1.25 * budget.tokens)),
                )
            state = original
            with quiet():  # (closing waits for DSPy's leftover worker threads: they stay quiet too)
                try:
                    state = run.run_stages(state, stages_done)
                finally:
                    run.close()
            candidate_state = state
            # -- 5. candidate ----------------------------------------------------------------------------
            budget.lift()
            if candidate_state == baseline_state:
                candidate = baseline
            elif candidate_state == original and as_it_was is not None:
                candidate = as_it_was
            else:
                try:
                    candidate = run.score(candidate_state, "candidate")
                except BudgetExhausted:
                    run.notes.append("the budget ran out while scoring the candidate")
                    candidate = None

        added = len(baseline_state.demos) - len(original.demos)
        verdict = _decide(baseline, as_it_was, candidate, min_improvement, fallback, added)
        accepted = verdict.accepted
        adopted: PromptState = original
        if accepted and candidate_state is not None:
            adopted = candidate_state
        elif verdict.serve_baseline:
            adopted = baseline_state
        message = verdict.message
        if run.notes:
            message += ". " + "; ".join(run.notes)
        snap = budget.snapshot()
        result = OptimizationResult(
            baseline_score=baseline.score if baseline is not None else float("nan"),
            optimized_score=verdict.served_score,
            accepted=accepted,
            message=message,
            optimizer=plan.name,
            optimizer_reason=plan.reason,
            state=adopted,
            baseline_state=baseline_state,
            candidate_state=candidate_state,
            candidate_score=candidate.score if candidate is not None else None,
            baseline_per_field=dict(baseline.per_field) if baseline is not None else {},
            candidate_per_field=dict(candidate.per_field) if candidate is not None else {},
            original_score=as_it_was.score if as_it_was is not None else None,
            original_per_field=dict(as_it_was.per_field) if as_it_was is not None else {},
            n_train=len(split.train),
            n_val=n_val,
            n_examples=len(items),
            lm_calls=snap["lm_calls"],
            requests=snap["requests"],
            cache_hits=snap["cache_hits"],
            prompt_tokens=snap["prompt_tokens"],
            completion_tokens=snap["completion_tokens"],
            estimated_cost_usd=estimate_cost(prompter.model_id, snap["prompt_tokens"], snap["completion_tokens"]),
            wall_time_s=time.perf_counter() - started,
            budget_exhausted=budget.exhausted,
            seed=seed,
            stages=stages_done,
            demo_budget=plan.demo_budget,
            field_descriptions_before=descriptions_before,
            baseline_report=baseline,
            candidate_report=candidate,
            original_report=as_it_was,
        )
        if own.get("calibrate", True):
            _calibrate(prompter, result, adopted, [
                (candidate_state, candidate), (baseline_state, baseline), (original, as_it_was),
            ])
        log.info("optimize: %s", message)
        progress.emit({"event": "done", "accepted": accepted, "message": message, **snap})
    if adopted != original:
        prompter.state = adopted
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

