"""dspydantic 0.1's ``PydanticOptimizer``: the optimizer class that predates the Prompter, on ``Prompter.optimize``.

``PydanticOptimizer(model, examples, ...).optimize()`` builds a Prompter for ``model`` (its LM: ``lm=`` /
``model_id=`` when given, else the one configured with ``dspy.configure``, as 0.1 required, else the
embedded local model) and runs ``prompter.optimize(examples, ...)`` with the same arguments. The
optimized Prompter is ``optimizer.prompter`` afterwards (``Prompter.from_optimization_result(model,
result)`` builds one too, as in 0.1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from ._compat import warn_deprecated
from ._example import Example
from ._prompter import Prompter
from .errors import ConfigurationError
from .optimize.report import OptimizationResult

__all__ = ["PydanticOptimizer"]

# 0.1's defaults: an argument left at it is not passed on (so it raises no deprecation warning)
_LEGACY_DEFAULTS: dict[str, Any] = {
    "init_temperature": 1.0,
    "optimizer_kwargs": None,
    "compile_kwargs": None,
    "evaluator_config": None,
    "skip_score_threshold": None,
    "skip_field_description_optimization": False,
    "skip_system_prompt_optimization": False,
    "skip_instruction_prompt_optimization": False,
    "early_stopping_patience": None,
    "auto_generate_prompts": False,
}


class PydanticOptimizer:
    """dspydantic 0.1's optimizer class (deprecated: use ``Prompter(model=...).optimize(examples, ...)``)."""

    def __init__(
        self,
        model: type[BaseModel] | None,
        examples: Sequence[Example],
        evaluate_fn: Any = None,
        system_prompt: str | None = None,
        instruction_prompt: str | None = None,
        num_threads: int = 4,
        init_temperature: float = 1.0,
        verbose: bool = False,
        optimizer: Any = None,
        train_split: float = 0.8,
        optimizer_kwargs: dict[str, Any] | None = None,
        compile_kwargs: dict[str, Any] | None = None,
        exclude_fields: list[str] | None = None,
        include_fields: list[str] | None = None,
        evaluator_config: dict[str, Any] | None = None,
        sequential: bool = False,
        parallel_fields: bool = True,
        max_val_examples: int | None = None,
        skip_score_threshold: float | None = None,
        skip_field_description_optimization: bool = False,
        skip_system_prompt_optimization: bool = False,
        skip_instruction_prompt_optimization: bool = False,
        early_stopping_patience: int | None = None,
        auto_generate_prompts: bool = False,
        on_progress: Callable[[Any], None] | None = None,
        *,
        model_id: str | None = None,
        lm: Any = None,
        **prompter_kwargs: Any,
    ) -> None:
        warn_deprecated(
            "PydanticOptimizer",
            "use Prompter(model=..., system_prompt=..., instruction_prompt=...).optimize(examples, ...): the "
            "same arguments, and the Prompter then serves the result",
        )
        items = list(examples or [])
        if not items:
            raise ConfigurationError("at least one example must be provided")
        if model is None and not any(isinstance(ex.expected_output, str) for ex in items):
            raise ConfigurationError("model cannot be None unless the examples have string expected_output values")
        self.model = model
        self.examples = items
        self.system_prompt = system_prompt
        self.instruction_prompt = instruction_prompt
        self._prompter_kwargs = {"model_id": model_id, "lm": lm, **prompter_kwargs}
        legacy = {
            "init_temperature": init_temperature,
            "optimizer_kwargs": optimizer_kwargs,
            "compile_kwargs": compile_kwargs,
            "evaluator_config": evaluator_config,
            "skip_score_threshold": skip_score_threshold,
            "skip_field_description_optimization": skip_field_description_optimization,
            "skip_system_prompt_optimization": skip_system_prompt_optimization,
            "skip_instruction_prompt_optimization": skip_instruction_prompt_optimization,
            "early_stopping_patience": early_stopping_patience,
            "auto_generate_prompts": auto_generate_prompts,
        }
        self.optimize_kwargs: dict[str, Any] = {
            "evaluate_fn": evaluate_fn,
            "optimizer": optimizer if optimizer is not None else "auto",
            "num_threads": num_threads,
            "verbose": verbose,
            "train_split": train_split,
            "exclude_fields": exclude_fields,
            "include_fields": include_fields,
            "sequential": sequential,
            "parallel_fields": parallel_fields,
            "max_val_examples": max_val_examples,
            "on_progress": on_progress,
            **{k: v for k, v in legacy.items() if v != _LEGACY_DEFAULTS[k]},
        }
        self.prompter: Prompter | None = None

    def optimize(self) -> OptimizationResult:
        """Run ``Prompter.optimize`` and return its result (the optimized Prompter is ``self.prompter``)."""
        kwargs = {k: v for k, v in self._prompter_kwargs.items() if v is not None}
        self.prompter = Prompter(
            self.model, system_prompt=self.system_prompt, instruction_prompt=self.instruction_prompt, **kwargs
        )
        result: OptimizationResult = self.prompter.optimize(self.examples, **self.optimize_kwargs)
        return result
