"""Prompt optimization: evaluators that score one extraction against its label, and the DSPy bridge.

``dspydantic.optimize.evaluators`` holds the evaluator classes and their registry;
``dspydantic.optimize.scoring`` compares a whole extraction with its label field by field;
``dspydantic.optimize.run`` is ``Prompter.optimize()`` (split, baseline, optimizer stages, honest
comparison), ``dspydantic.optimize.report`` what it and ``Prompter.evaluate()`` return,
``dspydantic.optimize.bridge`` the DSPy adapter and LM bridge and ``dspydantic.optimize.fields`` GEPA over
field descriptions and prompts. Nothing here imports DSPy until an optimization runs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EvaluationReport", "FailingExample", "OptimizationResult", "evaluate_prompter", "optimize_prompter"]


def __getattr__(name: str) -> Any:
    if name in ("EvaluationReport", "FailingExample", "OptimizationResult", "evaluate_prompter"):
        from . import report

        return getattr(report, name)
    if name == "optimize_prompter":
        from .run import optimize_prompter

        return optimize_prompter
    raise AttributeError(f"module 'dspydantic.optimize' has no attribute {name!r}")
