"""Images and base64: the one MIME sniffer, the one base64 / ``data:`` URL decoder, PNG conversion with PIL,
and the OpenAI content parts a document is made of.

Used by the input builder, the PDF reader, the saved-directory format (demo images as files), the server and
the batch integrations (telling an image file from a text file). ``PIL`` is imported only when an image has to
be converted (BMP/TIFF, a PIL image, a rendered PDF page).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import Any

from dspydantic.errors import ConfigurationError, MissingExtraError

__all__ = [
    "SENDABLE_IMAGE_TYPES",
    "SNIFF_BYTES",
    "data_url",
    "decode_base64",
    "image_from_bytes",
    "image_part",
    "parse_data_url",
    "pil_to_png",
    "sniff_image_mime",
    "text_part",
]

#: image types vision models accept as they are (others are converted to PNG)
SENDABLE_IMAGE_TYPES: frozenset[str] = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})

#: bytes :func:`sniff_image_mime` needs to tell every format it knows
SNIFF_BYTES = 32

_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})


def sniff_image_mime(data: bytes) -> str | None:
    """MIME type from the magic bytes: PNG, JPEG, GIF, WEBP (sent as they are), BMP and TIFF (converted);
    None for anything else. The first :data:`SNIFF_BYTES` bytes are enough."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"BM") and len(data) >= 26 and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES:
        return "image/bmp"  # "BM" alone starts text too ("BMW ..."): the DIB header's size must follow
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    return None


# --------------------------------------------------------------------------------------------------
# base64 and data: URLs


_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.IGNORECASE
)


def data_url(data: bytes, mime: str) -> str:
    """``data:<mime>;base64,<data>``."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def decode_base64(value: str | bytes, what: str = "image_base64") -> tuple[bytes, str | None]:
    """Decode base64 text, bare or as a ``data:<mime>;base64,`` URL: the bytes and the URL's MIME type (None
    when bare or not given). Whitespace, missing padding and the URL-safe alphabet are tolerated; anything
    else raises :class:`ConfigurationError` naming ``what``."""
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError as exc:
            raise ConfigurationError(f"{what} must be ASCII base64 text") from exc
    if not isinstance(value, str):
        raise ConfigurationError(f"{what} must be a string, got {type(value).__name__}")
    text = value.strip()
    mime: str | None = None
    if text[:5].lower() == "data:":
        m = _DATA_URL.match(text)
        if m is None or not m.group("b64"):
            raise ConfigurationError(f"{what} data URL must be of the form 'data:<mime>;base64,<data>'")
        mime = m.group("mime")
        text = text[m.end() :]
    payload = "".join(text.split())
    if not payload:
        raise ConfigurationError(f"{what} is empty")
    if "-" in payload or "_" in payload:
        payload = payload.replace("-", "+").replace("_", "/")
    payload += "=" * (-len(payload) % 4)
    try:
        return base64.b64decode(payload, validate=True), mime
    except (binascii.Error, ValueError) as exc:
        raise ConfigurationError(f"{what} is not valid base64: {exc}") from exc


def parse_data_url(url: str) -> tuple[bytes, str | None] | None:
    """The bytes and MIME type of a base64 ``data:`` URL; None for anything else (another URL, a malformed
    data URL)."""
    if url[:5].lower() != "data:":
        return None
    try:
        return decode_base64(url, "the data URL")
    except ConfigurationError:
        return None


# --------------------------------------------------------------------------------------------------
# content parts


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def image_part(data: bytes, mime: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_url(data, mime)}}


# --------------------------------------------------------------------------------------------------
# conversion


def pil_to_png(image: Any) -> bytes:
    """A PIL image as PNG bytes (modes PNG cannot store are converted to RGB/RGBA)."""
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
            return pil_to_png(img)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ConfigurationError(f"could not read the {mime} image: {exc}") from exc


def image_from_bytes(data: bytes, hint_mime: str | None, source: str) -> tuple[bytes, str]:
    """Image bytes ready to send and their MIME type: sniffed; BMP/TIFF converted to PNG; an unrecognised
    format only with an explicit ``image/...`` ``hint_mime`` (sent as it is)."""
    if not data:
        raise ConfigurationError(f"{source} is empty")
    mime = sniff_image_mime(data)
    if mime is not None and mime not in SENDABLE_IMAGE_TYPES:
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
