"""PDFs -> content parts: the text layer with pypdf, page images with pypdfium2 (PNG through Pillow).

``pdf_mode="auto"`` uses the text layer when it averages at least :data:`MIN_TEXT_CHARS_PER_PAGE` visible
characters per page (and renders the pages of it that look scanned), else renders every page; ``"text"`` /
``"images"`` force one. All three libraries are the ``[pdf]`` extra, imported only when a PDF is read.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from dspydantic._media import image_part, pil_to_png, text_part
from dspydantic.errors import ConfigurationError, MissingExtraError

__all__ = ["DEFAULT_PDF_DPI", "MIN_SCAN_PAGE_CHARS", "MIN_TEXT_CHARS_PER_PAGE", "PdfMode", "pdf_parts"]

PdfMode = Literal["auto", "text", "images"]

DEFAULT_PDF_DPI = 144

#: average number of non-space characters per page above which ``pdf_mode="auto"`` trusts the text layer
MIN_TEXT_CHARS_PER_PAGE = 20

#: in a PDF with a text layer, a page with fewer visible characters that draws an image is a scan
MIN_SCAN_PAGE_CHARS = 5

_PAGE_MARKER = "\n\n--- page {n} ---\n\n"

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")


def _clean_page_text(text: str) -> str:
    return _CONTROL.sub("", text).rstrip()


def _meaningful_chars(text: str) -> int:
    return sum(1 for c in text if not c.isspace() and c.isprintable())


def _check_pdf_bytes(data: bytes, source: str) -> None:
    if not data:
        raise ConfigurationError(f"{source} is empty")
    if b"%PDF-" not in data[:1024]:
        raise ConfigurationError(f"{source} is not a PDF (no %PDF- header)")


class _UnreadablePdfError(ConfigurationError):
    """pypdf could not parse the file (``auto`` mode then tries pypdfium2, which is more lenient)."""


@dataclass(frozen=True)
class _TextLayer:
    texts: list[str]  # cleaned text of each used page
    has_images: list[bool]  # whether each used page draws an image (a scanned page does)
    total_pages: int


def _pdf_text_layer(data: bytes, max_pages: int | None, source: str) -> _TextLayer:
    """Text layer of each page (up to ``max_pages``) with pypdf, and the document's total page count."""
    try:
        import pypdf
        from pypdf.errors import PyPdfError
    except ImportError as exc:
        raise MissingExtraError("pdf", "pypdf") from exc
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")
            except (PyPdfError, NotImplementedError) as exc:
                raise ConfigurationError(f"{source} is encrypted and could not be opened: {exc}") from exc
            if ok == pypdf.PasswordType.NOT_DECRYPTED:
                raise ConfigurationError(f"{source} is password-protected; decrypt it before extraction")
        total = len(reader.pages)
        count = total if max_pages is None else min(total, max_pages)
        texts: list[str] = []
        has_images: list[bool] = []
        for i in range(count):
            page = reader.pages[i]
            texts.append(_clean_page_text(page.extract_text() or ""))
            try:
                has_images.append(len(page.images) > 0)
            except Exception:  # image enumeration is best-effort; assume a drawn page
                has_images.append(True)
    except ConfigurationError:
        raise
    except Exception as exc:  # pypdf raises a wide range of errors on malformed files
        raise _UnreadablePdfError(f"{source} could not be read (corrupt PDF?): {type(exc).__name__}: {exc}") from exc
    return _TextLayer(texts=texts, has_images=has_images, total_pages=total)


def _pdf_page_images(
    data: bytes, max_pages: int | None, dpi: int, source: str, only: set[int] | None = None
) -> tuple[dict[int, bytes], int]:
    """Render pages (the first ``max_pages``, or just the indices in ``only``) with pypdfium2, to PNG with
    Pillow.

    Returns ``{page index: png bytes}`` and the document's total page count.
    """
    try:
        import pypdfium2 as pdfium
    except ImportError as exc:
        raise MissingExtraError("pdf", "pypdfium2") from exc
    try:
        doc = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        msg = str(exc)
        if "password" in msg.lower():
            raise ConfigurationError(f"{source} is password-protected; decrypt it before extraction") from exc
        raise ConfigurationError(f"{source} could not be opened (corrupt PDF?): {msg}") from exc
    images: dict[int, bytes] = {}
    try:
        total = len(doc)
        count = total if max_pages is None else min(total, max_pages)
        for i in range(count):
            if only is not None and i not in only:
                continue
            page = doc[i]
            try:
                bitmap = page.render(scale=dpi / 72.0)
                try:
                    images[i] = pil_to_png(bitmap.to_pil())  # the PIL image shares the bitmap's buffer
                except ImportError as exc:
                    raise MissingExtraError("pdf", "pillow") from exc
                finally:
                    bitmap.close()
            finally:
                page.close()
    except pdfium.PdfiumError as exc:
        raise ConfigurationError(f"{source} could not be rendered (corrupt PDF?): {exc}") from exc
    finally:
        doc.close()
    return images, total


