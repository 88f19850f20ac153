"""Every option of ``Prompter.optimize()``: one frozen, validated :class:`OptimizeOptions`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._example import Example
from ..errors import ConfigurationError

__all__ = ["GEPA_PRESETS", "PROMPT_NAMES", "OptimizeOptions"]

#: GEPA's ``auto`` presets: full evaluations of the training split (at least 8 examples' worth)
GEPA_PRESETS = {"light": 6, "medium": 12, "heavy": 24}
#: the prompts GEPA may rewrite (``optimize_prompts``)
PROMPT_NAMES = ("system_prompt", "instruction_prompt")


def _positive_int(name: str, value: Any, *, optional: bool = False, zero: bool = False) -> None:
    if optional and value is None:
        return
    low = 0 if zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        what = "a non-negative int" if zero else "a positive int"
        raise ConfigurationError(f"{name} must be {what}{' or None' if optional else ''}, got {value!r}")


def _number(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number{' or None' if optional else ''}, got {value!r}")


@dataclass(frozen=True)
class OptimizeOptions:
    """The keywords of ``Prompter.optimize()`` (see :func:`~dspydantic.optimize.run.optimize_prompter`),
    checked when built: a wrong type or value raises :class:`ConfigurationError` before any LM call.

    * ``evaluator``: how a field is scored (``"exact"`` by default; any evaluator spec, see
      :mod:`dspydantic.optimize.evaluators`); ``evaluate_fn`` is an alias. Examples with
      ``expected_output=None`` are scored by an LLM judge.
    * ``optimizer``: ``"auto"`` (picked from the training-split size; the choice and why are in
      ``result.optimizer`` / ``result.optimizer_reason``), ``"gepa"`` (field descriptions and system /
      instruction prompts), ``"bootstrap"``, ``"hard_demos"`` (the labelled training examples the current
      prompts get most wrong, as plain demos), ``"nearest_demos"`` (alias ``"knn"``: the labelled training
      examples as a pool, each input shown the demo budget of them whose words are nearest its own, as DSPy's
      ``KNNFewShot`` does; no LM call, validation decides), ``"random_search"``, ``"miprov2"`` (needs optuna),
      ``"copro"``, ``"simba"`` (needs numpy), a list of those run in order (``"gepa+bootstrap"`` works too), or a DSPy
      teleprompter instance (our metric replaces its metric).
    * ``train_split``: fraction of the examples for training, the rest is the validation split;
      ``valset``: an explicit validation set (then every example is for training); ``max_val_examples``:
      cap on the validation split (it is scored twice: baseline and candidate).
    * ``include_fields`` / ``exclude_fields``: field paths that are scored (and optimized).
    * ``seed``: shuffles the split and seeds the optimizers; same seed + same cached answers -> same result.
    * ``num_threads``: concurrent extractions when scoring.
    * ``max_lm_calls`` / ``max_tokens``: hard budgets for the whole run.
    * ``on_progress``: called with an event dict at every step (see :mod:`.progress`); ``verbose``: log the
      steps and show a progress bar even when not on a terminal.
    * ``reflection_lm`` / ``prompt_model``: an LM for proposals instead of the Prompter's (each stands in for
      the other); ``reflection_temperature`` (1.0).
    * GEPA: ``sequential`` (field descriptions group by group, deepest fields first, then prompts, instead of
      all texts together), ``parallel_fields`` (a step rewrites every field that was wrong at once, one LM
      call, instead of one field per step), ``optimize_descriptions`` (True), ``optimize_prompts`` (True,
      False or a list of ``"system_prompt"`` / ``"instruction_prompt"``), ``max_metric_calls`` /
      ``max_full_evals`` / ``auto`` (its budget; "light" by default), ``reflection_minibatch_size`` (3),
      ``gepa_val_size`` (it compares candidates on this many training examples; 32).
    * Demos: ``max_bootstrapped_demos`` / ``max_labeled_demos`` (4 each), SIMBA's ``max_demos`` (4),
      ``metric_threshold`` (the score a bootstrapped demo needs; 1.0).
    * The decision: ``min_improvement`` (0), ``min_standard_errors`` (0: the candidate must also beat the
      baseline by this many standard errors of their example-by-example difference; the result reports that
      difference either way, ``result.difference``), ``fallback`` (what the Prompter serves when the candidate does
      not win: ``"original"`` -- its prompts as they were -- or ``"baseline"`` -- the baseline as scored, with
      the plain training demos it was given, if it scored above the original prompts), ``compare_original``
      (True: when the baseline has demos the original prompts lack, score the original prompts too, n_val
      more requests, and adopt a candidate only if it beats both; demos can hurt a small model),
      ``calibrate`` (True: fit the field-confidence calibrator on the validation outcomes).
    * ``choice_bias`` (True): on a backend that decodes with logits (the local model), the candidate also gets
      per-value biases for its enum and boolean fields, fitted on the training answers
      (:mod:`dspydantic.optimize.calibrate`; one more pass over the training split); other backends skip it.
    * ``field_typing`` (True): when the model has two or more nullable top-level string fields, the candidate
      also gets each such field's labelled values on the training split, and a value the answer puts in the
      wrong one of them is moved to the one it fits (:mod:`dspydantic._retype`; no LM call). Validation
      decides with the rest of the candidate.

    Keywords that are none of these fields are the chosen DSPy teleprompter's constructor or ``compile()``
    arguments (``teleprompter_kwargs``; they are matched to it when the stages are planned)."""

    # -- what is scored, and on what ----------------------------------------------------------------
    evaluator: Any = None
    optimizer: Any = "auto"
    train_split: float = 0.8
    valset: Sequence[Example] | None = None
    max_val_examples: int | None = None
    include_fields: Sequence[str] | None = None
    exclude_fields: Sequence[str] | None = None
    seed: int = 0
    num_threads: int = 4
    # -- budgets and progress ---------------------------------------------------------------------
    max_lm_calls: int | None = None
    max_tokens: int | None = None
    on_progress: Callable[[dict[str, Any]], None] | None = None
    verbose: bool = False
    # -- proposals (GEPA, MIPROv2, COPRO, SIMBA) ----------------------------------------------------
    reflection_lm: Any = None
    prompt_model: Any = None
    reflection_temperature: float = 1.0
    # -- GEPA over field descriptions and prompts ----------------------------------------------------
    sequential: bool = False
    parallel_fields: bool = True
    optimize_descriptions: bool = True
    optimize_prompts: bool | tuple[str, ...] = True
    max_metric_calls: int | None = None
    max_full_evals: int | None = None
    #: GEPA's preset ("light" / "medium" / "heavy"); also MIPROv2's ``auto`` (``None``: MIPROv2's manual mode)
    auto: str | None = "light"
    reflection_minibatch_size: int = 3
    gepa_val_size: int = 32
    # -- demos (BootstrapFewShot, its random search, MIPROv2; SIMBA's max_demos) -------------------
    max_bootstrapped_demos: int = 4
    max_labeled_demos: int = 4
    max_demos: int = 4
    metric_threshold: float | None = None
    # -- the decision and what follows it ------------------------------------------------------------
    min_improvement: float = 0.0
    min_standard_errors: float = 0.0
    fallback: str = "original"
    compare_original: bool = True
    calibrate: bool = True
    choice_bias: bool = True
    field_typing: bool = True
    #: every other keyword: the DSPy teleprompter's constructor or ``compile()`` arguments
    teleprompter_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def names(cls) -> list[str]:
        """The keywords dspydantic interprets itself (sorted)."""
        return sorted(f.name for f in dataclasses.fields(cls) if f.name != "teleprompter_kwargs")

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> OptimizeOptions:
        """Options from ``optimize()``'s keywords: ours by name (``evaluate_fn`` is ``evaluator``'s alias),
        the rest are the teleprompter's."""
        given = dict(kwargs)
        alias = given.pop("evaluate_fn", None)
        if alias is not None:
            if given.get("evaluator") is not None:
                raise ConfigurationError("pass evaluator or its alias evaluate_fn, not both")
            given["evaluator"] = alias
        own = set(cls.names())
        mine = {k: given.pop(k) for k in list(given) if k in own}
        return cls(**mine, teleprompter_kwargs=given)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        ts = self.train_split
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not 0 < ts < 1:
            raise ConfigurationError(f"train_split must be a number between 0 and 1 (exclusive), got {ts!r}")
        put("train_split", float(ts))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigurationError(f"seed must be an int, got {self.seed!r}")
        _positive_int("num_threads", self.num_threads)
        for name in ("max_lm_calls", "max_tokens", "max_val_examples", "max_metric_calls", "max_full_evals"):
            _positive_int(name, getattr(self, name), optional=True)
        for name in ("reflection_minibatch_size", "gepa_val_size"):
            _positive_int(name, getattr(self, name))
        for name in ("max_bootstrapped_demos", "max_labeled_demos", "max_demos"):
            _positive_int(name, getattr(self, name), zero=True)
        _number("reflection_temperature", self.reflection_temperature)
        _number("min_improvement", self.min_improvement)
        _number("min_standard_errors", self.min_standard_errors)
        if self.min_standard_errors < 0:
            raise ConfigurationError(f"min_standard_errors must be >= 0, got {self.min_standard_errors!r}")
        _number("metric_threshold", self.metric_threshold, optional=True)
        put("min_improvement", float(self.min_improvement))
        put("min_standard_errors", float(self.min_standard_errors))
        if self.auto is not None and self.auto not in GEPA_PRESETS:
            raise ConfigurationError(f"auto must be one of {sorted(GEPA_PRESETS)}, got {self.auto!r}")
        if self.fallback not in ("original", "baseline"):
            raise ConfigurationError(f"fallback must be 'original' or 'baseline', got {self.fallback!r}")
        which = self.optimize_prompts
        if not isinstance(which, bool):
            if not isinstance(which, (str, Sequence)):
                raise ConfigurationError(
                    f"optimize_prompts takes True, False or 'system_prompt' / 'instruction_prompt', got {which!r}"
                )
            names = (which,) if isinstance(which, str) else tuple(which)
            bad = [w for w in names if w not in PROMPT_NAMES]
            if bad:
                raise ConfigurationError(
                    f"optimize_prompts takes True, False or 'system_prompt' / 'instruction_prompt', got {bad}"
                )
            put("optimize_prompts", names)
        for name in ("sequential", "parallel_fields", "optimize_descriptions", "compare_original", "calibrate",
                     "choice_bias", "field_typing", "verbose"):
            put(name, bool(getattr(self, name)))
        for name in ("include_fields", "exclude_fields"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                put(name, tuple(value))
        if self.valset is not None:
            from .report import _check_examples

            put("valset", tuple(_check_examples(self.valset)))
        if self.on_progress is not None and not callable(self.on_progress):
            raise ConfigurationError(f"on_progress must be a callable, got {type(self.on_progress).__name__}")
        for name in ("reflection_lm", "prompt_model"):
            if getattr(self, name) is not None:
                from .gateway import external_target

                external_target(getattr(self, name))  # a ConfigurationError now for an unusable LM
        put("teleprompter_kwargs", dict(self.teleprompter_kwargs))

    @property
    def prompts(self) -> tuple[str, ...]:
        """The prompts GEPA may rewrite."""
        which = self.optimize_prompts
        if which is True:
            return PROMPT_NAMES
        if not which:
            return ()
        return tuple(p for p in PROMPT_NAMES if p in which)

    def proposal_lm(self, key: str = "reflection_lm") -> Any:
        """The user's LM for proposals of this kind (``reflection_lm`` and ``prompt_model`` stand in for
        each other), or ``None`` for the Prompter's own."""
        return getattr(self, key) or self.reflection_lm or self.prompt_model
