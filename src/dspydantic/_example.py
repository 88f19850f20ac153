"""``Example``: one labelled (or unlabelled) input for optimization and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from .errors import ConfigurationError

INPUT_KEYS = frozenset(
    {"text", "image_path", "image_base64", "image_bytes", "image", "pdf_path", "pdf_bytes", "pdf_mode"}
)


@dataclass(init=False, slots=True)
class Example:
    """An input and, optionally, the output expected from it.

    ``expected_output`` may be a dict, an instance of the model, a string (free-text mode, compared to
    ``{"output": s}``) or ``None`` (unlabelled: scored by an LLM judge). ``text`` may be a string or a dict
    of template variables. The reference design's positional order ``Example(expected_output, text)`` is
    still accepted.
    """

    text: str | dict[str, Any] | None
    expected_output: dict[str, Any] | BaseModel | str | None
    image_path: str | None
    image_base64: str | None
    pdf_path: str | None

    def __init__(
        self,
        text: str | dict[str, Any] | BaseModel | None = None,
        expected_output: dict[str, Any] | BaseModel | str | None = None,
        *,
        image_path: str | None = None,
        image_base64: str | None = None,
        pdf_path: str | None = None,
    ) -> None:
        # Example({"vendor": ...}, "Invoice from ...") -- the reference design's order
        if isinstance(expected_output, str) and isinstance(text, (dict, BaseModel)):
            text, expected_output = expected_output, text
        if isinstance(text, BaseModel):
            raise ConfigurationError("Example text must be a string or a dict of template variables")
        self.text = text
        self.expected_output = expected_output
        self.image_path = image_path
        self.image_base64 = image_base64
        self.pdf_path = pdf_path
        if text is None and image_path is None and image_base64 is None and pdf_path is None:
            raise ConfigurationError("an Example needs an input: text, image_path, image_base64 or pdf_path")

    def input_kwargs(self) -> dict[str, Any]:
        """The keyword arguments ``Prompter.predict`` takes for this example's input."""
        kw: dict[str, Any] = {}
        for key in ("text", "image_path", "image_base64", "pdf_path"):
            value = getattr(self, key)
            if value is not None:
                kw[key] = value
        return kw

    def expected_dict(self) -> dict[str, Any] | None:
        """The label as a JSON-safe dict (``None`` when unlabelled)."""
        exp = self.expected_output
        if exp is None:
            return None
        if isinstance(exp, BaseModel):
            return exp.model_dump(mode="json")
        if isinstance(exp, str):
            return {"output": exp}
        from pydantic_core import to_jsonable_python

        return dict(to_jsonable_python(exp))
