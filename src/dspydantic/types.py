"""dspydantic 0.1's ``dspydantic.types``: the data types of that version, at that path.

``Example`` and ``OptimizationResult`` are ours (a superset of 0.1's attributes);
:class:`FieldOptimizationProgress` is what ``on_progress`` callbacks receive; :class:`PrompterState` is
0.1's serialisable state, used by :mod:`dspydantic.persistence`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ._example import Example
from .optimize._compat import FieldOptimizationProgress
from .optimize.report import OptimizationResult

__all__ = ["Example", "FieldOptimizationProgress", "OptimizationResult", "PrompterState", "create_output_model"]


@dataclass
class PrompterState:
    """dspydantic 0.1's saved state of a Prompter (see :func:`dspydantic.persistence.save_prompter_state`).

    ``optimized_descriptions`` is keyed by field path; ``optimized_demos`` uses 0.1's demo shape
    (``{"input_data": {"text": ...}, "expected_output": {...}}``). ``model_config`` never holds a key:
    an ``api_key`` in it is not written to disk.
    """

    model_schema: dict[str, Any]
    optimized_descriptions: dict[str, str]
    optimized_system_prompt: str | None
    optimized_instruction_prompt: str | None
    model_id: str
    model_config: dict[str, Any]
    version: str
    metadata: dict[str, Any]
    optimized_demos: list[dict[str, Any]] | None = field(default=None)


def create_output_model() -> type[BaseModel]:
    """The single-field model of free-text mode (one ``output: str`` field), as ``Prompter()`` without a
    model uses it; 0.1 called its class ``OutputModel``, ours is ``Output``."""
    from ._schema import free_text_model

    return free_text_model()
