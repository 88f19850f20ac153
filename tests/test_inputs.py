"""Inputs (text, templates, images, PDFs), chunking of long documents and merging of chunk results."""

from __future__ import annotations

import base64
import io
import itertools
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import pytest
from pydantic import BaseModel, Field

from dspydantic._chunking import (
    MIN_CHUNK_TOKENS,
    Chunk,
    chunk_budget,
    estimate_tokens,
    split_text,
)
from dspydantic._inputs import InputDoc, build_input
from dspydantic._media import SNIFF_BYTES, data_url, decode_base64, parse_data_url, sniff_image_mime
from dspydantic._merge import merge_extractions
from dspydantic._template import render_template, template_placeholders
from dspydantic.errors import ConfigurationError, MissingExtraError

from ._support import cli_env

# --------------------------------------------------------------------------------------------------
# fixtures: tiny images and hand-written PDFs (no PDF library needed to make them)


def _png(width: int = 3, height: int = 2, rgb: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), rgb).save(buf, format="PNG")
    return buf.getvalue()


# 1x1 transparent GIF
GIF_1X1 = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


Page = tuple[bytes, dict[str, bytes]]


def _pdf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _write_pdf(pages: list[Page]) -> bytes:
    """A minimal PDF: each page is (content stream, {image name: image XObject dict+stream object})."""
    objects: list[bytes] = []  # object i+1

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    catalog = add(b"")  # placeholder
    pages_obj = add(b"")
    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    kids = []
    for content, images in pages:
        xobjects = b" ".join(b"/" + name.encode() + b" %d 0 R" % add(obj) for name, obj in images.items())
        stream = add(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
        resources = b"<< /Font << /F1 %d 0 R >> /XObject << %s >> >>" % (font, xobjects)
        kids.append(
            add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Resources %s /Contents %d 0 R >>"
                % (pages_obj, resources, stream)
            )
        )
    objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages_obj
    objects[pages_obj - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids),
        len(kids),
    )
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        catalog,
        xref,
    )
    return bytes(out)


def _text_page(text: str) -> Page:
    ops = [b"BT /F1 12 Tf 16 TL 72 720 Td"]
    for line in text.split("\n"):
        ops.append(b"(" + _pdf_escape(line).encode("latin-1") + b") Tj T*")
    ops.append(b"ET")
    return b"\n".join(ops), {}


def _scan_page(rgb: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 50)) -> Page:
    """A page that is one full-page RGB image and carries no text at all (like a scan)."""
    w, h = size
    data = zlib.compress(bytes(rgb) * (w * h))
    image = (
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB "
        b"/BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\n" % (w, h, len(data)) + data + b"\nendstream"
    )
    return b"q 612 0 0 792 0 0 cm /Im1 Do Q", {"Im1": image}


def text_pdf(page_texts: list[str]) -> bytes:
    return _write_pdf([_text_page(t) for t in page_texts])


def image_pdf(n_pages: int = 1, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    return _write_pdf([_scan_page(rgb) for _ in range(n_pages)])


PAGE1 = "Invoice 2024-001\nCustomer: Acme Corporation, 12 Main Street\nTotal due: 1,234.50 EUR"
PAGE2 = "Terms: payment within 30 days of the invoice date.\nThank you for your business!"


def _image_url_bytes(part: dict) -> tuple[str, bytes]:
    url = part["image_url"]["url"]
    m = re.match(r"data:([^;]+);base64,(.*)$", url, re.S)
    assert m is not None
    return m.group(1), base64.b64decode(m.group(2))


def _png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    w, h = struct.unpack(">II", data[16:24])
    return w, h


# --------------------------------------------------------------------------------------------------
# text and templates


def test_text_input_is_plain_string_content() -> None:
    doc = build_input("Hello  world\n")
    assert isinstance(doc, InputDoc)
    assert doc.kind == "text"
    assert doc.text == "Hello  world\n"  # kept verbatim (offsets stay meaningful)
    assert doc.parts == ({"type": "text", "text": "Hello  world\n"},)
    assert doc.as_content() == "Hello  world\n"
    assert not doc.has_images
    assert len(doc.fingerprint) == 64


def test_fingerprint_is_stable_and_content_sensitive() -> None:
    a, b, c = build_input("abc"), build_input("abc"), build_input("abd")
    assert a.fingerprint == b.fingerprint and a == b and hash(a) == hash(b)
    assert a.fingerprint != c.fingerprint
    # hard-coded: the fingerprint must not depend on the process (no hash randomisation)
    import hashlib

    expected = hashlib.sha256(b'[{"text":"abc","type":"text"}]').hexdigest()
    assert a.fingerprint == expected


@pytest.mark.parametrize("bad", ["", "   \n\t "])
def test_empty_text_is_rejected(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="nothing to extract from"):
        build_input(bad)


def test_no_input_at_all_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="nothing to extract from"):
        build_input()
    with pytest.raises(ConfigurationError, match="nothing to extract from"):
        build_input({})
    with pytest.raises(ConfigurationError):
        build_input(cast(Any, 123))


