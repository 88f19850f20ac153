"""The evaluator protocol: the base class every evaluator subclasses (``evaluate(extracted, expected, ...)``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = ["Evaluator", "InputData", "bool_option"]

#: the input a value was extracted from, handed to ``evaluate`` (e.g. ``{"text": ...}``), when known
InputData = dict[str, Any] | None


class Evaluator:
    """Base class: compares one extracted value with the expected one and returns a score in ``[0, 1]``.

    ``config`` holds the evaluator's options (a ``"lm"`` key is accepted as an alternative to the
    ``lm`` argument, as dspydantic 0.1 injected it there). ``lm`` is an :class:`LMBackend` (or a
    ``dspy.LM``) used by the LLM judges.

    Class attributes:

    * ``name`` — the registry name of the built-in class;
    * ``needs_expected`` — ``False`` for evaluators that can score a value without a label (judges,
      ``predefined_score``); :func:`dspydantic.optimize.scoring.score_output` then calls them even
      when the expected value is missing instead of scoring the field 0;
    * ``none_in_label_means_absent`` — only read when ``needs_expected`` is ``False``: if ``True``
      (the judges) a field that is ``None`` in an *existing* label means "should be empty", so a
      predicted value there scores 0 without a call, and the evaluator is called on such fields only
      for outputs that have no label at all; ``predefined_score`` sets it ``False`` (its field is
      never in the label).
    """

    name: ClassVar[str] = ""
    needs_expected: bool = True
    none_in_label_means_absent: bool = True

    def __init__(self, config: dict[str, Any] | None = None, lm: Any = None) -> None:
        raw = dict(config or {})
        self.lm: Any = lm if lm is not None else raw.get("lm")
        self.config: dict[str, Any] = {k: v for k, v in raw.items() if k != "lm"}

    def evaluate(
        self, extracted: Any, expected: Any, input_data: InputData = None, field_path: str | None = None
    ) -> float:
        """Score ``extracted`` against ``expected``: 1.0 is a perfect match, 0.0 a complete miss."""
        raise NotImplementedError

    def __call__(
        self, extracted: Any, expected: Any, input_data: InputData = None, field_path: str | None = None
    ) -> float:
        return self.evaluate(extracted, expected, input_data=input_data, field_path=field_path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(config={self.config!r})"



def bool_option(config: Mapping[str, Any], *names: str, default: bool) -> bool:
    for name in names:
        if name in config:
            return bool(config[name])
    return default

