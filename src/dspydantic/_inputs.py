"""Normalise what the user wants extracted from (text, template variables, images, PDFs).

Everything ends up as an :class:`InputDoc`: a tuple of OpenAI content parts plus the plain text, a kind
and a stable fingerprint. Heavy libraries (``pypdf``, ``pypdfium2``, ``PIL``) are imported lazily, only
when an input of that kind is given.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, Unpack

from dspydantic._media import decode_base64, image_from_bytes, image_part, pil_to_png, text_part
from dspydantic._pdf import DEFAULT_PDF_DPI, PdfMode, pdf_parts
from dspydantic._template import render_variables
from dspydantic.errors import ConfigurationError

__all__ = [
    "INPUT_KEYS",
    "INPUT_OPTIONS",
    "InputDoc",
    "InputFileNotFoundError",
    "InputKeywords",
    "InputOptions",
    "PdfMode",
    "build_input",
    "check_input_options",
    "input_keywords",
]

class InputOptions(TypedDict, total=False):
    """The input keywords besides ``text``: the one spec shared by :func:`build_input`, ``Example``,
    ``Prompter.run/predict*`` and the batch verbs (a dict input made only of these keys)."""

    image_path: str | os.PathLike[str] | None
    image_base64: str | bytes | None
    image_bytes: bytes | bytearray | memoryview | None
    image: Any
    image_mime: str | None
    pdf_path: str | os.PathLike[str] | None
    pdf_bytes: bytes | bytearray | memoryview | None
    pdf_mode: PdfMode
    pdf_dpi: int
    max_pdf_pages: int | None


class InputKeywords(InputOptions, total=False):
    """Every input keyword: ``text`` (a string, or a mapping of template variables) and :class:`InputOptions`."""

    text: str | Mapping[str, Any] | None


#: the input keywords besides ``text``
INPUT_OPTIONS: frozenset[str] = frozenset(InputOptions.__annotations__)
#: every input keyword (``text`` and :data:`INPUT_OPTIONS`)
INPUT_KEYS: frozenset[str] = INPUT_OPTIONS | {"text"}
#: the keywords that carry a document (the others only say how to read one)
SOURCE_KEYS: frozenset[str] = frozenset(
    {"text", "image_path", "image_base64", "image_bytes", "image", "pdf_path", "pdf_bytes"}
)


def check_input_options(options: Mapping[str, Any]) -> None:
    """Validate input keywords without reading anything: unknown names and bad option values raise
    :class:`ConfigurationError` (the same checks :func:`build_input` makes, so an ``Example`` fails when
    it is built, not when it is first used)."""
    unknown = set(options) - INPUT_KEYS
    if unknown:
        raise ConfigurationError(
            f"unknown input argument(s) {sorted(unknown)}; the input keywords are {sorted(INPUT_KEYS)}"
        )
    pdf_mode = options.get("pdf_mode", "auto")
    if pdf_mode not in ("auto", "text", "images"):
        raise ConfigurationError(f"pdf_mode must be 'auto', 'text' or 'images', got {pdf_mode!r}")
    pdf_dpi = options.get("pdf_dpi", DEFAULT_PDF_DPI)
    if isinstance(pdf_dpi, bool) or not isinstance(pdf_dpi, int) or not 18 <= pdf_dpi <= 1200:
        raise ConfigurationError(f"pdf_dpi must be an int between 18 and 1200, got {pdf_dpi!r}")
    max_pdf_pages = options.get("max_pdf_pages")
    if max_pdf_pages is not None and (
        isinstance(max_pdf_pages, bool) or not isinstance(max_pdf_pages, int) or max_pdf_pages < 1
    ):
        raise ConfigurationError(f"max_pdf_pages must be a positive int or None, got {max_pdf_pages!r}")
    image_mime = options.get("image_mime")
    if image_mime is not None and not isinstance(image_mime, str):
        raise ConfigurationError(f"image_mime must be a MIME type string such as 'image/png', got {image_mime!r}")
    if options.get("pdf_path") is not None and options.get("pdf_bytes") is not None:
        raise ConfigurationError("pass either pdf_path or pdf_bytes, not both")


def input_keywords(item: Any) -> dict[str, Any]:
    """The input keywords one *input* stands for: the one rule for a verb's positional argument
    (``run(input)``, ``predict*``, ``apredict*``) and for every item of ``predict_batch`` / ``apredict_batch``.

    - a ``str`` is the text: ``{"text": item}``;
    - a mapping whose keys are all input keywords (:data:`INPUT_KEYS`: ``text``, ``image_path``,
      ``pdf_path``, ``pdf_dpi``, ...) *is* those keywords: ``{"text": "..."}`` is that text,
      ``{"pdf_path": "a.pdf", "pdf_dpi": 300}`` that PDF;
    - any other mapping is template variables: ``{"text": item}`` (to use template variables whose names
      are all input keywords, pass them as the text: ``{"text": {"text": ...}}`` or ``text={...}``).

    ``text=`` given by name (to a verb, ``Example`` or :func:`build_input`) is never reinterpreted: a
    mapping there is always template variables. Anything else raises :class:`ConfigurationError`.
    """
    if isinstance(item, str):
        return {"text": item}
    if isinstance(item, Mapping):
        if all(isinstance(k, str) and k in INPUT_KEYS for k in item):
            return dict(item)
        return {"text": dict(item)}
    raise ConfigurationError(
        f"an input must be a str, a dict (input keywords or template variables) or an Example, "
        f"got {type(item).__name__}"
    )


class InputFileNotFoundError(ConfigurationError, FileNotFoundError):
    """An input file (image or PDF) does not exist: a :class:`ConfigurationError` (a ``ValueError``) that
    ``except FileNotFoundError`` also catches, as dspydantic 0.1 raised ``FileNotFoundError`` there."""

# --------------------------------------------------------------------------------------------------
# the document


@dataclass(frozen=True)
class InputDoc:
    """One normalised input.

    ``parts`` are OpenAI content parts (``{"type": "text", "text": ...}`` and
    ``{"type": "image_url", "image_url": {"url": "data:<mime>;base64,..."}}``) in prompt order.
    ``text`` is the document's textual content (user text, rendered template variables, the PDF text
    layer with its page markers) joined with blank lines; the ``--- page N ---`` labels placed before
    the page images of a fully rendered PDF are not part of it.
    ``kind`` is ``"text"``, ``"template"``, ``"image"``, ``"pdf"`` or ``"mixed"``.
    ``fingerprint`` is a sha256 hex digest over the parts (stable across processes), computed lazily.
    ``variables`` holds the template variables when ``text`` was given as a mapping.
    """

    parts: tuple[dict[str, Any], ...]
    text: str
    kind: str
    variables: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Computed on first use only: an extraction without a cache never hashes its document."""
        return _fingerprint(self.parts)

    @property
    def has_images(self) -> bool:
        return any(p.get("type") == "image_url" for p in self.parts)

    @property
    def image_count(self) -> int:
        return sum(1 for p in self.parts if p.get("type") == "image_url")

    def as_content(self) -> str | list[dict[str, Any]]:
        """The message content: a plain string when the document is text-only, else a parts list (a copy)."""
        if not self.has_images:
            return self.text
        return [copy.deepcopy(p) for p in self.parts]