def test_template_variables_render_as_key_value_lines() -> None:
    doc = build_input({"name": "Ada", "tags": ["x", "y"], "meta": {"a": 1}, "n": 3, "ok": False, "none": None})
    assert doc.kind == "template"
    assert doc.text == 'name: Ada\ntags: ["x", "y"]\nmeta: {"a": 1}\nn: 3\nok: false\nnone: null'
    assert doc.as_content() == doc.text
    assert doc.variables == {
        "name": "Ada",
        "tags": ["x", "y"],
        "meta": {"a": 1},
        "n": 3,
        "ok": False,
        "none": None,
    }


def test_render_template_keeps_json_braces() -> None:
    tpl = 'Extract for {customer}. Answer like {"total": 12.5, "lines": [{"sku": "A", "qty": {"n": 1}}]}.'
    out = render_template(tpl, {"customer": "Acme"})
    assert out == 'Extract for Acme. Answer like {"total": 12.5, "lines": [{"sku": "A", "qty": {"n": 1}}]}.'
    assert template_placeholders(tpl) == {"customer"}


def test_render_template_escapes_and_non_placeholders() -> None:
    tpl = '{{name}} is literal, {name} is not; {{"a": {{"b": 1}}}}; {0} {x.y} {z!r} { w } {}; a }} b'
    assert template_placeholders(tpl) == {"name"}
    out = render_template(tpl, {"name": "N"})
    assert out == '{name} is literal, N is not; {"a": {"b": 1}}; {0} {x.y} {z!r} { w } {}; a } b'


def test_render_template_formats_values() -> None:
    out = render_template("{a}|{b}|{c}|{d}", {"a": "s", "b": [1, "x"], "c": {"k": None}, "d": 2.5})
    assert out == 's|[1, "x"]|{"k": null}|2.5'


def test_render_template_missing_placeholder_names_it_and_the_keys() -> None:
    with pytest.raises(ConfigurationError) as info:
        render_template("Hello {name}, see {doc_type}", {"name": "x", "language": "en"})
    msg = str(info.value)
    assert "{doc_type}" in msg
    assert "language" in msg and "name" in msg
    assert "{name}" not in msg.split("available")[0]  # only the missing one is reported as missing


# --------------------------------------------------------------------------------------------------
# images


def test_image_path_mime_from_magic_bytes_not_extension(tmp_path: Path) -> None:
    png = _png()
    p = tmp_path / "photo.jpg"  # lying extension
    p.write_bytes(png)
    doc = build_input(image_path=p)
    assert doc.kind == "image" and doc.has_images and doc.text == ""
    mime, data = _image_url_bytes(doc.parts[0])
    assert mime == "image/png" and data == png
    content = doc.as_content()
    assert isinstance(content, list) and content[0]["type"] == "image_url"


def test_image_base64_plain_and_data_url_and_bytes() -> None:
    png = _png()
    b64 = base64.b64encode(png).decode()
    plain = build_input(image_base64=b64)
    # data URL with a wrong declared MIME, line-wrapped payload: magic bytes win, whitespace ignored
    wrapped = "\n".join(b64[i : i + 10] for i in range(0, len(b64), 10))
    url = build_input(image_base64=f"data:image/jpeg;base64,{wrapped}")
    raw = build_input(image_bytes=png)
    for doc in (plain, url, raw):
        assert _image_url_bytes(doc.parts[0]) == ("image/png", png)
    assert plain.fingerprint == url.fingerprint == raw.fingerprint
    gif = build_input(image_base64=base64.b64encode(GIF_1X1).decode().rstrip("="))  # missing padding is fine
    assert _image_url_bytes(gif.parts[0])[0] == "image/gif"


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp")],
)
def test_pil_encoded_formats_are_sniffed(fmt: str, mime: str) -> None:
    Image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 128, 255)).save(buf, format=fmt)
    doc = build_input(image_bytes=buf.getvalue())
    assert _image_url_bytes(doc.parts[0]) == (mime, buf.getvalue())


