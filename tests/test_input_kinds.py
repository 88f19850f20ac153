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


def _messages_by_verb(p: Prompter, srv: FakeLLMServer, item: object) -> dict[str, list]:  # type: ignore[type-arg]
    """The messages each verb sends for ``item`` given positionally (a batch verb: as its one item)."""

    async def one(coro: object) -> None:
        await coro  # type: ignore[misc]

    calls = {
        "run": lambda: p.run(item),  # type: ignore[arg-type]
        "predict": lambda: p.predict(item),  # type: ignore[arg-type]
        "predict_with_confidence": lambda: p.predict_with_confidence(item),  # type: ignore[arg-type]
        "apredict": lambda: asyncio.run(one(p.apredict(item))),  # type: ignore[arg-type]
        "apredict_with_confidence": lambda: asyncio.run(one(p.apredict_with_confidence(item))),  # type: ignore[arg-type]
        "predict_batch": lambda: p.predict_batch([item]),
        "apredict_batch": lambda: asyncio.run(one(p.apredict_batch([item]))),
    }
    out = {}
    for verb, call in calls.items():
        before = srv.request_count
        call()
        assert srv.request_count == before + 1, verb
        out[verb] = srv.requests[-1].body["messages"]
    return out


def test_a_dict_input_means_the_same_in_every_verb(srv: FakeLLMServer, files: dict[str, Path]) -> None:
    """One rule for a verb's positional input and a batch item: a dict made only of input keywords is those
    keywords, any other dict is template variables (reported: ``run({"text": ...})`` read it as template
    variables while ``predict_batch`` read it as the text)."""
    srv.set_responder(lambda body: ANSWER)
    p = Prompter(Receipt, "openai/vision", api_base=srv.base_url, instruction_prompt="Extract the {kind}.")
    plain = Prompter(Receipt, "openai/vision", api_base=srv.base_url)

    # {"text": ...} is the text: exactly what the str and text= send
    as_dict = _messages_by_verb(plain, srv, {"text": "Corner Cafe, 6.40"})
    assert all(m == as_dict["run"] for m in as_dict.values()), as_dict
    plain.run("Corner Cafe, 6.40")
    assert srv.requests[-1].body["messages"] == as_dict["run"]
    plain.run(text="Corner Cafe, 6.40")
    assert srv.requests[-1].body["messages"] == as_dict["run"]
    assert last_text(as_dict["run"]) == "Corner Cafe, 6.40"

    # a dict with another key is template variables: it fills {kind} and is shown as key: value lines
    variables = {"kind": "receipt", "text": "Corner Cafe, 6.40"}
    templated = _messages_by_verb(p, srv, variables)
    assert all(m == templated["run"] for m in templated.values()), templated
    assert "Extract the receipt." in json_text(templated["run"])
    assert "kind: receipt" in last_text(templated["run"]) and "text: Corner Cafe, 6.40" in last_text(templated["run"])
    # ... the same as text= by name, Example(text=...) and {"text": {...}}
    p.run(text=variables)
    assert srv.requests[-1].body["messages"] == templated["run"]
    assert p.predict_batch([{"text": variables}, Example(text=variables)]) == [Receipt(**ANSWER)] * 2
    assert srv.requests[-1].body["messages"] == srv.requests[-2].body["messages"] == templated["run"]

    # a dict of other input keywords: the same file in every verb, and keywords by name add to it
    image = _messages_by_verb(plain, srv, {"image_path": str(files["png"])})
    assert all(m == image["run"] for m in image.values())
    assert any(part.get("type") == "image_url" for part in image["run"][-1]["content"])
    plain.run({"image_path": str(files["png"])}, text="Corner Cafe")
    merged = srv.requests[-1].body["messages"]
    plain.predict_batch([{"image_path": str(files["png"]), "text": "Corner Cafe"}])
    assert srv.requests[-1].body["messages"] == merged
    assert "Corner Cafe" in last_text(merged) and merged != image["run"]


def test_an_input_keyword_given_twice_is_a_configuration_error(srv: FakeLLMServer) -> None:
    srv.set_responder(lambda body: ANSWER)
    p = Prompter(Receipt, "openai/vision", api_base=srv.base_url)
    for call in (lambda: p.run("Corner Cafe", text="Other Cafe"),
                 lambda: p.predict({"text": "Corner Cafe"}, text="Other Cafe"),
                 lambda: p.run(Example(text="Corner Cafe"), text="Other Cafe")):
        with pytest.raises(ConfigurationError, match=r"\['text'\] given both"):
            call()
    with pytest.raises(ConfigurationError, match="an input must be"):
        p.run(42)  # type: ignore[arg-type]
    assert srv.request_count == 0


def last_text(messages: list) -> str:  # type: ignore[type-arg]
    return message_text(messages[-1]["content"])


def json_text(messages: list) -> str:  # type: ignore[type-arg]
    return "\n".join(message_text(m["content"]) for m in messages)
