"""Normalise what the user wants extracted from (text, template variables, images, PDFs).

Everything ends up as an :class:`InputDoc`: a tuple of OpenAI content parts plus the plain text, a kind
and a stable fingerprint. Heavy libraries (``pypdf``, ``pypdfium2``, ``PIL``) are imported lazily, only
when an input of that kind is given.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import hashlib
import io
import json
import os
import re
import struct
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dspydantic.errors import ConfigurationError, MissingExtraError

__all__ = [
    "InputDoc",
    "PdfMode",
    "build_input",
    "encode_png",
    "format_value",
    "render_template",
    "render_variables",
    "template_placeholders",
]

PdfMode = Literal["auto", "text", "images"]

#: average number of non-space characters per page above which ``pdf_mode="auto"`` trusts the text layer
MIN_TEXT_CHARS_PER_PAGE = 20

#: in a PDF with a text layer, a page with fewer visible characters that draws an image is a scan
MIN_SCAN_PAGE_CHARS = 5

_PAGE_MARKER = "\n\n--- page {n} ---\n\n"

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


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _image_part(data: bytes, mime: str) -> dict[str, Any]:
    url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return {"type": "image_url", "image_url": {"url": url}}


# --------------------------------------------------------------------------------------------------
# values and templates


def format_value(value: Any) -> str:
    """A variable value as prompt text: strings as-is, other scalars and containers as JSON."""
    if isinstance(value, str):
        return value
    if hasattr(value, "model_dump") and callable(value.model_dump):
        value = value.model_dump(mode="json")
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def render_variables(variables: Mapping[str, Any]) -> str:
    """Template variables as ``key: value`` lines (non-scalar values as JSON)."""
    lines = []
    for key, value in variables.items():
        if not isinstance(key, str):
            raise ConfigurationError(f"template variable names must be strings, got {key!r}")
        lines.append(f"{key}: {format_value(value)}")
    return "\n".join(lines)


_IDENT_AT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _scan_template(template: str) -> list[tuple[str, str]]:
    """Split a template into ``("lit", text)`` and ``("var", name)`` tokens.

    Rules (in this order at every ``{`` / ``}``):

    * ``{name}`` where ``name`` is a Python identifier is a placeholder.
    * ``{{`` is an escaped literal ``{``.
    * ``}}`` closes an escaped ``{{`` as one literal ``}`` when the innermost open brace is an escaped
      one, or when no brace is open (``str.format`` compatibility). When the innermost open brace is a
      plain literal ``{`` (e.g. a JSON example ``{"a": {"b": 1}}``), the first ``}`` closes it and the
      second is examined on its own, so JSON written with single braces survives unchanged.
    * every other brace is literal text.
    """
    if not isinstance(template, str):
        raise ConfigurationError(f"a template must be a string, got {type(template).__name__}")
    tokens: list[tuple[str, str]] = []
    buf: list[str] = []
    stack: list[str] = []  # "esc" for an escaped {{, "lit" for a literal {
    i = 0
    n = len(template)
    while i < n:
        ch = template[i]
        if ch == "{":
            m = _IDENT_AT.match(template, i)
            if m is not None:
                if buf:
                    tokens.append(("lit", "".join(buf)))
                    buf = []
                tokens.append(("var", m.group(1)))
                i = m.end()
                continue
            if template.startswith("{{", i):
                stack.append("esc")
                buf.append("{")
                i += 2
                continue
            stack.append("lit")
            buf.append("{")
            i += 1
            continue
        if ch == "}":
            if template.startswith("}}", i) and (not stack or stack[-1] == "esc"):
                if stack:
                    stack.pop()
                buf.append("}")
                i += 2
                continue
            if stack:
                stack.pop()
            buf.append("}")
            i += 1
            continue
        buf.append(ch)
        i += 1
    if buf:
        tokens.append(("lit", "".join(buf)))
    return tokens


def template_placeholders(template: str) -> set[str]:
    """The placeholder names (``{name}``, ``name`` a Python identifier) used in ``template``."""
    return {value for kind, value in _scan_template(template) if kind == "var"}


def render_template(template: str, variables: Mapping[str, Any]) -> str:
    """Fill ``{name}`` placeholders from ``variables``; other braces are kept (see :func:`_scan_template`).

    Values are formatted with :func:`format_value`. A placeholder without a variable raises
    :class:`ConfigurationError` naming it and the available keys.
    """
    tokens = _scan_template(template)
    missing = sorted({v for k, v in tokens if k == "var" and v not in variables})
    if missing:
        available = ", ".join(sorted(str(k) for k in variables)) or "(none)"
        names = ", ".join(f"{{{m}}}" for m in missing)
        raise ConfigurationError(
            f"template placeholder(s) {names} have no value; available variables: {available}. "
            "Write {{name}} for a literal '{name}'."
        )
    return "".join(value if kind == "lit" else format_value(variables[value]) for kind, value in tokens)


# --------------------------------------------------------------------------------------------------
# images


def _sniff_image(data: bytes) -> str | None:
    """MIME type from magic bytes: PNG, JPEG, GIF, WEBP (sent as-is), BMP and TIFF (converted)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"BM") and len(data) >= 26:
        return "image/bmp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    return None


def _pil_to_png(image: Any) -> bytes:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - only reachable with a foreign image object
        raise MissingExtraError("pdf", "pillow") from exc
    if not isinstance(image, Image.Image):
        raise ConfigurationError(f"image= must be a PIL.Image.Image, got {type(image).__name__}")
    img = image
    if img.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
        img = img.convert("RGBA" if "A" in img.mode else "RGB")
    buf = io.BytesIO()
    try:
        img.save(buf, format="PNG")
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"could not encode the PIL image as PNG: {exc}") from exc
    return buf.getvalue()