def test_pil_image_becomes_png() -> None:
    Image = pytest.importorskip("PIL.Image")
    for mode in ("RGB", "RGBA", "L", "CMYK"):
        doc = build_input(image=Image.new(mode, (7, 5)))
        mime, data = _image_url_bytes(doc.parts[0])
        assert mime == "image/png" and _png_size(data) == (7, 5)


def test_bmp_is_converted_to_png() -> None:
    Image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (1, 2, 3)).save(buf, format="BMP")
    mime, data = _image_url_bytes(build_input(image_bytes=buf.getvalue()).parts[0])
    assert mime == "image/png" and _png_size(data) == (4, 3)


def test_one_sniffer_for_every_image_format() -> None:
    Image = pytest.importorskip("PIL.Image")
    formats = [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp"),
               ("BMP", "image/bmp"), ("TIFF", "image/tiff")]
    for fmt, mime in formats:
        buf = io.BytesIO()
        Image.new("RGB", (4, 3), (9, 9, 9)).save(buf, format=fmt)
        assert sniff_image_mime(buf.getvalue()[:SNIFF_BYTES]) == mime, fmt
    # text that starts like a BMP's "BM" is not an image (the batch verbs tell files apart with it)
    assert sniff_image_mime(b"BMW Group invoice 2024-001, total 1,234.50 EUR"[:SNIFF_BYTES]) is None
    assert sniff_image_mime(b"%PDF-1.7") is None


def test_one_base64_and_data_url_decoder() -> None:
    png = _png()
    b64 = base64.b64encode(png).decode()
    assert decode_base64(b64) == (png, None)
    assert decode_base64(f" data:image/png;base64,{b64[:20]}\n{b64[20:]} ") == (png, "image/png")
    assert decode_base64(base64.urlsafe_b64encode(png).decode().rstrip("=")) == (png, None)
    assert decode_base64(data_url(png, "image/gif").encode()) == (png, "image/gif")
    assert parse_data_url(data_url(png, "image/webp")) == (png, "image/webp")
    assert parse_data_url("https://example.com/a.png") is None
    assert parse_data_url("data:image/png,not-base64") is None
    assert parse_data_url("data:image/png;base64,***") is None
    with pytest.raises(ConfigurationError, match="pdf_base64 is not valid base64"):
        decode_base64("%%%%", "pdf_base64")


def test_rendering_a_pdf_page_without_pillow_names_the_extra(tmp_path: Path) -> None:
    pdf = tmp_path / "scan.pdf"
    pdf.write_bytes(image_pdf())
    code = (
        "import sys\n"
        "sys.modules['PIL'] = None\n"
        "from dspydantic._inputs import build_input\n"
        "from dspydantic.errors import MissingExtraError\n"
        "try:\n"
        "    build_input(pdf_path=sys.argv[1])\n"
        "except MissingExtraError as exc:\n"
        "    print(exc.extra, exc.package)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(pdf)], capture_output=True, text=True, env=cli_env(),
                         timeout=120)
    assert out.stdout.split() == ["pdf", "pillow"], out.stderr


def test_image_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not valid base64"):
        build_input(image_base64="this is *not* base64!!")
    with pytest.raises(ConfigurationError, match="not a recognised image"):
        build_input(image_base64=base64.b64encode(b"just some text, no image").decode())
    with pytest.raises(ConfigurationError, match="not a recognised image"):
        build_input(image_bytes=b"%PDF-1.4 not an image")
    with pytest.raises(ConfigurationError, match="empty"):
        build_input(image_bytes=b"")
    with pytest.raises(ConfigurationError, match="data URL"):
        build_input(image_base64="data:image/png,rawpayload")
    missing = tmp_path / "nope" / "missing.png"
    with pytest.raises(ConfigurationError, match=re.escape(str(missing))):
        build_input(image_path=missing)
    with pytest.raises(ConfigurationError):
        build_input(image=object())


