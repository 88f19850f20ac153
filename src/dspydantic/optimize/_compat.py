"""dspydantic 0.1's ``optimize()`` arguments, in one table: old name -> what replaced it.

:func:`translate_optimize_kwargs` is called by ``Prompter.optimize`` before
:func:`~dspydantic.optimize.run.optimize_prompter` sees the arguments. Each old argument either maps to
its replacement (``evaluator_config`` -> ``evaluator``), or, where it has no meaning here
(``early_stopping_patience``...), is accepted and dropped; both with a :class:`DeprecationWarning`
naming the replacement. Old *values* are translated too: 0.1's optimizer names (``"miprov2zeroshot"``,
any DSPy teleprompter class name), ``evaluate_fn=<dspy.LM>`` (a judge for unlabelled examples), 0.1's
custom judge functions, and ``on_progress`` callbacks, which receive :class:`FieldOptimizationProgress`
events (dicts with 0.1's attributes). Nothing here calls an LM.
"""

from __future__ import annotations

import functools
import inspect
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._compat import warn_deprecated
from ..errors import ConfigurationError
from .evaluator_base import InputData
from .evaluators import Evaluator

if TYPE_CHECKING:
    from .._prompter import Prompter

__all__ = ["LEGACY_OPTIMIZE_ARGS", "FieldOptimizationProgress", "LegacyArg", "translate_optimize_kwargs"]


# --------------------------------------------------------------------------------------------------
# progress events with 0.1's attributes