def _convert_with_pil(data: bytes, mime: str) -> bytes:
    try:
        from PIL import Image
    except ImportError as exc:
        raise ConfigurationError(
            f"{mime} images are not accepted by vision models; convert to PNG/JPEG/GIF/WEBP "
            "or install pillow to convert automatically"
        ) from exc
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return _pil_to_png(img)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ConfigurationError(f"could not read the {mime} image: {exc}") from exc


def _image_from_bytes(data: bytes, hint_mime: str | None, source: str) -> tuple[bytes, str]:
    if not data:
        raise ConfigurationError(f"{source} is empty")
    mime = _sniff_image(data)
    if mime in ("image/bmp", "image/tiff"):
        return _convert_with_pil(data, mime), "image/png"
    if mime is not None:
        return data, mime
    hint = (hint_mime or "").strip().lower()
    if hint.startswith("image/"):
        # an explicit MIME type the user vouches for (a format we do not sniff)
        return data, hint
    raise ConfigurationError(
        f"{source} is not a recognised image (expected PNG, JPEG, GIF or WEBP bytes; "
        "pass image_mime= to send another image format as-is)"
    )


_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.IGNORECASE
)


def _decode_base64(value: str | bytes) -> tuple[bytes, str | None]:
    """Decode base64 with or without a ``data:`` URL prefix; returns bytes and the URL's MIME (if any)."""
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError as exc:
            raise ConfigurationError("image_base64 must be ASCII base64 text") from exc
    if not isinstance(value, str):
        raise ConfigurationError(f"image_base64 must be a string, got {type(value).__name__}")
    text = value.strip()
    mime: str | None = None
    if text[:5].lower() == "data:":
        m = _DATA_URL.match(text)
        if m is None or not m.group("b64"):
            raise ConfigurationError("image_base64 data URL must be of the form 'data:<mime>;base64,<data>'")
        mime = m.group("mime")
        text = text[m.end() :]
    payload = "".join(text.split())
    if not payload:
        raise ConfigurationError("image_base64 is empty")
    if "-" in payload or "_" in payload:
        payload = payload.replace("-", "+").replace("_", "/")
    payload += "=" * (-len(payload) % 4)
    try:
        return base64.b64decode(payload, validate=True), mime
    except (binascii.Error, ValueError) as exc:
        raise ConfigurationError(f"image_base64 is not valid base64: {exc}") from exc