def _fingerprint(parts: tuple[dict[str, Any], ...]) -> str:
    payload = json.dumps(list(parts), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------
# files


def _read_file(path: str | os.PathLike[str], what: str) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError as exc:
        raise InputFileNotFoundError(f"{what} not found: {str(p)!r}") from exc
    except IsADirectoryError as exc:
        raise ConfigurationError(f"{what} is a directory, not a file: {str(p)!r}") from exc
    except OSError as exc:
        raise ConfigurationError(f"could not read {what} {str(p)!r}: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# the builder


def build_input(text: str | Mapping[str, Any] | None = None, **options: Unpack[InputOptions]) -> InputDoc:
    """Normalise the inputs of one extraction into an :class:`InputDoc`.

    ``text`` is the document, or a mapping of template variables (rendered as ``key: value`` lines).
    Images may be given by ``image_path``, ``image_base64`` (with or without a ``data:`` prefix),
    ``image_bytes`` or as a PIL ``image``; the MIME type comes from the magic bytes (``image_mime`` only
    for formats that are not recognised). PDFs (``pdf_path`` or ``pdf_bytes``): ``pdf_mode="auto"`` uses
    the text layer when it averages at least :data:`dspydantic._pdf.MIN_TEXT_CHARS_PER_PAGE` visible characters per page
    (also rendering the pages of it that look scanned: an image and almost no text), else renders every
    page to PNG at ``pdf_dpi`` (default 144); ``"text"`` / ``"images"`` force one. Encrypted (with a user
    password) or corrupt PDFs raise :class:`ConfigurationError`; missing pypdf/pypdfium2 raise
    :class:`MissingExtraError`. ``max_pdf_pages`` keeps only the first pages (with a warning). Parts are
    ordered: text, PDF, images. The keywords are :class:`InputOptions` (checked by
    :func:`check_input_options`).
    """
    if not options and type(text) is str and text.strip():  # the common case (every text batch item): as below
        return InputDoc(parts=(text_part(text),), text=text, kind="text", variables=None)
    check_input_options(options)
    image_path = options.get("image_path")
    image_base64 = options.get("image_base64")
    image_bytes = options.get("image_bytes")
    image = options.get("image")
    image_mime = options.get("image_mime")
    pdf_path = options.get("pdf_path")
    pdf_bytes = options.get("pdf_bytes")
    pdf_mode: PdfMode = options.get("pdf_mode", "auto")
    pdf_dpi = options.get("pdf_dpi", DEFAULT_PDF_DPI)
    max_pdf_pages = options.get("max_pdf_pages")

    parts: list[dict[str, Any]] = []
    texts: list[str] = []
    kinds: list[str] = []
    variables: Mapping[str, Any] | None = None

    # text / template variables
    if text is not None:
        if isinstance(text, Mapping):
            if not text:
                raise ConfigurationError("nothing to extract from: the template variables mapping is empty")
            variables = dict(text)
            rendered = render_variables(variables)
            parts.append(text_part(rendered))
            texts.append(rendered)
            kinds.append("template")
        elif isinstance(text, str):
            if text.strip():
                parts.append(text_part(text))
                texts.append(text)
                kinds.append("text")
        else:
            raise ConfigurationError(
                f"text must be a string or a mapping of template variables, got {type(text).__name__}"
            )

    # PDF
    pdf_data: bytes | None = None
    pdf_source = "the PDF"
    if pdf_path is not None:
        pdf_data = _read_file(pdf_path, "PDF file")
        pdf_source = f"PDF {str(pdf_path)!r}"
    elif pdf_bytes is not None:
        if not isinstance(pdf_bytes, bytes | bytearray | memoryview):
            raise ConfigurationError(f"pdf_bytes must be bytes, got {type(pdf_bytes).__name__}")
        pdf_data = bytes(pdf_bytes)
        pdf_source = "pdf_bytes"
    if pdf_data is not None:
        pdf_content, pdf_text = pdf_parts(
            pdf_data, mode=pdf_mode, dpi=pdf_dpi, max_pages=max_pdf_pages, source=pdf_source
        )
        parts.extend(pdf_content)
        if pdf_text:
            texts.append(pdf_text)
        kinds.append("pdf")

    # images
    images: list[tuple[bytes, str]] = []
    if image_path is not None:
        data = _read_file(image_path, "image file")
        images.append(image_from_bytes(data, image_mime, f"image file {str(image_path)!r}"))
    if image_base64 is not None:
        data, url_mime = decode_base64(image_base64)
        images.append(image_from_bytes(data, image_mime or url_mime, "image_base64"))
    if image_bytes is not None:
        if not isinstance(image_bytes, bytes | bytearray | memoryview):
            raise ConfigurationError(f"image_bytes must be bytes, got {type(image_bytes).__name__}")
        images.append(image_from_bytes(bytes(image_bytes), image_mime, "image_bytes"))
    if image is not None:
        images.append((pil_to_png(image), "image/png"))
    for data, mime in images:
        parts.append(image_part(data, mime))
        kinds.append("image")

    if not parts:
        if isinstance(text, str):
            raise ConfigurationError("nothing to extract from: the text is empty or whitespace-only")
        raise ConfigurationError("nothing to extract from: pass text, template variables, an image or a PDF")

    kind = kinds[0] if len(set(kinds)) == 1 else "mixed"
    frozen_parts = tuple(parts)
    return InputDoc(
        parts=frozen_parts,
        text="\n\n".join(texts),
        kind=kind,
        variables=variables,
    )
