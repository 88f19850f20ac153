"""dspydantic 0.1's evaluator registry module (``dspydantic.evaluators.config``), on our registry.

``BaseEvaluator`` is :class:`~dspydantic.optimize.evaluators.Evaluator` (subclass it, or write any class
with ``evaluate(extracted, expected, input_data=None, field_path=None)``); ``EvaluatorFactory.create``
is :func:`~dspydantic.optimize.evaluators.get_evaluator`.
"""

from __future__ import annotations

from typing import Any

from ..optimize.evaluators import EVALUATOR_REGISTRY, Evaluator, get_evaluator, register_evaluator

__all__ = [
    "EVALUATOR_REGISTRY",
    "BaseEvaluator",
    "EvaluatorConfig",
    "EvaluatorConfigValue",
    "EvaluatorFactory",
    "register_evaluator",
]

BaseEvaluator = Evaluator
#: a registered name, ``{"type": name, "config": {...}}``, ``{"class": cls, "config": {...}}`` or a class
EvaluatorConfigValue = Any
#: ``{"default": EvaluatorConfigValue, "field_overrides": {path: EvaluatorConfigValue}}``
EvaluatorConfig = dict[str, Any]


class EvaluatorFactory:
    """0.1's factory: builds an evaluator from a name, a spec dict or a class."""

    @staticmethod
    def create(config: EvaluatorConfigValue, default_lm: Any = None) -> Evaluator:
        """An evaluator instance (``default_lm`` goes to the LLM judges unless the config has its own)."""
        return get_evaluator(config, lm=default_lm)

    @staticmethod
    def parse_evaluator_config(config: EvaluatorConfigValue, default_lm: Any = None) -> tuple[Any, dict[str, Any]]:
        """``(name or class, config dict)`` of a spec, with ``default_lm`` put in the config as ``"lm"``."""
        if isinstance(config, (str, type)):
            return config, {}
        if isinstance(config, dict) and ("class" in config or "type" in config):
            settings = dict(config.get("config") or {})
            if default_lm is not None and "lm" not in settings:
                settings["lm"] = default_lm
            return config.get("class", config.get("type")), settings
        from ..errors import ConfigurationError

        raise ConfigurationError(f"invalid evaluator config: {config!r}")