def pdf_parts(
    data: bytes, *, mode: PdfMode, dpi: int, max_pages: int | None, source: str
) -> tuple[list[dict[str, Any]], str]:
    """Content parts and text for a PDF.

    ``auto``: when the text layer averages at least ``MIN_TEXT_CHARS_PER_PAGE`` visible characters per
    page it is used, and pages that draw an image but have (almost) no text -- scans inside an
    otherwise digital document -- are rendered and placed after their page marker; otherwise every
    page is rendered. If pypdf cannot parse the file, ``auto`` falls back to rendering.
    """
    _check_pdf_bytes(data, source)
    if mode in ("auto", "text"):
        try:
            layer: _TextLayer | None = _pdf_text_layer(data, max_pages, source)
        except _UnreadablePdfError:
            if mode == "text":
                raise
            layer = None  # let pdfium try; it raises its own ConfigurationError if it cannot either
        if layer is not None:
            if layer.total_pages == 0:
                raise ConfigurationError(f"{source} has no pages")
            counts = [_meaningful_chars(t) for t in layer.texts]
            if mode == "text" and sum(counts) == 0:
                raise ConfigurationError(f"{source} has no text layer (a scan?); use pdf_mode='images' or 'auto'")
            if mode == "text" or sum(counts) >= MIN_TEXT_CHARS_PER_PAGE * len(counts):
                scans: set[int] = set()
                if mode == "auto":
                    scans = {i for i, c in enumerate(counts) if c < MIN_SCAN_PAGE_CHARS and layer.has_images[i]}
                rendered: dict[int, bytes] = {}
                if scans:
                    try:
                        rendered, _ = _pdf_page_images(data, max_pages, dpi, source, only=scans)
                    except MissingExtraError as exc:
                        warnings.warn(
                            f"{source}: pages {sorted(i + 1 for i in scans)} look scanned but {exc.package} "
                            "is not installed to render them; only the text layer is used",
                            UserWarning,
                            stacklevel=4,
                        )
                _warn_truncated(source, layer.total_pages, max_pages)
                return _interleave(layer.texts, rendered)
    images, total = _pdf_page_images(data, max_pages, dpi, source)
    if total == 0:
        raise ConfigurationError(f"{source} has no pages")
    _warn_truncated(source, total, max_pages)
    parts: list[dict[str, Any]] = []
    for i in sorted(images):
        if len(images) > 1:
            parts.append(text_part(f"--- page {i + 1} ---"))
        parts.append(image_part(images[i], "image/png"))
    return parts, ""


def _interleave(texts: list[str], rendered: dict[int, bytes]) -> tuple[list[dict[str, Any]], str]:
    """Page texts joined with page markers; a rendered page's image follows its marker."""
    parts: list[dict[str, Any]] = []
    pieces: list[str] = []
    pending = ""
    for i, page_text in enumerate(texts):
        piece = (_PAGE_MARKER.format(n=i + 1) if i else "") + page_text
        pieces.append(piece)
        pending += piece
        if i in rendered:
            if pending.strip():
                parts.append(text_part(pending))
            pending = ""
            parts.append(image_part(rendered[i], "image/png"))
    if pending.strip() or not parts:
        parts.append(text_part(pending))
    return parts, "".join(pieces)


def _warn_truncated(source: str, total: int, max_pages: int | None) -> None:
    if max_pages is not None and total > max_pages:
        warnings.warn(
            f"{source} has {total} pages; only the first {max_pages} are used (max_pdf_pages={max_pages})",
            UserWarning,
            stacklevel=4,
        )