class FieldOptimizationProgress(dict[str, Any]):
    """A progress event: our event dict (``event["event"]``, ``event["score"]``...) that also has dspydantic
    0.1's attributes, so a callback written for either works.

    ``phase`` is 0.1's phase where one matches — ``"baseline"`` (the baseline scored), ``"fields"`` /
    ``"system_prompt"`` / ``"instruction_prompt"`` (GEPA proposed new texts for them; ``field_path`` names
    the field when there is one), ``"complete"`` (done) — else our event name (``"start"``, ``"stage"``,
    ``"lm_call"``, ``"candidate"``, ``"score"``...). ``score_before`` is the baseline's validation score
    once known (0.0 before), ``score_after`` the latest score (the candidate's, or on ``complete`` the
    score of what the Prompter serves). Built the 0.1 way (``FieldOptimizationProgress(phase=...)``) too.
    """

    phase: str
    score_before: float
    score_after: float
    improved: bool
    total_fields: int
    field_path: str | None
    field_index: int | None
    elapsed_seconds: float
    optimized_value: str | None

    def __init__(
        self,
        phase: str = "",
        score_before: float = 0.0,
        score_after: float = 0.0,
        improved: bool = False,
        total_fields: int = 0,
        field_path: str | None = None,
        field_index: int | None = None,
        elapsed_seconds: float = 0.0,
        optimized_value: str | None = None,
        *,
        event: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(event if event is not None else {"event": phase})
        self.phase = phase
        self.score_before = score_before
        self.score_after = score_after
        self.improved = improved
        self.total_fields = total_fields
        self.field_path = field_path
        self.field_index = field_index
        self.elapsed_seconds = elapsed_seconds
        self.optimized_value = optimized_value

    def __repr__(self) -> str:
        return (
            f"FieldOptimizationProgress(phase={self.phase!r}, score_before={self.score_before!r}, "
            f"score_after={self.score_after!r}, improved={self.improved!r}, field_path={self.field_path!r}, "
            f"event={dict(self)!r})"
        )


class _ProgressAdapter:
    """Wraps a user's ``on_progress``: every event goes out as a :class:`FieldOptimizationProgress`."""

    def __init__(self, callback: Callable[[Any], Any], total_fields: int) -> None:
        self.callback = callback
        self.total_fields = total_fields
        self.started = time.perf_counter()
        self.baseline: float | None = None
        self.latest = 0.0

    def __call__(self, event: dict[str, Any]) -> None:
        kind = str(event.get("event", ""))
        phase = kind
        field_path: str | None = None
        score = event.get("score")
        if kind == "score" and isinstance(score, (int, float)):
            if event.get("what") == "baseline":
                phase, self.baseline = "baseline", float(score)
            self.latest = float(score)
        elif kind == "candidate" and isinstance(score, (int, float)):
            self.latest = float(score)
        elif kind == "proposal":
            components = [str(c) for c in event.get("components") or ()]
            fields = [c for c in components if c not in ("system_prompt", "instruction_prompt")]
            if fields:
                phase, field_path = "fields", fields[0] if len(fields) == 1 else ", ".join(fields)
            elif components:
                phase = components[0]
        elif kind == "done":
            phase = "complete"
        before = self.baseline if self.baseline is not None else 0.0
        after = self.latest if self.baseline is not None else 0.0
        if kind == "done" and not event.get("accepted"):
            after = before  # nothing better was adopted
        self.callback(
            FieldOptimizationProgress(
                phase=phase,
                score_before=before,
                score_after=after,
                improved=bool(event.get("accepted")) if kind == "done" else after > before,
                total_fields=self.total_fields,
                field_path=field_path,
                elapsed_seconds=time.perf_counter() - self.started,
                event=event,
            )
        )


# --------------------------------------------------------------------------------------------------
# 0.1's evaluate_fn values


class _LabelledOrJudged(Evaluator):
    """0.1's ``evaluate_fn=<dspy.LM>``: labelled values are scored by the configured evaluator, values of
    unlabelled examples by an LLM judge on that LM."""

    needs_expected = False

    def __init__(self, inner: Evaluator, judge: Evaluator) -> None:
        super().__init__({})
        self.inner = inner
        self.judge = judge

    def evaluate(
        self, extracted: Any, expected: Any, input_data: InputData = None, field_path: str | None = None
    ) -> float:
        if expected is None and getattr(self.inner, "needs_expected", True):
            return self.judge.evaluate(extracted, None, input_data=input_data, field_path=field_path)
        return self.inner.evaluate(extracted, expected, input_data=input_data, field_path=field_path)

    def __repr__(self) -> str:
        return f"_LabelledOrJudged({self.inner!r}, judge={self.judge!r})"


def _is_dspy_lm(value: Any) -> bool:
    dspy = sys.modules.get("dspy")
    base = getattr(dspy, "BaseLM", None) if dspy is not None else None
    return isinstance(base, type) and isinstance(value, base)


_PROMPT_PARAMS = ("descriptions", "system_prompt", "instruction_prompt")


def _is_legacy_judge_fn(value: Any) -> bool:
    """0.1's custom judge: ``fn(example, [extracted_data,] optimized_descriptions, optimized_system_prompt,
    optimized_instruction_prompt)`` -- four or five required positional parameters that take prompts (a
    field evaluator ``fn(extracted, expected, input_data, field_path)`` is not one)."""
    if isinstance(value, (str, type, Mapping, Evaluator)) or not callable(value):
        return False
    if callable(getattr(value, "evaluate", None)) or _is_dspy_lm(value):
        return False
    try:
        params = list(inspect.signature(value).parameters.values())
    except (TypeError, ValueError):
        return False
    required = [
        p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(required) < 4:
        return False
    names = [p.name for p in required]
    return names[0] == "example" or any(part in n for n in names for part in _PROMPT_PARAMS)


def _judged_plan(spec: Any, lm: Any) -> Any:
    from .evaluators import ScoreJudge
    from .scoring import FieldEvaluators, resolve_evaluators

    judge = ScoreJudge(lm=lm)
    base = resolve_evaluators(spec, lm=lm)
    if not isinstance(base, FieldEvaluators):
        return base  # a whole-output metric scores labelled examples; unlabelled ones get the default judge
    return FieldEvaluators(
        _LabelledOrJudged(base.default, judge),
        {path: _LabelledOrJudged(e, judge) for path, e in base.overrides.items()},
    )


# --------------------------------------------------------------------------------------------------
# 0.1's optimizer names


_MIPRO_ZERO_SHOT = ("miprov2zeroshot", "miprov2_zero_shot", "mipro_zero_shot")


def _teleprompter_classes() -> dict[str, type]:
    import dspy.teleprompt as tp

    found: dict[str, type] = {}
    stack = [tp.Teleprompter]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            found.setdefault(sub.__name__.lower(), sub)
            stack.append(sub)
    return found


def _placeholder_metric(example: Any, pred: Any, trace: Any = None) -> float:
    return 0.0  # replaced by dspydantic's metric before the teleprompter runs


def _legacy_optimizer(name: str, ctx: _Ctx) -> Any:
    """0.1 looked optimizers up by DSPy class name; names we do not run ourselves become an instance."""
    from .stages import ALIASES as _ALIASES

    key = name.strip().lower().replace("-", "_").replace(" ", "")
    if key in _ALIASES or key == "auto" or "+" in key:
        return name
    if key in _MIPRO_ZERO_SHOT:
        ctx.warn(
            f"optimizer={name!r}",
            "mapped to optimizer='gepa', which rewrites the instructions and field descriptions without demos "
            "and runs from one example on; for DSPy's MIPROv2 without demos pass optimizer='miprov2', "
            "max_bootstrapped_demos=0, max_labeled_demos=0",
        )
        return "gepa"
    classes = _teleprompter_classes()
    cls = classes.get(key.replace("_", ""))
    if cls is None:
        return name  # the run says it is unknown and lists the names
    params = {p for p in inspect.signature(cls).parameters if p != "self"}
    init = {k: ctx.out.pop(k) for k in list(ctx.out) if k in params and k not in ("metric",)}
    compile_params = set(inspect.signature(getattr(cls, "compile")).parameters) - _RUN_COMPILE_ARGS  # noqa: B009
    compile_kwargs = {k: ctx.out.pop(k) for k in list(ctx.out) if k in compile_params}
    try:
        teleprompter = cls(metric=_placeholder_metric, **init) if "metric" in params else cls(**init)
    except Exception as exc:
        raise ConfigurationError(
            f"optimizer {name!r}: dspydantic 0.1 built DSPy's {cls.__name__} by name; it cannot be built from "
            f"the given arguments ({type(exc).__name__}: {exc}). Pass an instance, optimizer=dspy.{cls.__name__}(...), "
            "or one of 'auto', 'gepa', 'bootstrap', 'random_search', 'miprov2', 'copro', 'simba', 'nearest_demos'"
        ) from exc
    if not compile_kwargs:
        return teleprompter
    configured = type(cls.__name__, (_WithCompileArgs,), {})
    return configured(teleprompter, compile_kwargs)


#: compile() arguments the run passes itself
_RUN_COMPILE_ARGS = frozenset({"self", "student", "program", "trainset", "valset", "teacher", "eval_kwargs", "seed"})


class _WithCompileArgs:
    """A teleprompter built by name together with the ``compile()`` arguments it was given (0.1's
    ``compile_kwargs``): attributes read and write through to it; ``compile`` has them bound."""

    def __init__(self, inner: Any, compile_kwargs: dict[str, Any]) -> None:
        self.__dict__["_inner"] = inner
        self.__dict__["compile"] = functools.partial(inner.compile, **compile_kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_inner"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__dict__["_inner"], name, value)


# --------------------------------------------------------------------------------------------------
# the table


@dataclass
class _Ctx:
    prompter: Prompter
    given: dict[str, Any]
    out: dict[str, Any]
    skip_prompts: set[str] = field(default_factory=set)

    def warn(self, old: str, replacement: str) -> None:
        warn_deprecated(old, replacement)

    def set_new(self, old: str, new: str, value: Any) -> None:
        if new in self.given:
            raise ConfigurationError(f"pass {new} or its old name {old}, not both")
        self.out[new] = value


@dataclass(frozen=True)
class LegacyArg:
    """One 0.1 argument: what replaced it (said in the warning) and how its value is applied."""

    replacement: str
    apply: Callable[[_Ctx, Any], None]


def _evaluator_config(ctx: _Ctx, value: Any) -> None:
    ctx.set_new("evaluator_config", "evaluator", value)
    if isinstance(ctx.out.get("evaluate_fn"), str):
        ctx.out.pop("evaluate_fn")  # as in 0.1: evaluator_config wins over a metric name


def _merge_dict(name: str) -> Callable[[_Ctx, Any], None]:
    def apply(ctx: _Ctx, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, Mapping):
            raise ConfigurationError(f"{name} must be a dict, got {type(value).__name__}")
        clash = sorted(k for k in value if k in ctx.given)
        if clash:
            raise ConfigurationError(f"{clash} given both directly and in {name}")
        ctx.out.update(value)

    return apply


def _skip_descriptions(ctx: _Ctx, value: Any) -> None:
    if value:
        ctx.set_new("skip_field_description_optimization", "optimize_descriptions", False)


def _skip_prompt(which: str) -> Callable[[_Ctx, Any], None]:
    def apply(ctx: _Ctx, value: Any) -> None:
        if value:
            if "optimize_prompts" in ctx.given:
                raise ConfigurationError(f"pass optimize_prompts or skip_{which}_optimization, not both")
            ctx.skip_prompts.add(which)

    return apply


def _ignored(ctx: _Ctx, value: Any) -> None:
    return None


def _fast(ctx: _Ctx, value: Any) -> None:
    ctx.set_new("fast", "sequential", not bool(value))


def _init_temperature(ctx: _Ctx, value: Any) -> None:
    from .stages import ALIASES as _ALIASES

    opt = ctx.out.get("optimizer", "auto")
    name = _ALIASES.get(opt.strip().lower().replace("-", "_")) if isinstance(opt, str) else None
    if name in ("miprov2", "copro"):
        ctx.out["init_temperature"] = value
    elif name == "gepa" and "reflection_temperature" not in ctx.given:
        ctx.out["reflection_temperature"] = value
    elif callable(getattr(opt, "compile", None)) and hasattr(opt, "init_temperature"):
        opt.init_temperature = value


LEGACY_OPTIMIZE_ARGS: dict[str, LegacyArg] = {
    "evaluator_config": LegacyArg(
        "use evaluator= (the same dict: {'default': ..., 'field_overrides': {...}})", _evaluator_config
    ),
    "optimizer_kwargs": LegacyArg(
        "pass the teleprompter's arguments as keyword arguments of optimize() directly "
        "(they go to its constructor or compile() by name)",
        _merge_dict("optimizer_kwargs"),
    ),
    "compile_kwargs": LegacyArg(
        "pass compile()'s arguments as keyword arguments of optimize() directly", _merge_dict("compile_kwargs")
    ),
    "skip_field_description_optimization": LegacyArg(
        "use optimize_descriptions=False (GEPA; the DSPy optimizers never change field descriptions)",
        _skip_descriptions,
    ),
    "skip_system_prompt_optimization": LegacyArg(
        "use optimize_prompts=['instruction_prompt'] (GEPA: the prompts it may rewrite)", _skip_prompt("system_prompt")
    ),
    "skip_instruction_prompt_optimization": LegacyArg(
        "use optimize_prompts=['system_prompt'] (GEPA: the prompts it may rewrite)",
        _skip_prompt("instruction_prompt"),
    ),
    "early_stopping_patience": LegacyArg(
        "ignored: there is no field-by-field loop to stop; bound the run with max_lm_calls= / max_tokens= "
        "(or GEPA's max_metric_calls=)",
        _ignored,
    ),
    "auto_generate_prompts": LegacyArg(
        "ignored: a Prompter always has a system and an instruction prompt (the defaults when you give "
        "none) and GEPA / MIPROv2 / COPRO optimize them",
        _ignored,
    ),
    "skip_score_threshold": LegacyArg(
        "ignored: GEPA only rewrites the fields that scored below 1.0; keep a field out with exclude_fields=",
        _ignored,
    ),
    "init_temperature": LegacyArg(
        "passed to MIPROv2 / COPRO as init_temperature and to GEPA as reflection_temperature; "
        "ignored for the other optimizers (and for 'auto'); name the optimizer to use it",
        _init_temperature,
    ),
    "fast": LegacyArg("use sequential= (fast=True is sequential=False, the default)", _fast),
}


#: 0.1's ``optimize()`` parameters after ``examples``, in their positional order
POSITIONAL_016 = (
    "evaluate_fn", "optimizer", "train_split", "num_threads", "verbose", "exclude_fields", "include_fields",
    "evaluator_config", "sequential", "parallel_fields", "max_val_examples", "skip_score_threshold", "on_progress",
)


def translate_optimize_kwargs(
    prompter: Prompter, kwargs: dict[str, Any], args: tuple[Any, ...] = ()
) -> dict[str, Any]:
    """Map dspydantic 0.1's ``optimize()`` arguments and values onto ours (see the module docstring);
    ``args`` are positional arguments after ``examples``, in 0.1's order."""
    if args:
        if len(args) > len(POSITIONAL_016):
            raise TypeError(f"optimize() takes examples and at most {len(POSITIONAL_016)} more positional arguments")
        named = dict(zip(POSITIONAL_016, args, strict=False))
        twice = sorted(set(named) & set(kwargs))
        if twice:
            raise TypeError(f"optimize() got multiple values for {twice}")
        warn_deprecated(
            "optimize(examples, <positional arguments>)",
            f"pass them by keyword: {', '.join(f'{k}=...' for k in named)}",
        )
        kwargs = {**named, **kwargs}
    legacy = {k: kwargs[k] for k in kwargs if k in LEGACY_OPTIMIZE_ARGS}
    out = {k: v for k, v in kwargs.items() if k not in LEGACY_OPTIMIZE_ARGS}
    ctx = _Ctx(prompter=prompter, given=dict(out), out=out)

    def apply(names: list[str]) -> None:
        for name in names:
            arg = LEGACY_OPTIMIZE_ARGS[name]
            ctx.warn(f"optimize({name}=...)", arg.replacement)
            arg.apply(ctx, legacy[name])

    # the dicts of arguments first (a teleprompter built by name takes its arguments from them), then the
    # optimizer's name (init_temperature goes where the optimizer takes it), then the rest
    apply([k for k in legacy if k in ("optimizer_kwargs", "compile_kwargs")])
    optimizer = out.get("optimizer")
    if isinstance(optimizer, str):
        out["optimizer"] = _legacy_optimizer(optimizer, ctx)
    apply([k for k in legacy if k not in ("optimizer_kwargs", "compile_kwargs")])
    if ctx.skip_prompts:
        keep = [p for p in ("system_prompt", "instruction_prompt") if p not in ctx.skip_prompts]
        out["optimize_prompts"] = keep or False
    _translate_evaluate_fn(ctx)
    callback = out.get("on_progress")
    if callback is not None:
        if not callable(callback):
            raise ConfigurationError(f"on_progress must be a callable, got {type(callback).__name__}")
        from .._schema import iter_field_paths

        out["on_progress"] = _ProgressAdapter(callback, len(iter_field_paths(prompter._base_schema)))
    return out


def _translate_evaluate_fn(ctx: _Ctx) -> None:
    fn = ctx.out.get("evaluate_fn")
    if fn is None:
        return
    spec = ctx.out.get("evaluator")
    if _is_dspy_lm(fn):
        ctx.warn(
            "optimize(evaluate_fn=<dspy.LM>)",
            "an LLM judge for unlabelled examples; it still judges them (labelled ones are scored by the "
            "evaluator as before). New spelling: evaluator={'default': {'type': 'score_judge', 'config': "
            "{'lm': judge_lm}}} judges every field, or leave it out to judge unlabelled examples with the "
            "Prompter's own LM",
        )
        ctx.out.pop("evaluate_fn")
        ctx.out["evaluator"] = _judged_plan(spec, fn)
    elif _is_legacy_judge_fn(fn):
        ctx.warn(
            "optimize(evaluate_fn=<function(example, ..., optimized_descriptions, system_prompt, "
            "instruction_prompt)>)",
            "a custom judge of unlabelled examples, handed prompts rather than an extraction; it is not "
            "called: labelled examples are scored by the evaluator as before, unlabelled ones by score_judge "
            "on the Prompter's LM. To score with your own code pass evaluator=fn(extracted, expected) (per "
            "field) or evaluator=whole_output(fn(expected, predicted)) (dspydantic.optimize.scoring)",
        )
        ctx.out.pop("evaluate_fn")
