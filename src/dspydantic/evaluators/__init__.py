"""The evaluator classes at dspydantic 0.1's module path (``import dspydantic.evaluators``).

A thin re-export of :mod:`dspydantic.optimize.evaluators`, where they live; ``dspydantic.evaluators.config``
holds 0.1's registry names (``BaseEvaluator``, ``EvaluatorFactory``, ``EVALUATOR_REGISTRY``).
"""

from __future__ import annotations

from ..optimize.evaluators import (
    EVALUATOR_REGISTRY,
    Evaluator,
    LabelModelGrader,
    LevenshteinEvaluator,
    PredefinedScoreEvaluator,
    PythonCodeEvaluator,
    ScoreJudge,
    StringCheckEvaluator,
    TextSimilarityEvaluator,
    available_evaluators,
    get_evaluator,
    register_evaluator,
)

__all__ = [
    "EVALUATOR_REGISTRY",
    "Evaluator",
    "LabelModelGrader",
    "LevenshteinEvaluator",
    "PredefinedScoreEvaluator",
    "PythonCodeEvaluator",
    "ScoreJudge",
    "StringCheckEvaluator",
    "TextSimilarityEvaluator",
    "available_evaluators",
    "get_evaluator",
    "register_evaluator",
]