def _read_file(path: str | os.PathLike[str], what: str) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigurationError(f"{what} not found: {str(p)!r}") from exc
    except IsADirectoryError as exc:
        raise ConfigurationError(f"{what} is a directory, not a file: {str(p)!r}") from exc
    except OSError as exc:
        raise ConfigurationError(f"could not read {what} {str(p)!r}: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# PNG encoding of rendered PDF pages (no PIL needed)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png(raw: bytes, width: int, height: int, stride: int, channels: int) -> bytes:
    """Encode 8-bit grey (1), RGB (3) or RGBA (4) rows as a PNG (filter type 0, zlib level 6)."""
    color_type = {1: 0, 3: 2, 4: 6}.get(channels)
    if color_type is None:
        raise ValueError(f"unsupported channel count {channels}")
    row_len = width * channels
    mv = memoryview(raw)
    rows = bytearray()
    for y in range(height):
        rows.append(0)
        rows += mv[y * stride : y * stride + row_len]
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(bytes(rows), 6))
        + _png_chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------------------------------
# PDFs


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
    """Render pages (the first ``max_pages``, or just the indices in ``only``) to PNG with pypdfium2.

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
                bitmap = page.render(scale=dpi / 72.0, rev_byteorder=True)
                try:
                    images[i] = _bitmap_to_png(bitmap)
                finally:
                    bitmap.close()
            finally:
                page.close()
    except pdfium.PdfiumError as exc:
        raise ConfigurationError(f"{source} could not be rendered (corrupt PDF?): {exc}") from exc
    finally:
        doc.close()
    return images, total


def _bitmap_to_png(bitmap: Any) -> bytes:
    mode = str(bitmap.mode)
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "RGBX": 4}.get(mode)
    if channels is not None:
        raw = bytes(bitmap.buffer)
        if mode == "RGBX":  # drop the unused fourth byte of every pixel
            w, h, stride = bitmap.width, bitmap.height, bitmap.stride
            rgb = bytearray(w * h * 3)
            for y in range(h):
                row = raw[y * stride : y * stride + 4 * w]
                out = y * w * 3
                for c in range(3):
                    rgb[out + c : out + 3 * w : 3] = row[c::4]
            return encode_png(bytes(rgb), w, h, w * 3, 3)
        return encode_png(raw, bitmap.width, bitmap.height, bitmap.stride, channels)
    try:  # unexpected pixel layout: let PIL sort it out if it is there
        pil = bitmap.to_pil()
    except ImportError as exc:  # pragma: no cover - depends on pdfium's output format
        raise MissingExtraError("pdf", "pillow") from exc
    return _pil_to_png(pil)


def _pdf_parts(
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
                    except MissingExtraError:
                        warnings.warn(
                            f"{source}: pages {sorted(i + 1 for i in scans)} look scanned but pypdfium2 "
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
            parts.append(_text_part(f"--- page {i + 1} ---"))
        parts.append(_image_part(images[i], "image/png"))
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
                parts.append(_text_part(pending))
            pending = ""
            parts.append(_image_part(rendered[i], "image/png"))
    if pending.strip() or not parts:
        parts.append(_text_part(pending))
    return parts, "".join(pieces)


def _warn_truncated(source: str, total: int, max_pages: int | None) -> None:
    if max_pages is not None and total > max_pages:
        warnings.warn(
            f"{source} has {total} pages; only the first {max_pages} are used (max_pdf_pages={max_pages})",
            UserWarning,
            stacklevel=4,
        )


# --------------------------------------------------------------------------------------------------
# the builder


def build_input(
    text: str | Mapping[str, Any] | None = None,
    *,
    image_path: str | os.PathLike[str] | None = None,
    image_base64: str | bytes | None = None,
    image_bytes: bytes | bytearray | memoryview | None = None,
    image: Any = None,
    image_mime: str | None = None,
    pdf_path: str | os.PathLike[str] | None = None,
    pdf_bytes: bytes | bytearray | memoryview | None = None,
    pdf_mode: PdfMode = "auto",
    pdf_dpi: int = 144,
    max_pdf_pages: int | None = None,
) -> InputDoc:
    """Normalise the inputs of one extraction into an :class:`InputDoc`.

    ``text`` is the document, or a mapping of template variables (rendered as ``key: value`` lines).
    Images may be given by path, base64 (with or without a ``data:`` prefix), raw bytes or as a PIL
    image; the MIME type comes from the magic bytes (``image_mime`` only for formats that are not
    recognised). PDFs: ``pdf_mode="auto"`` uses the text layer when it averages at least
    ``MIN_TEXT_CHARS_PER_PAGE`` visible characters per page (also rendering the pages of it that look
    scanned: an image and almost no text), else renders every page to PNG at ``pdf_dpi``;
    ``"text"`` / ``"images"`` force one. Encrypted (with a user password) or corrupt PDFs raise
    :class:`ConfigurationError`; missing pypdf/pypdfium2 raise :class:`MissingExtraError`.
    ``max_pdf_pages`` keeps only the first pages (with a warning). Parts are ordered: text, PDF, images.
    """
    if pdf_mode not in ("auto", "text", "images"):
        raise ConfigurationError(f"pdf_mode must be 'auto', 'text' or 'images', got {pdf_mode!r}")
    if isinstance(pdf_dpi, bool) or not isinstance(pdf_dpi, int) or not 18 <= pdf_dpi <= 1200:
        raise ConfigurationError(f"pdf_dpi must be an int between 18 and 1200, got {pdf_dpi!r}")
    if max_pdf_pages is not None and (
        isinstance(max_pdf_pages, bool) or not isinstance(max_pdf_pages, int) or max_pdf_pages < 1
    ):
        raise ConfigurationError(f"max_pdf_pages must be a positive int or None, got {max_pdf_pages!r}")
    if pdf_path is not None and pdf_bytes is not None:
        raise ConfigurationError("pass either pdf_path or pdf_bytes, not both")

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
            parts.append(_text_part(rendered))
            texts.append(rendered)
            kinds.append("template")
        elif isinstance(text, str):
            if text.strip():
                parts.append(_text_part(text))
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
        pdf_parts, pdf_text = _pdf_parts(
            pdf_data, mode=pdf_mode, dpi=pdf_dpi, max_pages=max_pdf_pages, source=pdf_source
        )
        parts.extend(pdf_parts)
        if pdf_text:
            texts.append(pdf_text)
        kinds.append("pdf")

    # images
    images: list[tuple[bytes, str]] = []
    if image_path is not None:
        data = _read_file(image_path, "image file")
        images.append(_image_from_bytes(data, image_mime, f"image file {str(image_path)!r}"))
    if image_base64 is not None:
        data, url_mime = _decode_base64(image_base64)
        images.append(_image_from_bytes(data, image_mime or url_mime, "image_base64"))
    if image_bytes is not None:
        if not isinstance(image_bytes, bytes | bytearray | memoryview):
            raise ConfigurationError(f"image_bytes must be bytes, got {type(image_bytes).__name__}")
        images.append(_image_from_bytes(bytes(image_bytes), image_mime, "image_bytes"))
    if image is not None:
        images.append((_pil_to_png(image), "image/png"))
    for data, mime in images:
        parts.append(_image_part(data, mime))
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
