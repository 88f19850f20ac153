"""Every input kind through every public verb, and in Examples for evaluation/optimization (fake server)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from pydantic import BaseModel

from dspydantic import ConfigurationError, Example, Prompter
from dspydantic.testing import FakeLLMServer, message_text
from tests.test_inputs import _png, image_pdf, text_pdf


class Receipt(BaseModel):
    shop: str
    total: float


ANSWER = {"shop": "Corner Cafe", "total": 6.4}


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    png = tmp_path / "receipt.png"
    png.write_bytes(_png())
    text = tmp_path / "receipt.pdf"
    text.write_bytes(text_pdf(["Corner Cafe receipt, total GBP 6.40, thank you for your visit today."]))
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(image_pdf(1))
    return {"png": png, "text_pdf": text, "scan_pdf": scan}


def _parts(srv: FakeLLMServer) -> list:  # type: ignore[type-arg]
    content = srv.requests[-1].body["messages"][-1]["content"]
    return content if isinstance(content, list) else [{"type": "text", "text": content}]


def test_every_kind_in_every_sync_verb(srv: FakeLLMServer, files: dict[str, Path]) -> None:
    srv.set_responder(lambda body: ANSWER)
    p = Prompter(Receipt, "openai/vision", api_base=srv.base_url)
    b64 = base64.b64encode(files["png"].read_bytes()).decode()
    kinds = [
        {"text": "Corner Cafe, 6.40"},
        {"text": {"shop_line": "Corner Cafe", "amount": "6.40"}},
        {"image_path": str(files["png"])},
        {"image_base64": b64},
        {"image_bytes": files["png"].read_bytes()},
        {"pdf_path": str(files["text_pdf"])},
        {"pdf_path": str(files["scan_pdf"])},
        {"pdf_bytes": files["text_pdf"].read_bytes(), "pdf_mode": "images"},
    ]
    for kw in kinds:
        assert p.predict(**kw) == Receipt(**ANSWER)
        res = p.predict_with_confidence(**kw)
        assert res.data.shop == "Corner Cafe"
        parts = _parts(srv)
        if "image_path" in kw or "image_base64" in kw or "image_bytes" in kw or kw.get("pdf_mode") == "images":
            assert any(pp["type"] == "image_url" and pp["image_url"]["url"].startswith("data:image/png;base64,")
                       for pp in parts)
        if kw.get("pdf_path") == str(files["scan_pdf"]):
            assert any(pp["type"] == "image_url" for pp in parts)  # no text layer: page images
        if kw.get("pdf_path") == str(files["text_pdf"]):
            assert "GBP 6.40" in message_text(srv.requests[-1].body["messages"][-1]["content"])
    out = p.predict_batch(kinds, max_workers=4)
    assert out == [Receipt(**ANSWER)] * len(kinds)


def test_every_kind_async(srv: FakeLLMServer, files: dict[str, Path]) -> None:
    srv.set_responder(lambda body: ANSWER)
    p = Prompter(Receipt, "openai/vision", api_base=srv.base_url)

    async def main() -> list:  # type: ignore[type-arg]
        one = await p.apredict(pdf_path=str(files["text_pdf"]))
        conf = await p.apredict_with_confidence(image_path=str(files["png"]))
        many = await p.apredict_batch(
            ["Corner Cafe", {"pdf_path": str(files["scan_pdf"])}, {"image_path": str(files["png"])}],
            max_workers=3,
        )
        return [one, conf.data, *many]

    assert asyncio.run(main()) == [Receipt(**ANSWER)] * 5


def test_bad_file_in_a_batch_is_reported_for_that_item(srv: FakeLLMServer, files: dict[str, Path]) -> None:
    srv.set_responder(lambda body: ANSWER)
    p = Prompter(Receipt, "openai/vision", api_base=srv.base_url)
    broken = files["png"].with_name("broken.pdf")
    broken.write_bytes(b"%PDF-1.4 this is not really a pdf")
    items = [{"pdf_path": str(files["text_pdf"])}, {"pdf_path": str(broken)}, {"image_path": "/nope.png"}, "ok"]
    out = p.predict_batch(items, on_error="return")
    assert out[0] == out[3] == Receipt(**ANSWER)
    assert isinstance(out[1], Exception) and isinstance(out[2], ConfigurationError)
    assert srv.request_count in (2, 3)  # the broken PDF may still render as an (empty) page image


def test_examples_with_files_are_evaluated(srv: FakeLLMServer, files: dict[str, Path]) -> None:
    srv.set_responder(lambda body: ANSWER)
    p = Prompter(Receipt, "openai/vision", api_base=srv.base_url)
    b64 = base64.b64encode(files["png"].read_bytes()).decode()
    examples = [
        Example(pdf_path=str(files["text_pdf"]), expected_output=ANSWER),
        Example(image_path=str(files["png"]), expected_output={"shop": "Corner Cafe", "total": 7.0}),
        Example(image_base64=b64, expected_output=ANSWER),
        Example(text={"shop_line": "Corner Cafe"}, expected_output=ANSWER),
    ]
    report = p.evaluate(examples)
    assert report.n == 4 and report.per_field["shop"] == 1.0 and report.per_field["total"] == 0.75
    assert len(report.failures) == 1 and report.failures[0].index == 1


def test_optimize_with_image_and_pdf_examples_then_save_and_load(
    srv: FakeLLMServer, files: dict[str, Path], tmp_path: Path
) -> None:
    srv.set_responder(lambda body: ANSWER)
    p = Prompter(Receipt, "openai/vision", api_base=srv.base_url)
    examples = [
        Example(image_path=str(files["png"]), expected_output=ANSWER),
        Example(pdf_path=str(files["scan_pdf"]), expected_output=ANSWER),
        Example(image_path=str(files["png"]), expected_output=ANSWER),
        Example(pdf_path=str(files["text_pdf"]), expected_output=ANSWER),
        Example(text="Corner Cafe 6.40", expected_output=ANSWER),
        Example(text="Corner Cafe, six forty", expected_output=ANSWER),
    ]
    # every answer is right, so nothing wins: serve the baseline (its plain demos hold images) without
    # comparing it with the original prompts (which it only ties)
    result = p.optimize(examples, optimizer="bootstrap", max_lm_calls=40, seed=0, fallback="baseline",
                        compare_original=False)
    assert result.n_train + result.n_val == 6
    p.save(tmp_path / "saved")
    loaded = Prompter.load(tmp_path / "saved", model=Receipt, model_id="openai/vision", api_base=srv.base_url)
    assert loaded.state == p.state
    assert any(not isinstance(d.input, str) for d in p.demos)  # an image demo (seed 0 draws one)
    # demos holding images are stored as files beside the JSON, not inline base64
    assert any((tmp_path / "saved" / "demos").iterdir())
    assert "base64" not in (tmp_path / "saved" / "prompts.json").read_text()
    assert loaded.run(image_path=str(files["png"])) == Receipt(**ANSWER)