def test_explicit_mime_for_unsniffed_format() -> None:
    doc = build_input(image_bytes=b"\x00\x00\x00\x0cjP  custom", image_mime="image/jp2")
    assert _image_url_bytes(doc.parts[0])[0] == "image/jp2"


def test_mixed_text_and_images_keep_order() -> None:
    doc = build_input("caption: a red square", image_bytes=_png(), image_base64=base64.b64encode(GIF_1X1).decode())
    assert doc.kind == "mixed"
    assert [p["type"] for p in doc.parts] == ["text", "image_url", "image_url"]
    assert doc.text == "caption: a red square"
    content = doc.as_content()
    assert isinstance(content, list) and len(content) == 3
    content[0]["text"] = "mutated"
    assert doc.parts[0]["text"] == "caption: a red square"  # as_content returns a copy
    # whitespace-only text next to an image is simply dropped
    assert build_input("  ", image_bytes=_png()).kind == "image"
    assert build_input(image_bytes=_png(), image_base64=base64.b64encode(GIF_1X1).decode()).kind == "image"


# --------------------------------------------------------------------------------------------------
# PDFs


def test_handwritten_fixtures_are_valid_pdfs() -> None:
    pypdf = pytest.importorskip("pypdf")
    reader = pypdf.PdfReader(io.BytesIO(text_pdf([PAGE1, PAGE2])))
    assert len(reader.pages) == 2
    assert "Acme Corporation" in (reader.pages[0].extract_text() or "")
    assert (pypdf.PdfReader(io.BytesIO(image_pdf())).pages[0].extract_text() or "").strip() == ""


def test_auto_uses_text_layer_when_present(tmp_path: Path) -> None:
    path = tmp_path / "invoice.pdf"
    path.write_bytes(text_pdf([PAGE1, PAGE2]))
    doc = build_input(pdf_path=path)
    assert doc.kind == "pdf" and not doc.has_images
    assert "Acme Corporation" in doc.text and "payment within 30 days" in doc.text
    assert "\n\n--- page 2 ---\n\n" in doc.text
    assert doc.text.index("Acme") < doc.text.index("--- page 2 ---") < doc.text.index("payment")
    assert "--- page 1 ---" not in doc.text
    assert isinstance(doc.as_content(), str)


