"""dspydantic 0.1's ``dspydantic.module``: the DSPy signatures it optimized texts with.

Nothing here is used any more: field descriptions and prompts are rewritten by GEPA's reflection
(:mod:`dspydantic.optimize.fields`) and DSPy's optimizers run on our renderer
(:mod:`dspydantic.optimize.bridge`). The names still import (with a ``DeprecationWarning``) and are DSPy
signatures with 0.1's field names, for code that called them directly. DSPy is imported on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OptimizeFieldDescription", "OptimizeInstructionPrompt", "OptimizeSystemPrompt"]  # noqa: F822 (lazy)

_FIELDS = {
    "OptimizeFieldDescription": (
        "Improve a field description so that it guides structured data extraction better; answer with "
        "the new description only.",
        {"field_description": "the current description", "field_type": "the field's data type"},
        {"optimized_field_description": "the improved description"},
    ),
    "OptimizeSystemPrompt": (
        "Improve a system prompt for structured data extraction; answer with the new prompt only.",
        {"system_prompt": "the current system prompt"},
        {"optimized_system_prompt": "the improved system prompt"},
    ),
    "OptimizeInstructionPrompt": (
        "Improve an instruction prompt for structured data extraction, keeping every {placeholder} as "
        "it is; answer with the new prompt only.",
        {"instruction_prompt": "the current instruction prompt"},
        {"optimized_instruction_prompt": "the improved instruction prompt"},
    ),
}
_BUILT: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    if name not in _FIELDS:
        raise AttributeError(f"module 'dspydantic.module' has no attribute {name!r}")
    from ._compat import warn_deprecated

    warn_deprecated(
        name,
        "dspydantic no longer optimizes with this signature: GEPA rewrites field descriptions and prompts "
        "(optimizer='gepa'; see dspydantic.optimize.fields)",
    )
    if name not in _BUILT:
        import dspy

        doc, inputs, outputs = _FIELDS[name]
        fields: dict[str, Any] = {k: (str, dspy.InputField(desc=d)) for k, d in inputs.items()}
        fields.update({k: (str, dspy.OutputField(desc=d)) for k, d in outputs.items()})
        _BUILT[name] = dspy.make_signature(fields, doc, signature_name=name)
    return _BUILT[name]
