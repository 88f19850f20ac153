"""dspydantic 0.1's ``dspydantic.prompter``: :class:`Prompter` and :class:`ExtractionResult` at that path."""

from __future__ import annotations

from ._prompter import Prompter
from ._result import ExtractionResult

__all__ = ["ExtractionResult", "Prompter"]
