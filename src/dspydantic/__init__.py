"""dspydantic: structured extraction with LLMs into your own Pydantic models, with prompts DSPy optimizes.

    from dspydantic import Prompter, Example
    p = Prompter(model=Invoice, model_id="openai/gpt-4o-mini", cache=True)
    invoice = p.run("Invoice from Acme ...")
"""

from __future__ import annotations

from typing import Any

from ._example import Example
from ._prompter import Prompter
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
    "DspydanticError",
    "Example",
    "ExtractionError",
    "ExtractionResult",
    "LMError",
    "MissingExtraError",
    "PersistenceError",
    "Prompter",
    "SchemaDriftWarning",
    "Usage",
    "__version__",
    "get_evaluator",
    "register_evaluator",
]


def __getattr__(name: str) -> Any:
    # the evaluator registry pulls in optional machinery: import it on first use only
    if name in ("register_evaluator", "get_evaluator"):
        from .optimize import evaluators

        return getattr(evaluators, name)
    raise AttributeError(f"module 'dspydantic' has no attribute {name!r}")
