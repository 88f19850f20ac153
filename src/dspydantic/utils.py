"""dspydantic 0.1's ``dspydantic.utils``: its input helpers, on our input builder.

A Prompter takes inputs directly (``run(text, image_path=..., pdf_path=..., pdf_dpi=...)``); these
helpers are for code that prepared 0.1's ``input_data`` dicts itself. Images are base64 of the file's own
bytes (0.1 re-encoded them as PNG); PDF pages are rendered with pypdfium2 (``dspydantic[pdf]``; 0.1 used
pdf2image and poppler).
"""

from __future__ import annotations

import os
from typing import Any

from ._inputs import build_input
from .errors import ConfigurationError

__all__ = ["image_to_base64", "pdf_to_base64_images", "prepare_input_data"]


def _images(**inputs: Any) -> list[str]:
    doc = build_input(**inputs)
    return [p["image_url"]["url"].partition(",")[2] for p in doc.parts if p.get("type") == "image_url"]


def image_to_base64(image_path: str | os.PathLike[str]) -> str:
    """The image file as base64 (no ``data:`` prefix); a missing file raises ``FileNotFoundError`` (which is
    also our :class:`~dspydantic.errors.ConfigurationError`)."""
    return _images(image_path=image_path)[0]


def pdf_to_base64_images(pdf_path: str | os.PathLike[str], dpi: int = 300) -> list[str]:
    """Every page of the PDF rendered to a PNG at ``dpi``, as base64 strings."""
    return _images(pdf_path=pdf_path, pdf_mode="images", pdf_dpi=dpi)


def prepare_input_data(
    text: str | None = None,
    image_path: str | os.PathLike[str] | None = None,
    image_base64: str | None = None,
    pdf_path: str | os.PathLike[str] | None = None,
    pdf_dpi: int = 300,
) -> dict[str, Any]:
    """0.1's ``input_data``: ``{"text": ...}`` and/or ``{"images": [base64, ...]}`` (PDF pages as images)."""
    result: dict[str, Any] = {}
    if text is not None:
        result["text"] = text
    images: list[str] = []
    if image_path is not None:
        images.append(image_to_base64(image_path))
    if image_base64 is not None:
        images.append(image_base64)
    if pdf_path is not None:
        images.extend(pdf_to_base64_images(pdf_path, dpi=pdf_dpi))
    if images:
        result["images"] = images
    if not result:
        raise ConfigurationError("at least one input must be provided: text, image_path, image_base64 or pdf_path")
    return result
