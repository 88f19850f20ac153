"""Prompt optimization: ``Prompter.optimize()`` and ``Prompter.evaluate()``, and the evaluators they score with.

The modules, from the entry point down (nothing here imports DSPy until an optimization runs):

* ``run`` -- ``optimize_prompter``, the entry point, top to bottom; ``options`` -- :class:`OptimizeOptions`,
  every keyword, validated; ``split`` -- training / validation split and the baseline's demos;
  ``stages`` -- the table of optimizer stages and how one compiles; ``runner`` -- one run's LM doors,
  validation scoring and stages; ``decision`` -- accept or reject, a pure function of scores;
  ``result`` -- :class:`OptimizationResult`; ``progress`` / ``_quiet`` -- events and silenced DSPy output;
  ``_compat`` -- dspydantic 0.1's ``optimize()`` arguments.
* ``fields`` -- GEPA over field descriptions and prompts, ``components`` -- its candidates;
  ``bridge`` -- the DSPy face (a ``dspy.LM`` over the gateway, the renderer as an adapter);
  ``gateway`` -- the budgeted door every request of a run goes through; ``documents`` -- the documents
  DSPy carries as strings.
* ``report`` -- scoring a prompter on examples and :class:`EvaluationReport`; ``scoring`` -- one output
  against its label, field by field; ``field_evaluators`` -- which evaluator scores which field;
  ``assignment`` -- matching list items; ``evaluators`` -- the evaluator registry (classes in
  ``evaluator_base``, ``matching``, ``judges``); ``values`` -- normalisation and type-aware equality.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "EvaluationReport",
    "FailingExample",
    "OptimizationResult",
    "OptimizeOptions",
    "evaluate_prompter",
    "optimize_prompter",
]


def __getattr__(name: str) -> Any:
    if name in ("EvaluationReport", "FailingExample", "OptimizationResult", "evaluate_prompter"):
        from . import report

        return getattr(report, name)
    if name == "OptimizeOptions":
        from .options import OptimizeOptions

        return OptimizeOptions
    if name == "optimize_prompter":
        from .run import optimize_prompter

        return optimize_prompter
    raise AttributeError(f"module 'dspydantic.optimize' has no attribute {name!r}")