def test_auto_renders_image_only_pdf() -> None:
    doc = build_input(pdf_bytes=image_pdf(rgb=(200, 30, 30)))
    assert doc.kind == "pdf" and doc.has_images and doc.text == ""
    assert len(doc.parts) == 1  # a single page needs no page label
    mime, data = _image_url_bytes(doc.parts[0])
    assert mime == "image/png"
    assert _png_size(data) == (612 * 2, 792 * 2)  # 144 dpi = 2x the 72 dpi canvas
    Image = pytest.importorskip("PIL.Image")
    img = Image.open(io.BytesIO(data)).convert("RGB")
    r, g, b = img.getpixel((img.width // 2, img.height // 2))
    assert r > 150 and g < 80 and b < 80  # the page really shows the red scan


def test_auto_renders_pdf_with_too_little_text() -> None:
    doc = build_input(pdf_bytes=text_pdf(["p. 1", "p. 2"]))  # 3 visible chars per page < 20
    assert doc.has_images
    assert [p["type"] for p in doc.parts] == ["text", "image_url", "text", "image_url"]
    assert doc.parts[0]["text"] == "--- page 1 ---" and doc.parts[2]["text"] == "--- page 2 ---"


def test_auto_renders_scanned_pages_inside_a_text_pdf() -> None:
    pdf = _write_pdf([_text_page(PAGE1), _scan_page((10, 200, 10)), _text_page(PAGE2), _text_page("")])
    doc = build_input(pdf_bytes=pdf, pdf_dpi=36)
    assert doc.kind == "pdf" and doc.image_count == 1  # the blank last page (no image) is not rendered
    types = [p["type"] for p in doc.parts]
    assert types == ["text", "image_url", "text"]
    assert doc.parts[0]["text"].startswith("Invoice 2024-001")
    assert doc.parts[0]["text"].endswith("--- page 2 ---\n\n")  # the scan follows its page marker
    assert doc.parts[2]["text"].lstrip().startswith("--- page 3 ---") and "payment" in doc.parts[2]["text"]
    assert "--- page 4 ---" in doc.text and "Acme" in doc.text and "payment" in doc.text
    # forcing the text layer leaves the scan out
    assert not build_input(pdf_bytes=pdf, pdf_mode="text").has_images


def test_auto_falls_back_to_rendering_when_pypdf_cannot_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    pypdf = pytest.importorskip("pypdf")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise pypdf.errors.PdfReadError("simulated parser failure")

    monkeypatch.setattr(pypdf, "PdfReader", broken)
    doc = build_input(pdf_bytes=text_pdf([PAGE1]), pdf_dpi=36)
    assert doc.image_count == 1
    with pytest.raises(ConfigurationError, match="simulated parser failure"):
        build_input(pdf_bytes=text_pdf([PAGE1]), pdf_mode="text")


def test_forced_modes_and_dpi() -> None:
    pdf = text_pdf([PAGE1, PAGE2])
    images = build_input(pdf_bytes=pdf, pdf_mode="images", pdf_dpi=72)
    assert images.image_count == 2
    assert _png_size(_image_url_bytes(images.parts[1])[1]) == (612, 792)
    text = build_input(pdf_bytes=text_pdf(["p. 1"]), pdf_mode="text")
    assert not text.has_images and text.text.strip() == "p. 1"
    with pytest.raises(ConfigurationError, match="no text layer"):
        build_input(pdf_bytes=image_pdf(), pdf_mode="text")
    with pytest.raises(ConfigurationError, match="pdf_mode"):
        build_input(pdf_bytes=pdf, pdf_mode=cast(Any, "ocr"))
    with pytest.raises(ConfigurationError, match="pdf_dpi"):
        build_input(pdf_bytes=pdf, pdf_dpi=0)


def test_text_plus_pdf_is_mixed_text_content() -> None:
    doc = build_input("Focus on the totals.", pdf_bytes=text_pdf([PAGE1, PAGE2]))
    assert doc.kind == "mixed" and not doc.has_images
    content = doc.as_content()
    assert isinstance(content, str) and content.startswith("Focus on the totals.\n\n") and "Acme" in content


def test_max_pdf_pages_truncates_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="only the first 1"):
        doc = build_input(pdf_bytes=text_pdf([PAGE1, PAGE2]), max_pdf_pages=1)
    assert "Acme" in doc.text and "payment" not in doc.text
    with pytest.warns(UserWarning, match="has 3 pages"):
        scans = build_input(pdf_bytes=image_pdf(n_pages=3), max_pdf_pages=2, pdf_dpi=36)
    assert scans.image_count == 2
    with pytest.raises(ConfigurationError, match="max_pdf_pages"):
        build_input(pdf_bytes=image_pdf(), max_pdf_pages=0)


@pytest.mark.parametrize("mode", ["auto", "text", "images"])
def test_corrupt_pdfs_raise_configuration_error(mode: Any, tmp_path: Path) -> None:
    good = text_pdf([PAGE1, PAGE2])
    bad_inputs = [
        b"",
        b"hello, I am not a PDF",
        b"%PDF-1.4\n" + b"\x00garbage" * 50,
        good[: len(good) // 3],
    ]
    for data in bad_inputs:
        with pytest.raises(ConfigurationError):
            build_input(pdf_bytes=data, pdf_mode=mode)
    missing = tmp_path / "missing.pdf"
    with pytest.raises(ConfigurationError, match=r"missing\.pdf"):
        build_input(pdf_path=missing, pdf_mode=mode)


def _encrypt(data: bytes, user: str, owner: str) -> bytes:
    pypdf = pytest.importorskip("pypdf")
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(data)))
    writer.encrypt(user, owner, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.mark.parametrize("mode", ["auto", "text", "images"])
def test_password_protected_pdf_is_a_configuration_error(mode: Any) -> None:
    data = _encrypt(text_pdf([PAGE1, PAGE2]), "secret", "owner")
    with pytest.raises(ConfigurationError, match="password"):
        build_input(pdf_bytes=data, pdf_mode=mode)


def test_owner_password_only_pdf_is_readable() -> None:
    data = _encrypt(text_pdf([PAGE1, PAGE2]), "", "owner")
    assert "Acme Corporation" in build_input(pdf_bytes=data).text
    assert build_input(pdf_bytes=data, pdf_mode="images", pdf_dpi=36).image_count == 2


def test_missing_pdf_libraries_raise_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pypdf", None)
    with pytest.raises(MissingExtraError) as info:
        build_input(pdf_bytes=text_pdf([PAGE1]))
    assert info.value.extra == "pdf" and info.value.package == "pypdf"
    monkeypatch.delitem(sys.modules, "pypdf")
    monkeypatch.setitem(sys.modules, "pypdfium2", None)
    with pytest.raises(MissingExtraError) as info2:
        build_input(pdf_bytes=image_pdf())
    assert info2.value.extra == "pdf" and info2.value.package == "pypdfium2"
    # a text-layer PDF does not need pypdfium2
    assert "Acme" in build_input(pdf_bytes=text_pdf([PAGE1])).text


# --------------------------------------------------------------------------------------------------
# chunking


def _long_document(paragraphs: int = 120) -> str:
    out = []
    for p in range(paragraphs):
        sentences = [
            f"Paragraph {p} sentence {s} talks about shipment {p * 10 + s} and its careful handling." for s in range(6)
        ]
        out.append(" ".join(sentences))
    return "\n\n".join(out)


def _check_cover(text: str, chunks: list[Chunk]) -> None:
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for i, c in enumerate(chunks):
        assert c.index == i
        assert c.text == text[c.start : c.end] and c.end > c.start
    for prev, nxt in itertools.pairwise(chunks):
        assert nxt.start <= prev.end  # no gap: every character is in some chunk
        assert nxt.start > prev.start and nxt.end > prev.end  # progress


def test_split_long_document_covers_everything_with_overlap() -> None:
    text = _long_document()
    chunks = split_text(text, max_tokens=400, overlap_tokens=40)
    assert len(chunks) > 10
    _check_cover(text, chunks)
    for c in chunks:
        assert estimate_tokens(c.text) <= 400
    overlaps = [prev.end - nxt.start for prev, nxt in itertools.pairwise(chunks)]
    assert all(o > 0 for o in overlaps)
    assert all(o <= 40 * 3.5 for o in overlaps)
    # cuts land on boundaries: chunks end after whitespace and the next one starts at a word
    for prev, nxt in itertools.pairwise(chunks):
        assert prev.text[-1].isspace()
        assert not text[nxt.start].isspace() and text[nxt.start - 1].isspace()
    # with paragraphs much shorter than a chunk, most cuts are at paragraph breaks
    assert sum(c.text.endswith("\n\n") for c in chunks[:-1]) >= len(chunks) // 2


def test_split_with_custom_token_counter() -> None:
    text = _long_document(30)

    def words(s: str) -> int:
        return len(s.split())

    chunks = split_text(text, max_tokens=100, overlap_tokens=10, count_tokens=words)
    _check_cover(text, chunks)
    assert all(words(c.text) <= 100 for c in chunks)
    assert all(words(c.text) >= 50 for c in chunks[:-1])  # windows are used, not wasted
    for prev, nxt in itertools.pairwise(chunks):
        assert 0 < words(text[nxt.start : prev.end]) <= 10


def test_split_without_any_boundary_and_edge_cases() -> None:
    blob = "x" * 5000
    chunks = split_text(blob, max_tokens=100, overlap_tokens=10)
    _check_cover(blob, chunks)
    assert all(estimate_tokens(c.text) <= 100 for c in chunks)
    assert split_text("short text", max_tokens=100) == [Chunk("short text", 0, 10, 0)]
    assert split_text("", max_tokens=5) == [Chunk("", 0, 0, 0)]
    # an overlap as large as the chunk is capped instead of looping forever
    big_overlap = split_text(_long_document(5), max_tokens=50, overlap_tokens=500)
    _check_cover(_long_document(5), big_overlap)
    no_overlap = split_text(_long_document(5), max_tokens=50, overlap_tokens=0)
    assert all(a.end == b.start for a, b in itertools.pairwise(no_overlap))
    with pytest.raises(ConfigurationError):
        split_text("abc", max_tokens=0)
    with pytest.raises(ConfigurationError):
        split_text("abc", max_tokens=10, overlap_tokens=-1)


def test_chunk_budget() -> None:
    assert chunk_budget(8192, 1000, 1000) == int(6192 * 0.9)
    assert chunk_budget(2048, 1500, 1000) == MIN_CHUNK_TOKENS
    with pytest.raises(ConfigurationError):
        chunk_budget(0, 10, 10)
    with pytest.raises(ConfigurationError):
        chunk_budget(1000, -1, 10)


# --------------------------------------------------------------------------------------------------
# merging


class Address(BaseModel):
    street: str | None = None
    city: str | None = None


class Person(BaseModel):
    name: str
    age: int | None = None


class Invoice(BaseModel):
    number: str | None = None
    total: float | None = None
    currency: str | None = None
    paid: bool | None = None
    address: Address | None = None
    tags: list[str] = Field(default_factory=list)
    people: list[Person] = Field(default_factory=list)
    point: tuple[int, int] | None = None


SCHEMA = Invoice.model_json_schema()


def test_merge_scalars_by_agreement() -> None:
    values: list[dict[str, Any]] = [
        {"number": "A-1", "total": 10.0, "currency": "EUR"},
        {"number": "A-2", "total": 10.0, "currency": "EUR"},
        {"number": "A-1", "total": 12.0, "currency": "USD"},
    ]
    merged = merge_extractions(values, SCHEMA)
    assert merged["number"] == "A-1" and merged["total"] == 10.0 and merged["currency"] == "EUR"


def test_merge_ties_by_confidence_then_earliest_chunk() -> None:
    values: list[dict[str, Any]] = [{"number": "A"}, {"number": "B"}]
    assert merge_extractions(values, SCHEMA)["number"] == "A"
    assert merge_extractions(values, SCHEMA, confidences=[0.2, 0.9])["number"] == "B"
    assert merge_extractions(values, SCHEMA, confidences=[0.9, 0.2])["number"] == "A"
    assert merge_extractions(values, SCHEMA, confidences=[None, 0.5])["number"] == "B"
    # confidence only breaks ties: two votes beat one confident vote
    three = [{"number": "A"}, {"number": "A"}, {"number": "B"}]
    assert merge_extractions(three, SCHEMA, confidences=[0.1, 0.1, 0.99])["number"] == "A"
    with pytest.raises(ConfigurationError, match="confidences"):
        merge_extractions(values, SCHEMA, confidences=[1.0])


def test_merge_string_agreement_ignores_case_and_spacing() -> None:
    values: list[dict[str, Any]] = [
        {"currency": "EUR"},
        {"currency": "eur "},
        {"currency": "USD"},
        {"currency": "EUR"},
    ]
    assert merge_extractions(values, SCHEMA)["currency"] == "EUR"


def test_merge_nulls_never_override() -> None:
    values: list[dict[str, Any]] = [
        {"number": None, "total": None, "paid": None, "address": None, "currency": ""},
        {
            "number": None,
            "total": 0.0,
            "paid": False,
            "address": {"street": None, "city": "Oslo"},
            "currency": None,
        },
        {"number": "X-9", "total": None, "paid": None, "address": None, "currency": "  "},
    ]
    merged = merge_extractions(values, SCHEMA)
    assert merged["number"] == "X-9"
    assert merged["total"] == 0.0 and merged["paid"] is False  # falsy values are values
    assert merged["address"] == {"street": None, "city": "Oslo"}
    assert merged["currency"] == ""  # only blanks: a blank, not None (a required str stays valid)
    assert merge_extractions([{"number": None}, {"number": None}], SCHEMA) == {"number": None}
    Invoice.model_validate(merged)


def test_merge_nested_objects_recursively() -> None:
    values: list[dict[str, Any]] = [
        {"address": {"street": "1 Main St", "city": None}},
        {"address": {"street": None, "city": "Paris"}},
        {"address": {"street": "1 Main St", "city": "paris"}},
    ]
    merged = merge_extractions(values, SCHEMA)
    assert merged["address"] == {"street": "1 Main St", "city": "Paris"}


def test_merge_lists_union_and_dedup() -> None:
    values: list[dict[str, Any]] = [
        {"tags": ["urgent", "q3"], "people": [{"name": "Ann", "age": None}, {"name": "Bob", "age": 40}]},
        {"tags": ["q3", "paid"], "people": [{"name": "Ann", "age": 31}, {"name": "Bob", "age": 40}]},
        {"tags": [], "people": [{"name": "Cy", "age": None}, {"name": "Ann", "age": None}]},
    ]
    merged = merge_extractions(values, SCHEMA)
    assert merged["tags"] == ["urgent", "q3", "paid"]
    # Ann without age is subsumed by Ann with age (which takes the earlier position); Bob only once
    assert merged["people"] == [
        {"name": "Ann", "age": 31},
        {"name": "Bob", "age": 40},
        {"name": "Cy", "age": None},
    ]
    Invoice.model_validate(merged)


def test_merge_tuple_is_voted_not_unioned() -> None:
    values: list[dict[str, Any]] = [{"point": [1, 2]}, {"point": [3, 4]}, {"point": [1, 2]}]
    assert merge_extractions(values, SCHEMA)["point"] == [1, 2]


def test_merge_keeps_list_within_max_items() -> None:
    class Top(BaseModel):
        top: Annotated[list[str], Field(max_length=2)]

    values: list[dict[str, Any]] = [{"top": ["a", "b"]}, {"top": ["c", "d"]}, {"top": ["a", "b"]}]
    merged = merge_extractions(values, Top.model_json_schema())
    assert merged == {"top": ["a", "b"]}
    Top.model_validate(merged)


def test_merge_discriminated_union_does_not_mix_variants() -> None:
    class Card(BaseModel):
        kind: Literal["card"] = "card"
        last4: str | None = None

    class Bank(BaseModel):
        kind: Literal["bank"] = "bank"
        iban: str | None = None

    class Payment(BaseModel):
        method: Annotated[Card | Bank, Field(discriminator="kind")] | None = None

    values: list[dict[str, Any]] = [
        {"method": {"kind": "bank", "iban": "DE89"}},
        {"method": {"kind": "card", "last4": "4242"}},
        {"method": {"kind": "bank", "iban": None}},
        {"method": None},
    ]
    merged = merge_extractions(values, Payment.model_json_schema())
    assert merged == {"method": {"kind": "bank", "iban": "DE89"}}
    Payment.model_validate(merged)


def test_merge_single_value_is_a_copy() -> None:
    value = {"tags": ["a"], "address": {"city": "Rome"}}
    merged = merge_extractions([value], SCHEMA)
    assert merged == value and merged is not value
    merged["tags"].append("b")
    assert value["tags"] == ["a"]
    with pytest.raises(ConfigurationError):
        merge_extractions([], SCHEMA)


def test_answer_in_last_chunk_survives_split_and_merge() -> None:
    class Doc(BaseModel):
        reference: str | None = None
        topics: list[str] = Field(default_factory=list)

    filler = _long_document(150)
    text = filler + "\n\nFinally, for the record, the reference number is REF-77431."
    chunks = split_text(text, max_tokens=500, overlap_tokens=50)
    assert len(chunks) > 5
    hits = [c.index for c in chunks if "REF-77431" in c.text]
    assert hits == [len(chunks) - 1]

    def fake_extract(chunk: Chunk) -> dict:
        m = re.search(r"reference number is (REF-\d+)", chunk.text)
        topics = sorted({f"shipment {n}" for n in re.findall(r"shipment (\d+)", chunk.text)})[:2]
        return Doc(reference=m.group(1) if m else None, topics=topics).model_dump(mode="json")

    per_chunk = [fake_extract(c) for c in chunks]
    assert sum(v["reference"] is not None for v in per_chunk) == 1
    merged = merge_extractions(per_chunk, Doc.model_json_schema(), confidences=[0.9] * (len(chunks) - 1) + [0.1])
    assert merged["reference"] == "REF-77431"
    assert len(merged["topics"]) == len(set(merged["topics"]))
    Doc.model_validate(merged)


def test_split_randomised_cover_and_budget() -> None:
    import random

    rnd = random.Random(1234)
    alphabet = ["a", "b", " ", "\n", ".", "!", "\t", "é", "\n\n", " . "]

    def dense(s: str) -> int:  # a non-linear counter: words plus one token per period
        return len(s.split()) + s.count(".")

    for _ in range(400):
        text = "".join(rnd.choice(alphabet) if rnd.random() < 0.3 else "w" for _ in range(rnd.randint(0, 2500)))
        max_tokens, overlap = rnd.randint(1, 150), rnd.randint(0, 80)
        counter = dense if rnd.random() < 0.5 else None
        chunks = split_text(text, max_tokens=max_tokens, overlap_tokens=overlap, count_tokens=counter)
        assert chunks[0].start == 0 and chunks[-1].end == len(text)
        for c in chunks:
            assert c.text == text[c.start : c.end]
            assert (counter or estimate_tokens)(c.text) <= max_tokens or len(c.text) == 1
        for a, b in itertools.pairwise(chunks):
            assert a.start < b.start <= a.end < b.end
