"""The HTML review page, rendered by a real headless browser (Debian's chromium): the DOM it builds has the
grounded spans highlighted with their field and confidence, and nothing from the document or the answer
became markup."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from pydantic import BaseModel

from dspydantic import ExtractionResult, Prompter
from dspydantic.confidence import render_review_html
from dspydantic.testing import FakeLLMServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

HOSTILE = '<script>document.body.setAttribute("data-pwned", "1")</script>'
DOC = f"Rechnung von Müller & Söhne — 東京 🎉 office. Ref {HOSTILE} Straße 5, total 12,50 €"


class Doc(BaseModel):
    vendor: str
    city: str | None = None
    ref: str | None = None
    street: str | None = None
    total: float
    made_up: str | None = None


class _Dom(HTMLParser):
    """Collects the <mark> elements (attributes and text), the field rows and every tag name."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: list[dict[str, str]] = []
        self.rows: dict[str, dict[str, str]] = {}
        self.tags: list[str] = []
        self.body: dict[str, str] = {}
        self._mark: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if tag == "mark":
            self._mark = {**a, "text": ""}
        elif tag == "tr" and "data-field" in a:
            self.rows[a["data-field"]] = a
        elif tag == "body":
            self.body = a

    def handle_endtag(self, tag: str) -> None:
        if tag == "mark" and self._mark is not None:
            self.marks.append(self._mark)
            self._mark = None

    def handle_data(self, data: str) -> None:
        if self._mark is not None:
            self._mark["text"] += data


def rendered_dom(html_text: str, tmp_path: Path) -> str:
    page = tmp_path / "review.html"
    page.write_text(html_text, encoding="utf-8")
    proc = subprocess.run(
        [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri(),
        ],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "<mark" in proc.stdout, proc.stdout[:2000]
    return proc.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make install installs it as root)")
def test_review_page_in_a_headless_browser(srv: FakeLLMServer, tmp_path: Path) -> None:
    srv.add_response({
        "vendor": "Müller & Söhne", "city": "東京", "ref": HOSTILE, "street": "Straße 5", "total": 12.5,
        "made_up": "Globex <b>bold</b>",
    })
    p = Prompter(Doc, "openai/fake", api_base=srv.base_url, api_key="k")
    result = p.predict_with_confidence(DOC)
    assert result.ungrounded == ["made_up"]

    dom = _Dom()
    dom.feed(rendered_dom(render_review_html(result, DOC), tmp_path))

    # every grounded span is highlighted, with its exact text, field and position in code points
    marked = {(m["data-fields"], m["text"]) for m in dom.marks}
    assert marked == {
        ("vendor", "Müller & Söhne"), ("city", "東京"), ("ref", HOSTILE), ("street", "Straße 5"),
    }
    for m in dom.marks:
        start, end = int(m["data-start"]), int(m["data-end"])
        assert DOC[start:end] == m["text"]
        field = m["data-fields"]
        assert f"{field} {result.field_confidences[field]:.2f}" in m["title"]
        assert m["class"] == "high"  # grounded, first answer, no logprobs: 1.0

    # the field table: every field with its confidence; the made-up value is marked as not found
    assert set(dom.rows) == set(result.field_confidences)
    assert float(dom.rows["made_up"]["data-confidence"]) == pytest.approx(result.field_confidences["made_up"], abs=1e-4)
    # nothing from the document or the answer became markup: no script ran, no <b> or <script> element
    assert "script" not in dom.tags and "b" not in dom.tags
    assert "data-pwned" not in dom.body


def test_review_page_escapes_everything_without_a_browser() -> None:
    result = ExtractionResult(
        data=Doc(vendor='"><img src=x onerror=alert(1)>', total=1.0),
        confidence=0.3,
        raw_output="",
        field_confidences={"vendor": 0.3, "total": 0.9},
        spans={"vendor": [(0, 5), (3, 9)]},
        calibrated=True,
    )
    page = render_review_html(result, "<b>hi</b> & <i>there</i>")
    assert "<img" not in page and "<b>" not in page and "&lt;b&gt;" in page
    # overlapping spans are cut at every boundary: 0-3, 3-5 (both spans), 5-9
    assert page.count("<mark") == 3 and 'data-start="3" data-end="5"' in page
    assert 'class="low"' in page and "calibrated" in page
