"""One input spec: ``Example``, the verbs' keywords (``run(**inputs)``), a verb's positional dict, a batch item,
``build_input`` and the CLI's JSON-lines examples take the same keywords and read them the same way. Here with
the two options that once differed between them, ``image_mime=`` and ``max_pdf_pages=``: every entry point
sends the LM the very same image parts (the PDF cut to its first page, the unrecognised image under the given
MIME type), through the fake server."""

from __future__ import annotations

import asyncio
import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from dspydantic import ConfigurationError, Example, Prompter
from dspydantic._inputs import INPUT_OPTIONS, InputKeywords, InputOptions, build_input
from dspydantic.cli._shared import read_examples
from dspydantic.testing import FakeLLMServer
from tests.test_inputs import image_pdf

#: bytes no sniffer recognises: only ``image_mime`` says what they are
ODD_IMAGE = b"\x00\x00\x00\x0cjP  custom image payload"


class Person(BaseModel):
    name: str


def image_urls(content: Any) -> list[str]:
    parts = content if isinstance(content, list | tuple) else []
    return [p["image_url"]["url"] for p in parts if isinstance(p, dict) and p.get("type") == "image_url"]


def test_the_spec_is_one_typed_dict() -> None:
    assert set(InputKeywords.__annotations__) == {"text", *InputOptions.__annotations__}
    assert {"image_mime", "max_pdf_pages", "pdf_dpi", "pdf_mode"} <= INPUT_OPTIONS


def test_image_mime_and_max_pdf_pages_mean_the_same_everywhere(tmp_path: Path) -> None:
    pdf = tmp_path / "three_pages.pdf"
    pdf.write_bytes(image_pdf(3))
    inputs: dict[str, Any] = {
        "text": "Ada Lovelace", "pdf_path": str(pdf), "pdf_mode": "images", "pdf_dpi": 36, "max_pdf_pages": 1,
        "image_bytes": ODD_IMAGE, "image_mime": "image/jp2",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "only the first 1 of 3 pages"
        expected = image_urls(build_input(**inputs).parts)
    # one page of the PDF and the image, sent under the MIME type given
    assert len(expected) == 2 and expected[1].startswith("data:image/jp2;base64,")
    with pytest.raises(ConfigurationError):  # without image_mime the bytes are refused: the option matters
        build_input(image_bytes=ODD_IMAGE)

    lines = tmp_path / "examples.jsonl"
    row = {k: v for k, v in inputs.items() if k != "image_bytes"}
    lines.write_text(json.dumps({**row, "expected_output": {"name": "Ada"}}) + "\n", encoding="utf-8")
    (from_file,) = read_examples(str(lines))
    assert from_file.max_pdf_pages == 1 and from_file.image_mime == "image/jp2" and from_file.pdf_dpi == 36

    with FakeLLMServer() as srv:
        srv.respond_from_schema({"name": "Ada"})
        p = Prompter(model=Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
        example = Example(expected_output={"name": "Ada"}, **inputs)
        assert example.image_mime == "image/jp2" and example.max_pdf_pages == 1
        calls: dict[str, Callable[[], Any]] = {
            "run(**inputs)": lambda: p.run(**inputs),
            "run(dict)": lambda: p.run(dict(inputs)),
            "run(Example)": lambda: p.run(example),
            "predict_with_confidence(**inputs)": lambda: p.predict_with_confidence(**inputs).data,
            "predict_batch([dict])": lambda: p.predict_batch([dict(inputs)], max_workers=1)[0],
            "apredict(**inputs)": lambda: asyncio.run(p.apredict(**inputs)),
            "apredict_batch([Example])": lambda: asyncio.run(p.apredict_batch([example]))[0],
        }
        sent: dict[str, list[str]] = {}
        for name, call in calls.items():
            before = len(srv.chat_requests)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                assert call().name == "Ada", name
            (request,) = srv.chat_requests[before:]
            sent[name] = image_urls(request.body["messages"][-1]["content"])
        p.close()
    assert sent == dict.fromkeys(calls, expected)


def test_the_cli_examples_reject_a_bad_option_of_the_spec(tmp_path: Path) -> None:
    lines = tmp_path / "examples.jsonl"
    lines.write_text(json.dumps({"text": "Ada", "max_pdf_pages": 0, "expected_output": {}}) + "\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"examples.jsonl:1: max_pdf_pages"):
        read_examples(str(lines))


def test_extract_reads_the_spec_from_json_lines_on_stdin() -> None:
    from dspydantic.integrations.extract_files import discover

    line = {"id": "a", "text": "Ada", "pdf_path": "a.pdf", "pdf_dpi": 36, "max_pdf_pages": 1, "image_mime": "image/png"}
    (source,) = discover(["-"], stdin=io.StringIO(json.dumps(line) + "\n"))
    assert source.problem is None and source.id == "a"
    assert source.kwargs == {k: v for k, v in line.items() if k != "id"}
    (bad,) = discover(["-"], stdin=io.StringIO(json.dumps({"text": "Ada", "max_pdf_page": 1}) + "\n"))
    assert bad.problem is not None and "max_pdf_page" in bad.problem and "max_pdf_pages" in bad.problem
