"""dspydantic: structured extraction with LLMs into your own Pydantic models, with prompts DSPy optimizes.

    from dspydantic import Prompter, Example
    p = Prompter(model=Invoice, model_id="openai/gpt-4o-mini", cache=True)
    invoice = p.run("Invoice from Acme ...")
"""

from __future__ import annotations

from typing import Any

from ._example import Example
from ._prompter import Prompter
from ._render import Demo, PromptState
from ._result import ExtractionResult, Usage
from .errors import (
    BatchError,
    ConfigurationError,
    DspydanticError,
    ExtractionError,
    LMError,
    MissingExtraError,
    PersistenceError,
    SchemaDriftWarning,
)

__version__ = "0.2.0"

__all__ = [
    "BatchError",
    "ConfigurationError",
    "Demo",
    "DspydanticError",
    "Example",
    "ExtractionError",
    "ExtractionResult",
    "LMError",
    "MissingExtraError",
    "PersistenceError",
    "PromptState",
    "Prompter",
    "SchemaDriftWarning",
    "Usage",
    "__version__",
    "get_evaluator",
    "register_evaluator",
]


# names imported on first use: the evaluator registry pulls in optional machinery, and dspydantic 0.1's
# names (docs/migrating-from-0.1.md) live in modules at 0.1's paths
_LAZY = {
    "register_evaluator": ".optimize.evaluators",
    "get_evaluator": ".optimize.evaluators",
    "OptimizationResult": ".optimize.report",
    "EvaluationReport": ".optimize.report",
    # dspydantic 0.1
    "FieldOptimizationProgress": ".types",
    "PrompterState": ".types",
    "create_output_model": ".types",
    "PydanticOptimizer": ".optimizer",
    "extract_field_descriptions": ".extractor",
    "apply_optimized_descriptions": ".extractor",
    "create_optimized_model": ".extractor",
    "prepare_input_data": ".utils",
    "image_to_base64": ".utils",
    "pdf_to_base64_images": ".utils",
    "BaseEvaluator": ".evaluators.config",
    "EvaluatorFactory": ".evaluators.config",
    "EVALUATOR_REGISTRY": ".evaluators.config",
    "StringCheckEvaluator": ".evaluators",
    "LevenshteinEvaluator": ".evaluators",
    "TextSimilarityEvaluator": ".evaluators",
    "ScoreJudge": ".evaluators",
    "LabelModelGrader": ".evaluators",
    "PythonCodeEvaluator": ".evaluators",
    "PredefinedScoreEvaluator": ".evaluators",
    "OptimizeFieldDescription": ".module",
    "OptimizeSystemPrompt": ".module",
    "OptimizeInstructionPrompt": ".module",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dspydantic' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    if module != ".module":  # the deprecated signatures warn on every access
        globals()[name] = value
    return value
