"""The optimizer stages: a table ``{name: (DSPy class, defaults, split rule)}``, the plan, and how a stage compiles."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError
from .options import OptimizeOptions

__all__ = ["ALIASES", "STAGES", "Plan", "Stage", "StageSpec", "canonical", "compile_stage", "plan_stages"]


@dataclass(frozen=True)
class Env:
    """What a stage's defaults depend on: the run's threads and seed, and its training examples."""

    num_threads: int
    seed: int
    n_train: int
    n_dev: int = 0  # training examples the optimizer holds out for its own validation


def _none(env: Env) -> dict[str, Any]:
    return {}


def _mipro_compile(env: Env, given: Mapping[str, Any]) -> dict[str, Any]:
    size = given.get("minibatch_size", min(35, env.n_dev))
    return {"minibatch_size": size, "minibatch": env.n_dev > size}


@dataclass(frozen=True)
class StageSpec:
    """One optimizer we run by name.

    ``options`` are the constructor arguments taken from :class:`OptimizeOptions` (their demo counts are the
    stage's demo budget), ``init`` / ``compile`` the defaults a user's teleprompter keyword overrides,
    ``models`` the constructor arguments that get the proposal LM (``prompt_model``) and the student's LM
    (``task_model``), and ``holdout(n)`` how many of the ``n`` training examples the optimizer keeps as its
    own ``valset`` (``None``: it gets the whole training split as ``trainset``)."""

    dspy_class: str | None  # None: our own GEPA over field descriptions and prompts (:mod:`.fields`)
    min_train: int
    requires: tuple[str, str] | None = None  # (module, what needs it)
    options: Callable[[OptimizeOptions], dict[str, Any]] = lambda o: {}
    init: Callable[[Env], dict[str, Any]] = _none
    compile: Callable[[Env, Mapping[str, Any]], dict[str, Any]] = lambda env, given: {}
    models: tuple[str, ...] = ()
    holdout: Callable[[int], int] | None = None


def _demos(o: OptimizeOptions) -> dict[str, Any]:
    return {"max_bootstrapped_demos": o.max_bootstrapped_demos, "max_labeled_demos": o.max_labeled_demos}


def _eval_kwargs(env: Env, given: Mapping[str, Any]) -> dict[str, Any]:
    return {"eval_kwargs": {"num_threads": env.num_threads, "display_progress": False}}


#: canonical optimizer name -> how it runs
STAGES: dict[str, StageSpec] = {
    "gepa": StageSpec(None, 1),
    # ours, no DSPy: the labelled training examples the current prompts get most wrong become the demos
    "hard_demos": StageSpec(None, 1, options=lambda o: {"max_labeled_demos": o.max_labeled_demos}),
    # ours, no DSPy: the whole labelled training split as a pool, the demos nearest to each input shown
    "nearest_demos": StageSpec(None, 1, options=lambda o: {"max_labeled_demos": o.max_labeled_demos}),
    "bootstrap": StageSpec("BootstrapFewShot", 1, options=_demos, init=lambda env: {"max_rounds": 1}),
    "random_search": StageSpec(
        "BootstrapFewShotWithRandomSearch", 2, options=_demos,
        init=lambda env: {"num_candidate_programs": 4, "num_threads": env.num_threads},
        holdout=lambda n: max(1, n // 2),
    ),
    "miprov2": StageSpec(
        "MIPROv2", 4, requires=("optuna", "MIPROv2"),
        options=lambda o: {**_demos(o), "auto": o.auto},
        init=lambda env: {"num_threads": env.num_threads, "seed": env.seed, "verbose": False},
        compile=_mipro_compile, models=("prompt_model", "task_model"), holdout=lambda n: max(2, n // 2),
    ),
    "copro": StageSpec(
        "COPRO", 1, init=lambda env: {"breadth": 4, "depth": 2, "init_temperature": 1.0}, compile=_eval_kwargs,
        models=("prompt_model",),
    ),
    "simba": StageSpec(
        "SIMBA", 2, requires=("numpy", "SIMBA"), options=lambda o: {"max_demos": o.max_demos},
        init=lambda env: {"bsize": min(8, env.n_train), "num_candidates": 4, "max_steps": 4,
                          "num_threads": env.num_threads},
        compile=lambda env, given: {"seed": env.seed}, models=("prompt_model",),
    ),
}
#: every spelling we accept -> canonical name
ALIASES = {
    **{name: name for name in STAGES},
    "bootstrapfewshot": "bootstrap",
    "bootstrap_few_shot": "bootstrap",
    "randomsearch": "random_search",
    "bootstrapfewshotwithrandomsearch": "random_search",
    "bootstrap_random_search": "random_search",
    "mipro": "miprov2",
    "mipro_v2": "miprov2",
    "hard": "hard_demos",
    "harddemos": "hard_demos",
    "nearest": "nearest_demos",
    "knn": "nearest_demos",
}
_DEMO_ATTRS = ("max_bootstrapped_demos", "max_labeled_demos", "max_demos")


def canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "_").replace(" ", "")
    if key in ALIASES:
        return ALIASES[key]
    raise ConfigurationError(
        f"unknown optimizer {name!r}; choose 'auto', one of {sorted(STAGES)}, a list of them "
        "(run in order, e.g. ['gepa', 'bootstrap']), or a DSPy teleprompter instance"
    )


def has_module(name: str) -> bool:
    """Whether ``name`` can be imported (a ``None`` entry in ``sys.modules`` blocks an import)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def params(fn: Any) -> set[str]:
    """The named parameters of ``fn`` (not its ``**kwargs``)."""
    try:
        return {p.name for p in inspect.signature(fn).parameters.values() if p.kind != p.VAR_KEYWORD}
    except (TypeError, ValueError):
        return set()


def dspy_class(name: str) -> Any:
    import dspy.teleprompt as tp

    return getattr(tp, str(STAGES[name].dspy_class))


# --------------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str  # a key of STAGES, or "custom" for a teleprompter instance
    teleprompter: Any = None
    demo_budget: int = 0
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    compile_kwargs: dict[str, Any] = field(default_factory=dict)
    live: Any = None  # the running teleprompter / GEPA adapters (for the best-so-far on a spent budget)


@dataclass
class Plan:
    name: str
    reason: str
    stages: list[Stage]

    @property
    def demo_budget(self) -> int:
        return max((s.demo_budget for s in self.stages), default=0)


def _auto(n_train: int) -> tuple[str, str]:
    if n_train < 4:
        return "gepa", f"{n_train} training example(s): too few for demos; GEPA rewrites descriptions and prompts"
    if n_train < 50:
        return "hard_demos", (
            f"{n_train} training examples (< 50): demos from the labelled examples the prompts get most wrong"
        )
    have_optuna = has_module("optuna")
    if n_train < 200 or not have_optuna:
        why = "(< 200)" if n_train < 200 else "(optuna is not installed for MIPROv2)"
        return "random_search", f"{n_train} training examples {why}: BootstrapFewShotWithRandomSearch"
    return "miprov2", f"{n_train} training examples (>= 200): MIPROv2 instructions + demos"


def _stage(item: Any) -> Stage:
    if isinstance(item, str):
        return Stage(canonical(item))
    if callable(getattr(item, "compile", None)):
        return Stage("custom", teleprompter=item)
    raise ConfigurationError(f"optimizer list items must be names or teleprompters, got {item!r}")


def plan_stages(optimizer: Any, n_train: int) -> Plan:
    """The stages ``optimizer`` names (``"auto"`` picks one from the training-split size)."""
    if optimizer is None or (isinstance(optimizer, str) and optimizer.strip().lower() == "auto"):
        name, reason = _auto(n_train)
        return Plan(name=name, reason="auto: " + reason, stages=[Stage(name)])
    if isinstance(optimizer, str) and "+" in optimizer:
        optimizer = [p for p in optimizer.split("+") if p.strip()]
    if isinstance(optimizer, str):
        name = canonical(optimizer)
        return Plan(name=name, reason=f"chosen: {name}", stages=[Stage(name)])
    if isinstance(optimizer, (list, tuple)):
        if not optimizer:
            raise ConfigurationError("optimizer list is empty")
        stages = [_stage(item) for item in optimizer]
        name = "+".join(s.name if s.name != "custom" else type(s.teleprompter).__name__ for s in stages)
        return Plan(name=name, reason=f"chosen: {name}", stages=stages)
    if callable(getattr(optimizer, "compile", None)):
        cls = type(optimizer).__name__
        return Plan(name=cls, reason=f"a {cls} instance", stages=[Stage("custom", teleprompter=optimizer)])
    raise ConfigurationError(
        f"optimizer must be 'auto', a name, a list of names or a DSPy teleprompter instance, got {optimizer!r}"
    )


def configure_stages(plan: Plan, n_train: int, opts: OptimizeOptions) -> None:
    """Check each stage's training-set size and dependency, and give it its constructor and ``compile()``
    arguments (ours, then the user's teleprompter keywords matched by name); no LM call."""
    rest = opts.teleprompter_kwargs
    used: set[str] = set()
    accepted: set[str] = set()
    for stage in plan.stages:
        if stage.name == "custom":
            tp = stage.teleprompter
            stage.demo_budget = max(int(getattr(tp, attr, 0) or 0) for attr in _DEMO_ATTRS)
            continue
        spec = STAGES[stage.name]
        if n_train < spec.min_train:
            raise ConfigurationError(
                f"optimizer {stage.name!r} needs at least {spec.min_train} training example(s); the training "
                f"split has {n_train}. Give more examples, a larger train_split, or optimizer='gepa'"
            )
        if spec.requires is not None and not has_module(spec.requires[0]):
            module, what = spec.requires
            raise ConfigurationError(
                f"{what} needs the '{module}' package: pip install 'dspydantic[optimizers]' (or {module})"
            )
        if spec.dspy_class is None:
            stage.demo_budget = max((int(v) for v in spec.options(opts).values()), default=0)
            continue
        cls = dspy_class(stage.name)
        init_p, compile_p = params(cls.__init__), params(cls.compile)
        accepted |= init_p | compile_p
        init = spec.options(opts)
        stage.demo_budget = max((int(init[a]) for a in _DEMO_ATTRS if a in init), default=0)
        if opts.metric_threshold is not None and "metric_threshold" in init_p:
            init["metric_threshold"] = opts.metric_threshold
        comp: dict[str, Any] = {}
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
        theirs = sorted(accepted - {"self", "metric", "student", "trainset", "valset", "teacher"})
        raise ConfigurationError(
            f"unknown optimizer argument(s) {sorted(unknown)} for {plan.name!r}; "
            f"dspydantic itself takes {OptimizeOptions.names()}"
            + (f", and {plan.name} takes {theirs}" if theirs else "")
        )


# --------------------------------------------------------------------------------------------------
# compiling a DSPy stage
# --------------------------------------------------------------------------------------------------


def _holdout_split(trainset: list[Any], holdout: Callable[[int], int] | None) -> dict[str, Any]:
    if holdout is None:
        return {"trainset": trainset}
    cut = len(trainset) - holdout(len(trainset))
    return {"trainset": trainset[:cut], "valset": trainset[cut:]}


def compile_stage(
    stage: Stage,
    program: Any,
    trainset: list[Any],
    *,
    metric: Callable[..., Any],
    lm: Any,
    prompt_model: Any,
    num_threads: int,
    seed: int,
) -> Any:
    """Run a DSPy stage on ``program``: a named one from :data:`STAGES` (its defaults under the user's
    arguments), or the user's teleprompter instance (our metric and LM in place of its own)."""
    n = len(trainset)
    if stage.name == "custom":
        tp = stage.teleprompter
        for attr in ("metric", "metric_fn"):
            if hasattr(tp, attr):
                setattr(tp, attr, metric)
        for attr in ("task_model", "prompt_model"):
            if hasattr(tp, attr) and getattr(tp, attr) is None:
                setattr(tp, attr, lm)
        stage.live = tp
        accepts = params(tp.compile)
        kw = _holdout_split(trainset, (lambda k: max(1, k // 2)) if "valset" in accepts and n >= 4 else None)
        if "eval_kwargs" in accepts:
            kw["eval_kwargs"] = {"num_threads": num_threads, "display_progress": False}
        if "seed" in accepts:
            kw["seed"] = seed
        return tp.compile(program, **kw)
    spec = STAGES[stage.name]
    data = _holdout_split(trainset, spec.holdout)
    env = Env(num_threads=num_threads, seed=seed, n_train=n, n_dev=len(data.get("valset", ())))
    init = {**spec.init(env), **stage.init_kwargs}
    models = {"prompt_model": prompt_model, "task_model": lm}
    tp = dspy_class(stage.name)(metric=metric, **{m: models[m] for m in spec.models}, **init)
    stage.live = tp
    comp = {**spec.compile(env, stage.compile_kwargs), **stage.compile_kwargs}
    return tp.compile(program, **data, **comp)
