"""Code written for dspydantic 0.1.6 runs: every name and documented parameter of 0.1.6's public surface
(read from its wheel) works here with its documented meaning, or with a DeprecationWarning that names
what replaced it. Everything runs end to end against the fake OpenAI-compatible server.

The 0.1.6 surface: top-level ``__all__`` (30 names); modules ``dspydantic.evaluators`` (+ ``.config``),
``.types``, ``.persistence``, ``.prompter``, ``.extractor``, ``.utils``, ``.optimizer``, ``.module``;
``Prompter(model, model_id, api_key, cache, system_prompt, instruction_prompt, optimized_descriptions,
optimized_system_prompt, optimized_instruction_prompt, optimized_demos)``; ``run/predict/
predict_with_confidence/apredict(text, image_path, image_base64, pdf_path, pdf_dpi)``;
``predict_batch(inputs, max_workers, on_error)``; ``apredict_batch(inputs, max_concurrency, on_error)``;
``optimize(examples, evaluate_fn, optimizer, train_split, num_threads, verbose, exclude_fields,
include_fields, evaluator_config, sequential, parallel_fields, max_val_examples, skip_score_threshold,
on_progress, **PydanticOptimizer kwargs)``; ``save(save_path)``; ``load(load_path, model, model_id,
api_key, cache)``; ``from_optimization_result``; ``Example(expected_output, text, image_path,
image_base64, pdf_path, pdf_dpi)`` with ``input_data`` / ``text_dict``; ``OptimizationResult``'s fields;
the evaluator classes' ``config`` keys; the optimizer names (any DSPy teleprompter class name,
``miprov2zeroshot``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field, field_validator

import dspydantic
from dspydantic import ConfigurationError, Example, ExtractionError, Prompter
from dspydantic.testing import FakeLLMServer, last_user_text, message_text
from tests.test_inputs import image_pdf, text_pdf

# --------------------------------------------------------------------------------------------------
# a deterministic LM: reads "<name>, <age>" records
# --------------------------------------------------------------------------------------------------


class User(BaseModel):
    name: str = Field(description="User name")
    age: int = Field(description="User age")


class Address(BaseModel):
    street: str = Field(description="Street and number")
    city: str


class Customer(BaseModel):
    name: str
    addresses: list[Address] = Field(description="Known addresses")

    @field_validator("name")
    @classmethod
    def strip_name(cls, v: str) -> str:
        return v.strip()


RECORD = re.compile(r"([A-Z][a-z]+(?: [A-Z][a-z]+)?), (\d+)")


def _system(body: dict[str, Any]) -> str:
    msgs = body.get("messages") or []
    return message_text(msgs[0].get("content")) if msgs and msgs[0].get("role") == "system" else ""


def _schema_name(body: dict[str, Any]) -> str | None:
    return ((body.get("response_format") or {}).get("json_schema") or {}).get("name")


def user_responder(body: dict[str, Any]) -> Any:
    """Extraction requests get the record read from the document; judges a score; anything else (DSPy's
    and GEPA's proposer prompts) a short instruction in DSPy's format or as text."""
    fmt = body.get("response_format") or {}
    name = (fmt.get("json_schema") or {}).get("name")
    if name == "judgement":
        return {"score": 1.0, "reason": "plausible"}
    if name in ("label", "grade"):
        return {"label": "positive", "reason": "ok"}
    if fmt.get("type") == "json_schema" and name not in ("proposal",):
        m = RECORD.search(last_user_text(body))
        return {"name": m.group(1), "age": int(m.group(2))} if m else {"name": "Nobody", "age": 0}
    m = re.search(r"Your output fields are:\n(.*?)(?:\n\n|All interactions)", _system(body), re.S)
    names = re.findall(r"`(\w+)`", m.group(1)) if m else []
    if names:
        return "\n\n".join(f"[[ ## {n} ## ]]\n{'1' if 'score' in n else 'Read the name and age.'}" for n in names) + (
            "\n\n[[ ## completed ## ]]"
        )
    return "```\nRead the name and the age exactly as written.\n```"


PEOPLE = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov", "Donald Knuth",
          "John Backus", "Frances Allen"]
EXAMPLES = [Example(text=f"{n}, {30 + i}", expected_output={"name": n, "age": 30 + i}) for i, n in enumerate(PEOPLE)]


@pytest.fixture()
def lm(srv: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> FakeLLMServer:
    """The fake server as OPENAI_BASE_URL, answering like a good extractor: 0.1.6 code passes only
    ``model_id="openai/..."``."""
    srv.set_responder(user_responder)
    monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-compat")
    return srv


_OPEN: list[Prompter] = []


def prompter(**kw: Any) -> Prompter:
    made = Prompter(model=kw.pop("model", User), model_id="openai/gpt-4o-mini", **kw)
    _OPEN.append(made)
    return made


@pytest.fixture(autouse=True)
def _close_prompters() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def deprecations(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, DeprecationWarning)]


def png_file(tmp_path: Path, name: str = "photo.png", size: tuple[int, int] = (4, 3)) -> Path:
    w, h = size
    path = tmp_path / name
    from PIL import Image

    Image.new("RGB", (w, h), (200, 30, 30)).save(path, format="PNG")
    return path


def image_parts(body: dict[str, Any]) -> list[str]:
    content = body["messages"][-1]["content"]
    return [p["image_url"]["url"] for p in content if isinstance(p, dict) and p.get("type") == "image_url"] if (
        isinstance(content, list)) else []


def png_width(data_url: str) -> int:
    data = base64.b64decode(data_url.partition(",")[2])
    return int.from_bytes(data[16:20], "big")


# --------------------------------------------------------------------------------------------------
# names and module paths
# --------------------------------------------------------------------------------------------------

TOP_LEVEL_016 = [
    "PydanticOptimizer", "Prompter", "ExtractionResult", "Example", "OptimizationResult",
    "FieldOptimizationProgress", "PrompterState", "PersistenceError", "extract_field_descriptions",
    "apply_optimized_descriptions", "create_optimized_model", "prepare_input_data", "image_to_base64",
    "pdf_to_base64_images", "create_output_model", "BaseEvaluator", "EvaluatorFactory", "EVALUATOR_REGISTRY",
    "register_evaluator", "StringCheckEvaluator", "LevenshteinEvaluator", "TextSimilarityEvaluator", "ScoreJudge",
    "LabelModelGrader", "PythonCodeEvaluator", "PredefinedScoreEvaluator", "OptimizeFieldDescription",
    "OptimizeSystemPrompt", "OptimizeInstructionPrompt",
]
MODULES_016 = {
    "dspydantic.evaluators": ["StringCheckEvaluator", "LevenshteinEvaluator", "TextSimilarityEvaluator",
                              "ScoreJudge", "LabelModelGrader", "PythonCodeEvaluator", "PredefinedScoreEvaluator",
                              "register_evaluator"],
    "dspydantic.evaluators.levenshtein": ["LevenshteinEvaluator"],
    "dspydantic.evaluators.string_check": ["StringCheckEvaluator"],
    "dspydantic.evaluators.text_similarity": ["TextSimilarityEvaluator"],
    "dspydantic.evaluators.score_judge": ["ScoreJudge"],
    "dspydantic.evaluators.label_model_grader": ["LabelModelGrader"],
    "dspydantic.evaluators.python_code": ["PythonCodeEvaluator"],
    "dspydantic.evaluators.predefined_score": ["PredefinedScoreEvaluator"],
    "dspydantic.evaluators.config": ["BaseEvaluator", "EvaluatorFactory", "EVALUATOR_REGISTRY", "register_evaluator"],
    "dspydantic.types": ["Example", "OptimizationResult", "FieldOptimizationProgress", "PrompterState",
                         "create_output_model"],
    "dspydantic.persistence": ["PersistenceError", "save_prompter_state", "load_prompter_state"],
    "dspydantic.prompter": ["Prompter", "ExtractionResult"],
    "dspydantic.extractor": ["extract_field_descriptions", "apply_optimized_descriptions", "create_optimized_model",
                             "extract_field_types"],
    "dspydantic.utils": ["prepare_input_data", "image_to_base64", "pdf_to_base64_images"],
    "dspydantic.optimizer": ["PydanticOptimizer"],
    "dspydantic.module": ["OptimizeFieldDescription", "OptimizeSystemPrompt", "OptimizeInstructionPrompt"],
}


@pytest.mark.parametrize("name", TOP_LEVEL_016)
def test_every_016_top_level_name_imports(name: str) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        value = getattr(dspydantic, name)
    assert value is not None
    if name.startswith("Optimize"):  # DSPy signatures 0.1 optimized with: kept, deprecated
        import dspy

        assert issubclass(value, dspy.Signature)
        assert any("GEPA" in m for m in deprecations(record))


@pytest.mark.parametrize("module", sorted(MODULES_016))
def test_every_016_module_path_imports_with_its_names(module: str) -> None:
    import importlib

    mod = importlib.import_module(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in MODULES_016[module]:
            assert getattr(mod, name) is not None, f"{module}.{name}"


def test_import_stays_lazy() -> None:
    """0.1's names are found on first use; ``import dspydantic`` does not import DSPy or the 0.1 modules."""
    import subprocess
    import sys

    code = (
        "import sys, dspydantic; assert 'dspy' not in sys.modules; "
        "assert 'dspydantic.optimizer' not in sys.modules; "
        "from dspydantic import FieldOptimizationProgress, OptimizationResult; assert 'dspy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------------
# 0.1.6's README, as written
# --------------------------------------------------------------------------------------------------


class Invoice(BaseModel):
    vendor: str = Field(description="Company that issued the invoice")
    total: str = Field(description="Total amount due")
    due_date: str = Field(description="Payment due date")


def test_016_readme_optimize_with_one_example(lm: FakeLLMServer) -> None:
    lm.respond_from_schema({"vendor": "Acme Corp", "total": "$1,250.00", "due_date": "March 15, 2024"})
    prompter = Prompter(model=Invoice, model_id="openai/gpt-4o-mini")
    before = lm.request_count
    result = prompter.optimize(examples=[
        Example(
            text="Invoice from Acme Corp. Total: $1,250.00. Due: March 15, 2024.",
            expected_output={"vendor": "Acme Corp", "total": "$1,250.00", "due_date": "March 15, 2024"},
        ),
    ])
    # nothing to validate on: no score is made up, and no LM call was spent pretending
    assert result.validated is False and result.accepted is False
    assert math.isnan(result.baseline_score) and math.isnan(result.optimized_score)
    assert "no held-out validation was possible" in result.message
    assert lm.request_count == before and result.api_calls == 0
    assert f"{result.baseline_score:.0%} → {result.optimized_score:.0%}"  # 0.1's print line still formats
    # the one example is served as a few-shot demo
    assert len(prompter.demos) == 1 and prompter.optimized_demos is not None
    assert prompter.optimized_demos[0]["expected_output"]["vendor"] == "Acme Corp"
    invoice = prompter.run("Consolidated Energy Partners | Invoice Total $3,200 | Due 2024-05-30")
    assert isinstance(invoice, Invoice)
    sent = lm.chat_requests[-1].messages
    assert any(m["role"] == "assistant" and "Acme Corp" in message_text(m["content"]) for m in sent)


def test_one_unlabelled_example_changes_nothing_and_says_so(lm: FakeLLMServer) -> None:
    p = prompter()
    result = p.optimize([Example(text="Ada Lovelace, 36", expected_output=None)])
    assert not result.validated and "nothing changed" in result.message
    assert p.state == p._original_state


def test_one_example_with_a_valset_is_validated(lm: FakeLLMServer) -> None:
    p = prompter()
    result = p.optimize(EXAMPLES[:1], valset=EXAMPLES[1:3], optimizer="bootstrap")
    assert result.validated and result.n_val == 2 and not math.isnan(result.baseline_score)


def test_016_readme_quick_start_and_production_features(lm: FakeLLMServer, tmp_path: Path) -> None:
    prompter = Prompter(model=User, model_id="openai/gpt-4o-mini", cache=True)
    contact = prompter.run("Reach out to Sarah Chen, 41")
    assert contact == User(name="Sarah Chen", age=41)
    result = prompter.optimize(examples=EXAMPLES[:6], verbose=True, optimizer="bootstrap")
    assert f"Accuracy: {result.baseline_score:.0%} → {result.optimized_score:.0%}"
    prompter.save("./invoice_prompter" if False else str(tmp_path / "p"))
    loaded = Prompter.load(str(tmp_path / "p"), model=User, model_id="openai/gpt-4o-mini")
    assert loaded.run("Alan Turing, 41").age == 41
    docs = ["Ada Lovelace, 36", "Alan Turing, 41"]
    assert [u.name for u in prompter.predict_batch(docs, max_workers=4)] == ["Ada Lovelace", "Alan Turing"]
    assert asyncio.run(prompter.apredict(docs[0])).age == 36
    conf = prompter.predict_with_confidence(docs[1])
    assert conf.data.age == 41 and 0.0 <= conf.confidence <= 1.0 and conf.raw_output


# --------------------------------------------------------------------------------------------------
# Example and the one input spec
# --------------------------------------------------------------------------------------------------


def test_example_takes_every_016_argument(tmp_path: Path) -> None:
    img = png_file(tmp_path)
    pdf = tmp_path / "scan.pdf"
    pdf.write_bytes(image_pdf(2))
    ex = Example(expected_output={"name": "Ada"}, text="Ada", image_path=str(img), pdf_path=pdf, pdf_dpi=36)
    assert ex.pdf_dpi == 36 and ex.image_path == str(img) and ex.text_dict == {}
    data = ex.input_data  # 0.1's shape: text and base64 images (the PDF's two pages rendered at 36 dpi)
    assert data["text"] == "Ada" and len(data["images"]) == 3
    assert base64.b64decode(data["images"][0]).startswith(b"\x89PNG")
    b64 = base64.b64encode(img.read_bytes()).decode()
    assert Example(image_base64=b64, expected_output={"name": "x"}).input_data == {"images": [b64]}
    templated = Example(text={"review": "Great product!", "category": "electronics"}, expected_output="positive")
    assert templated.text_dict == {"review": "Great product!", "category": "electronics"}
    assert "Great product!" in templated.input_data["text"]
    # 0.1's positional order: Example(expected_output, text)
    legacy = Example({"name": "Ada", "age": 36}, "Ada Lovelace, 36")
    assert legacy.text == "Ada Lovelace, 36" and legacy.expected_output == {"name": "Ada", "age": 36}


def test_example_also_takes_the_rest_of_the_input_spec(tmp_path: Path) -> None:
    pdf = tmp_path / "long.pdf"
    pdf.write_bytes(image_pdf(3))
    ex = Example(pdf_path=pdf, max_pdf_pages=1, pdf_mode="images", pdf_dpi=36, expected_output={"name": "x"})
    with pytest.warns(UserWarning, match="only the first 1"):
        assert len(ex.input_data["images"]) == 1
    odd = Example(image_bytes=b"\x00\x00\x00\x0cjP  custom", image_mime="image/jp2", expected_output={})
    assert odd.image_mime == "image/jp2" and odd.input_kwargs()["image_mime"] == "image/jp2"


BAD_INPUTS: list[tuple[dict[str, Any], str]] = [
    ({"pdf_dpi": 5}, "pdf_dpi"),
    ({"max_pdf_pages": 0}, "max_pdf_pages"),
    ({"pdf_mode": "ocr"}, "pdf_mode"),
    ({"image_mime": 42}, "image_mime"),
    ({"pdf_dpl": 300}, "unknown input argument"),
]


@pytest.mark.parametrize(("bad", "match"), BAD_INPUTS)
def test_one_input_spec_checks_every_entry_point_alike(lm: FakeLLMServer, bad: dict[str, Any], match: str) -> None:
    from dspydantic._inputs import build_input

    p = prompter()
    calls: list[Callable[[], Any]] = [
        lambda: Example(text="Ada Lovelace, 36", expected_output={}, **bad),
        lambda: p.run("Ada Lovelace, 36", **bad),
        lambda: p.predict("Ada Lovelace, 36", **bad),
        lambda: p.predict_with_confidence("Ada Lovelace, 36", **bad),
        lambda: asyncio.run(p.apredict("Ada Lovelace, 36", **bad)),
        lambda: build_input("Ada Lovelace, 36", **bad),
    ]
    for call in calls:
        with pytest.raises(ConfigurationError, match=match) as info:
            call()
        assert isinstance(info.value, ValueError)  # what 0.1 users catch
    if "unknown" in match:
        return  # a batch dict with keys that are not input keywords is a dict of template variables
    # a batch item made of input keywords: the same check, reported per item
    out = p.predict_batch([{"text": "Ada Lovelace, 36", **bad}, "Alan Turing, 41"], on_error="return")
    assert isinstance(out[0], ConfigurationError) and re.search(match, str(out[0])) and out[1].age == 41
    assert lm.request_count == 1  # only the good batch item reached the LM


def test_verbs_take_016_input_keywords_with_their_meaning(lm: FakeLLMServer, tmp_path: Path) -> None:
    p = prompter()
    img = png_file(tmp_path, size=(5, 4))
    pdf = tmp_path / "scan.pdf"
    pdf.write_bytes(image_pdf(1))
    b64 = base64.b64encode(img.read_bytes()).decode()
    assert p.run(text="Ada Lovelace, 36", image_path=str(img)).age == 36
    assert png_width(image_parts(lm.chat_requests[-1].body)[0]) == 5
    p.predict(text="Ada Lovelace, 36", image_base64=b64)
    assert image_parts(lm.chat_requests[-1].body)[0].endswith(b64)
    widths = []
    for dpi in (36, 72):  # pdf_dpi: the resolution the scanned page is rendered at
        p.predict_with_confidence(text="Ada Lovelace, 36", pdf_path=str(pdf), pdf_dpi=dpi)
        widths.append(png_width(image_parts(lm.chat_requests[-1].body)[0]))
    assert widths[1] == 2 * widths[0]
    assert asyncio.run(p.apredict(text="Ada Lovelace, 36", pdf_path=str(pdf), pdf_dpi=36)).name == "Ada Lovelace"
    # batch items as dicts of input keywords, including the PDF options
    items = [{"text": "Ada Lovelace, 36", "pdf_path": str(pdf), "pdf_dpi": 36, "max_pdf_pages": 1}, "Alan Turing, 41"]
    assert [u.age for u in p.predict_batch(items, max_workers=2)] == [36, 41]
    many = asyncio.run(p.apredict_batch(items, max_concurrency=2, on_error="return"))
    assert [u.age for u in many] == [36, 41]
    assert p.run(text={"text": "Ada Lovelace, 36", "source": "crm"}).age == 36  # template dict


def test_016_template_dicts_fill_placeholders_in_every_verb(lm: FakeLLMServer) -> None:
    """0.1 filled the instruction prompt from a dict input in ``run`` and in the batch verbs alike; so do we
    (one rule). A dict made only of input keywords (``{"text": ...}``) is the text now: with a ``{text}``
    placeholder the error says how to pass it as template variables."""
    p = prompter(instruction_prompt="Extract the person from this {source} record: {record}")
    item = {"source": "crm", "record": "Ada Lovelace, 36"}
    got = [p.run(item), p.predict(item), p.predict_with_confidence(item).data, asyncio.run(p.apredict(item)),
           *p.predict_batch([item, item], max_workers=2), *asyncio.run(p.apredict_batch([item]))]
    assert [u.age for u in got] == [36] * 7
    sent = {json.dumps(r.body["messages"]) for r in lm.chat_requests}
    assert len(sent) == 1 and "this crm record: Ada Lovelace, 36" in sent.pop()  # the same prompt each time
    by_text = prompter(instruction_prompt="Extract the person from: {text}")
    with pytest.raises(ConfigurationError, match=r"\{text\}.*text=\{") as info:
        by_text.run({"text": "Ada Lovelace, 36"})
    assert isinstance(info.value, ValueError)
    assert isinstance(by_text.predict_batch([{"text": "Ada Lovelace, 36"}], on_error="return")[0], ConfigurationError)
    assert by_text.run(text={"text": "Ada Lovelace, 36"}).age == 36
    assert by_text.predict_batch([{"text": {"text": "Alan Turing, 41"}}])[0].age == 41


def test_missing_input_errors_are_the_exceptions_016_code_catches(lm: FakeLLMServer, tmp_path: Path) -> None:
    p = prompter()
    with pytest.raises(ValueError, match="nothing to extract"):
        p.run()
    with pytest.raises(ValueError, match="needs an input"):
        Example(expected_output={"name": "x"})
    missing = (lambda: p.run(image_path=tmp_path / "no.png"), lambda: Example(pdf_path=tmp_path / "no.pdf").input_data)
    for call in missing:
        with pytest.raises(FileNotFoundError) as info:  # 0.1 raised FileNotFoundError for a missing file
            call()
        assert isinstance(info.value, ConfigurationError) and isinstance(info.value, ValueError)
    assert issubclass(ConfigurationError, ValueError) and issubclass(ExtractionError, ValueError)
    lm.add_response("this is not JSON", times=3)
    with pytest.raises(ValueError):  # 0.1 raised ValueError / pydantic's ValidationError on a bad answer
        p.run("Ada Lovelace, 36")
    with pytest.raises(ValueError, match="unknown evaluator"):
        p.optimize(EXAMPLES[:4], evaluate_fn="fuzzy-ish")
    with pytest.raises(ValueError, match="unknown optimizer"):
        p.optimize(EXAMPLES[:4], optimizer="no-such-optimizer")
    with pytest.raises(ValueError, match="model must be a Pydantic model class"):
        Prompter(model=User(name="a", age=1), model_id="openai/gpt-4o-mini")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Prompter: 0.1's constructor arguments, attributes, save/load
# --------------------------------------------------------------------------------------------------


def test_prompter_016_arguments_are_served(lm: FakeLLMServer, tmp_path: Path) -> None:
    p = prompter(
        api_key="sk-explicit",
        cache=str(tmp_path / "cache"),
        system_prompt="You extract people.",
        instruction_prompt="Read the record.",
        optimized_descriptions={"name": "The person's full name as written", "age": "User age"},
        optimized_system_prompt="You extract people from CRM records.",
        optimized_demos=[{"input_data": {"text": "Grace Hopper, 85"},
                          "expected_output": {"name": "Grace Hopper", "age": 85}}],
    )
    assert p.system_prompt == "You extract people from CRM records."  # served
    assert p._original_state.system_prompt == "You extract people."  # 0.1: system_prompt stays the original
    assert p.run("Ada Lovelace, 36").age == 36
    body = lm.chat_requests[-1].body
    system = _system(body)
    assert "You extract people from CRM records." in system and "Read the record." in system
    assert "The person's full name as written" in system
    assert any(m["role"] == "assistant" and "Grace Hopper" in message_text(m["content"]) for m in body["messages"])
    assert lm.chat_requests[-1].headers.get("authorization") == "Bearer sk-explicit"
    # 0.1's attributes show what is served
    assert p.optimized_descriptions["name"] == "The person's full name as written"
    assert p.optimized_system_prompt == "You extract people from CRM records."
    assert p.optimized_instruction_prompt == "Read the record."
    assert p.optimized_demos == [{"input": "Grace Hopper, 85", "output": {"name": "Grace Hopper", "age": 85},
                                  "input_data": {"text": "Grace Hopper, 85"},
                                  "expected_output": {"name": "Grace Hopper", "age": 85}}]
    # cache=<dir>: the same request is answered from it
    before = lm.request_count
    assert p.run("Ada Lovelace, 36").age == 36 and lm.request_count == before


def test_016_arguments_pass_the_keyword_check_a_misspelt_one_does_not(lm: FakeLLMServer) -> None:
    """The Prompter rejects unknown keywords (naming the accepted ones); 0.1's optimized_* are accepted."""
    with pytest.raises(ConfigurationError) as info:
        prompter(optimized_system_prompt="You extract people.", optimised_descriptions={"name": "Full name"})
    message = str(info.value)
    assert "optimised_descriptions" in message and "optimized_descriptions" in message and "timeout" in message
    assert isinstance(info.value, ValueError) and lm.request_count == 0


def test_prompter_016_attributes_before_and_after_optimize(lm: FakeLLMServer) -> None:
    p = prompter()
    assert p.optimized_descriptions == {} and p.optimized_system_prompt is None and p.optimized_demos is None
    result = p.optimize(EXAMPLES, optimizer="bootstrap", max_lm_calls=120, fallback="baseline")
    assert p.optimized_descriptions == result.optimized_descriptions == {"name": "User name", "age": "User age"}
    assert p.optimized_demos == result.optimized_demos
    assert p.optimized_system_prompt == result.optimized_system_prompt
    # 0.1 code assigned them
    p.optimized_descriptions = {"name": "Full name"}
    p.optimized_instruction_prompt = "Copy the name and the age."
    p.optimized_demos = [{"input_data": {"text": "Alan Turing, 41"}, "expected_output": {"name": "Alan Turing",
                                                                                         "age": 41}}]
    p.run("Ada Lovelace, 36")
    body = lm.chat_requests[-1].body
    assert "Full name" in _system(body) and "Copy the name and the age." in _system(body)
    assert sum(1 for m in body["messages"] if m["role"] == "assistant") == 1
    with pytest.raises(ValueError, match="does not have"):
        p.optimized_descriptions = {"nmae": "typo"}


def test_nested_016_paths_are_translated(lm: FakeLLMServer) -> None:
    lm.respond_from_schema()
    p = prompter(model=Customer, optimized_descriptions={"addresses.street": "Street, then house number",
                                                         "name": "name", "addresses.city": "city"})
    # 0.1 wrote a field's name where it had no description: that is not taken as a description
    assert p.state.field_descriptions == {"addresses[].street": "Street, then house number"}
    p.run("Customer Ada, Main Street 1, London")
    assert "Street, then house number" in _system(lm.chat_requests[-1].body)


def test_from_optimization_result_and_dspy_configure(lm: FakeLLMServer) -> None:
    import dspy

    p = prompter()
    result = p.optimize(EXAMPLES, optimizer="bootstrap", max_lm_calls=120, fallback="baseline")
    with dspy.context(lm=dspy.LM("openai/gpt-4o-mini", api_base=lm.base_url, api_key="k", cache=False)):
        q = Prompter.from_optimization_result(User, result)  # 0.1: DSPy must be configured
        assert q.state == result.state
        assert q.run("Ada Lovelace, 36").age == 36


def test_save_and_load_016_keywords(lm: FakeLLMServer, tmp_path: Path) -> None:
    p = prompter(system_prompt="You extract people.")
    with pytest.warns(DeprecationWarning, match=r"save\(path\)"):
        p.save(save_path=tmp_path / "p")
    with pytest.warns(DeprecationWarning, match=r"load\(path\)"):
        q = Prompter.load(load_path=tmp_path / "p", model=User, model_id="openai/gpt-4o-mini", api_key="k",
                          cache=False)
    assert q.system_prompt == "You extract people." and q.run("Ada Lovelace, 36").age == 36
    r = Prompter.load(tmp_path / "p")  # without model=: the class is rebuilt from the saved schema (0.1: None)
    assert r.run("Ada Lovelace, 36").age == 36 and r.model.__name__ == "User"
    with pytest.raises(ValueError, match="not both"):
        p.save(tmp_path / "a", save_path=tmp_path / "b")


# --------------------------------------------------------------------------------------------------
# optimize(): 0.1's arguments
# --------------------------------------------------------------------------------------------------


def optimize_016(p: Prompter, **kw: Any) -> tuple[Any, list[str]]:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = p.optimize(examples=EXAMPLES, **kw)
    return result, deprecations(record)


RENAMED: list[tuple[dict[str, Any], str]] = [
    ({"evaluator_config": {"default": {"type": "exact"}, "field_overrides": {"name": {"type": "levenshtein",
                                                                                    "config": {"threshold": 0.8}}}}},
     "evaluator="),
    ({"optimizer_kwargs": {"max_bootstrapped_demos": 2}}, "keyword arguments of optimize()"),
    ({"compile_kwargs": {}}, "keyword arguments of optimize()"),
    ({"skip_field_description_optimization": True}, "optimize_descriptions=False"),
    ({"skip_system_prompt_optimization": True}, "optimize_prompts="),
    ({"skip_instruction_prompt_optimization": True}, "optimize_prompts="),
    ({"early_stopping_patience": 2}, "max_lm_calls="),
    ({"auto_generate_prompts": True}, "default"),
    ({"skip_score_threshold": 0.9}, "exclude_fields="),
    ({"init_temperature": 0.7}, "reflection_temperature"),
    ({"fast": True}, "sequential="),
]


@pytest.mark.parametrize(("kw", "replacement"), RENAMED, ids=[next(iter(k)) for k, _ in RENAMED])
def test_016_optimize_arguments_run_and_name_their_replacement(
    lm: FakeLLMServer, kw: dict[str, Any], replacement: str
) -> None:
    p = prompter()
    result, warned = optimize_016(p, optimizer="bootstrap", max_lm_calls=150, **kw)
    assert result.validated and result.n_val >= 1
    name = next(iter(kw))
    assert any(f"{name}=" in m and replacement in m and "0.1" in m for m in warned), warned


def test_016_positional_optimize_arguments(lm: FakeLLMServer) -> None:
    p = prompter()
    with pytest.warns(DeprecationWarning, match="pass them by keyword: evaluate_fn=..., optimizer=..., train_split"):
        result = p.optimize(EXAMPLES, "exact", "bootstrap", 0.75)
    assert result.optimizer == "bootstrap" and result.n_val == 2
    with pytest.raises(TypeError, match="multiple values"):
        p.optimize(EXAMPLES, "exact", evaluate_fn="exact")


def test_deprecation_warnings_point_at_the_callers_line(lm: FakeLLMServer) -> None:
    p = prompter()
    with pytest.warns(DeprecationWarning) as record:
        p.optimize(EXAMPLES, optimizer="bootstrap", max_lm_calls=150, early_stopping_patience=3)
    assert record[0].filename == __file__


def test_skip_flags_keep_those_texts_under_gepa(lm: FakeLLMServer) -> None:
    p = prompter(system_prompt="You extract people.")
    with pytest.warns(DeprecationWarning):
        result = p.optimize(
            EXAMPLES, optimizer="gepa", max_metric_calls=24, skip_field_description_optimization=True,
            skip_system_prompt_optimization=True, evaluate_fn="exact",
        )
    for state in (result.state, result.candidate_state):
        assert state is not None and dict(state.field_descriptions) == {}
        assert state.system_prompt == "You extract people."


def test_evaluator_config_scores_as_configured(lm: FakeLLMServer) -> None:
    def age_close(extracted: Any, expected: Any, input_data: Any = None, field_path: Any = None) -> float:
        return 1.0 if abs(int(extracted) - int(expected)) <= 2 else 0.0

    p = prompter()
    lm.add_response({"name": "Ada Lovelac", "age": 31})  # off by one character and one year
    with pytest.warns(DeprecationWarning, match="evaluator="):
        report_like = p.optimize(
            EXAMPLES[1:2], valset=EXAMPLES[:1], optimizer="bootstrap", compare_original=False,
            evaluator_config={"default": "exact", "field_overrides": {
                "name": {"type": "levenshtein", "config": {"threshold": 0.8}},
                "age": {"type": "python_code", "config": {"function": age_close}},
            }},
        )
    assert report_like.baseline_per_field == {"name": 1.0, "age": 1.0}


@pytest.mark.parametrize("name", ["miprov2zeroshot", "MIPROv2ZeroShot"])
def test_miprov2zeroshot_runs_from_one_example_on(lm: FakeLLMServer, name: str) -> None:
    p = prompter()
    with pytest.warns(DeprecationWarning, match="optimizer='gepa'"):
        result = p.optimize(EXAMPLES[:3], optimizer=name, max_metric_calls=12)
    assert result.optimizer == "gepa" and result.demo_budget == 0 and result.validated
    # 0.1's init_temperature (MIPROv2's proposal temperature) is GEPA's reflection temperature
    lm.set_responder(lambda body: {"name": "Nobody", "age": 0} if _schema_name(body) == "User" else
                     {"text": "Copy the name and the age as written."})
    with pytest.warns(DeprecationWarning) as record:
        p.optimize(EXAMPLES[:6], optimizer=name, max_metric_calls=12, init_temperature=0.3)
    assert any("reflection_temperature" in m for m in deprecations(list(record)))
    proposals = [r for r in lm.chat_requests if _schema_name(r.body) != "User"]
    assert proposals and {r.body.get("temperature") for r in proposals} == {0.3}
    with pytest.warns(DeprecationWarning, match="optimizer='gepa'"):
        one = p.optimize(EXAMPLES[:1], optimizer=name)
    assert not one.validated


@pytest.mark.parametrize(
    "name", ["BootstrapFewShot", "bootstrapfewshot", "bootstrapfewshotwithrandomsearch", "copro", "simba", "gepa",
             "MIPROv2", "bootstrapfewshotwithoptuna"],
)
def test_016_optimizer_names(lm: FakeLLMServer, name: str) -> None:
    p = prompter()
    kw: dict[str, Any] = {"max_lm_calls": 400}
    if name == "MIPROv2":
        kw.update(auto=None, num_candidates=2, num_trials=2)
    if name == "gepa":
        kw.update(max_metric_calls=16)
    if name == "bootstrapfewshotwithoptuna":  # built by name, as 0.1 did; its compile() needs max_demos
        kw.update(num_candidate_programs=2, max_demos=2)
    result = p.optimize(EXAMPLES, optimizer=name, **kw)
    assert result.validated and result.lm_calls > 0 and result.n_val >= 1
    assert result.optimizer  # says what ran


def test_any_dspy_teleprompter_name_016_looked_up(lm: FakeLLMServer) -> None:
    p = prompter()
    result = p.optimize(EXAMPLES, optimizer="labeledfewshot", k=2)  # 0.1 could not build it (no metric=)
    assert result.optimizer == "LabeledFewShot" and result.validated
    before = lm.request_count
    with pytest.raises(ValueError, match=r"optimizer=dspy\.KNNFewShot"):  # needs k and a trainset: pass one
        p.optimize(EXAMPLES, optimizer="knnfewshot")
    assert lm.request_count == before


def test_016_optimizer_kwargs_and_compile_kwargs_reach_the_teleprompter(lm: FakeLLMServer) -> None:
    p = prompter()
    with pytest.warns(DeprecationWarning):
        result = p.optimize(
            EXAMPLES, optimizer="miprov2", optimizer_kwargs={"auto": None, "num_candidates": 2},
            compile_kwargs={"num_trials": 2, "minibatch": False}, max_lm_calls=400,
        )
    assert result.validated and result.stages == ["miprov2"]
    with pytest.raises(ValueError, match="num_trials"), pytest.warns(DeprecationWarning):  # given twice
        p.optimize(EXAMPLES, optimizer="miprov2", num_trials=2, compile_kwargs={"num_trials": 3})


def test_on_progress_gets_016_field_optimization_progress(lm: FakeLLMServer) -> None:
    from dspydantic import FieldOptimizationProgress

    seen: list[Any] = []

    def on_progress(p: FieldOptimizationProgress) -> None:  # a 0.1 callback: attributes
        seen.append(p)
        assert f"{p.phase}: {p.score_before:.0%} -> {p.score_after:.0%} ({p.elapsed_seconds:.1f}s)"

    p = prompter()
    result = p.optimize(EXAMPLES, optimizer="gepa", max_metric_calls=16, on_progress=on_progress)
    phases = [e.phase for e in seen]
    assert phases[0] == "start" and "baseline" in phases and phases[-1] == "complete"
    assert all(isinstance(e, FieldOptimizationProgress) and isinstance(e, dict) for e in seen)
    assert seen[-1]["event"] == "done"  # and our event dict, for new-style callbacks
    assert seen[-1].score_before == result.baseline_score and seen[-1].total_fields == 2
    assert seen[-1].improved == result.accepted
    made = FieldOptimizationProgress(phase="fields", score_before=0.5, score_after=0.75, improved=True,
                                     total_fields=2, field_path="name")
    assert made.field_path == "name" and made.improved


def test_evaluate_fn_dspy_lm_judges_unlabelled_examples(lm: FakeLLMServer) -> None:
    import dspy

    unlabelled = [Example(text=e.text, expected_output=None) for e in EXAMPLES]
    with FakeLLMServer() as judge_srv:
        judge_srv.set_responder(user_responder)
        judge = dspy.LM("openai/judge", api_base=judge_srv.base_url, api_key="k", cache=False)
        p = prompter()
        with pytest.warns(DeprecationWarning, match="score_judge"):
            result = p.optimize(unlabelled, evaluate_fn=judge, optimizer="bootstrap", max_lm_calls=200)
        judged = [r for r in judge_srv.chat_requests if "judgement" in json.dumps(r.body.get("response_format"))]
        assert judged and result.baseline_score == 1.0  # the judge said 1.0 for every field
    assert not any("judgement" in json.dumps(r.body.get("response_format")) for r in lm.chat_requests)


def test_evaluate_fn_016_custom_judge_is_accepted_and_says_what_scores_instead(lm: FakeLLMServer) -> None:
    def judge(example: Any, extracted_data: Any, optimized_descriptions: Any, optimized_system_prompt: Any,
              optimized_instruction_prompt: Any) -> float:
        return 1.0

    p = prompter()
    with pytest.warns(DeprecationWarning, match=r"evaluator=whole_output"):
        result = p.optimize(EXAMPLES, evaluate_fn=judge, optimizer="bootstrap", max_lm_calls=150)
    assert result.validated
    # a field evaluator with 0.1's python_code signature is not mistaken for one
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        p.optimize(EXAMPLES, optimizer="bootstrap", max_lm_calls=150,
                   evaluate_fn=lambda extracted, expected, input_data, field_path: float(extracted == expected))


# --------------------------------------------------------------------------------------------------
# OptimizationResult
# --------------------------------------------------------------------------------------------------


def test_optimization_result_has_016_fields(lm: FakeLLMServer) -> None:
    from dspydantic import OptimizationResult

    p = prompter()
    result = p.optimize(EXAMPLES, optimizer="bootstrap", max_lm_calls=150)
    assert isinstance(result, OptimizationResult)
    assert result.api_calls == result.lm_calls > 0 and result.total_tokens > 0
    assert result.estimated_cost_usd is None or result.estimated_cost_usd >= 0
    m = result.metrics
    for key in ("average_score", "baseline_score", "improvement", "improvement_percent", "validation_size",
                "training_size"):
        assert key in m
    assert m["validation_size"] == result.n_val and m["training_size"] == result.n_train
    assert isinstance(result.optimized_descriptions, dict)
    assert result.optimized_system_prompt == result.state.system_prompt
    assert result.optimized_instruction_prompt == result.state.instruction_prompt
    assert isinstance(result.optimized_demos, list)
    assert OptimizationResult.from_json(result.to_json()).validated


# --------------------------------------------------------------------------------------------------
# evaluators
# --------------------------------------------------------------------------------------------------


def test_016_evaluator_classes_and_factory(lm: FakeLLMServer) -> None:
    import dspy

    from dspydantic import (
        EVALUATOR_REGISTRY,
        BaseEvaluator,
        EvaluatorFactory,
        LabelModelGrader,
        LevenshteinEvaluator,
        PredefinedScoreEvaluator,
        PythonCodeEvaluator,
        ScoreJudge,
        StringCheckEvaluator,
        TextSimilarityEvaluator,
        register_evaluator,
    )
    from dspydantic.evaluators.config import EvaluatorFactory as FactoryAtPath

    assert FactoryAtPath is EvaluatorFactory
    assert StringCheckEvaluator(config={"case_sensitive": True}).evaluate("ABC", "abc") == 0.0
    assert StringCheckEvaluator(config={}).evaluate("ABC", "ABC") == 1.0
    assert 0.0 < LevenshteinEvaluator(config={}).evaluate("Jon", "John") < 1.0
    assert LevenshteinEvaluator(config={"threshold": 0.95}).evaluate("Jon", "John") == 0.0
    assert TextSimilarityEvaluator(config={"model": "sentence-transformers/all-MiniLM-L6-v2",
                                           "threshold": 0.5}).evaluate("same", "same") == 1.0
    assert PythonCodeEvaluator(config={"function": lambda e, x, input_data=None, field_path=None: 0.25}).evaluate(
        1, 2) == 0.25
    assert PredefinedScoreEvaluator(config={"scores": [80, 100], "max_value": 100}).evaluate(None, None) == 0.8
    judge_lm = dspy.LM("openai/judge", api_base=lm.base_url, api_key="k", cache=False)
    assert ScoreJudge(config={"lm": judge_lm, "criteria": "Same meaning?", "temperature": 0.0}).evaluate(
        "Dr. Ada", "Ada") == 1.0
    grader = LabelModelGrader(config={"allowed_labels": ["positive", "negative"], "lm": judge_lm})
    assert grader.evaluate("great", "positive") == 1.0  # the grader maps "great" to "positive"
    with pytest.warns(DeprecationWarning, match="passing_labels"):
        LabelModelGrader(config={"allowed_labels": ["a", "b"], "lm": judge_lm, "partial_match_score": 0.5})
    with pytest.warns(DeprecationWarning, match="embedder"):
        TextSimilarityEvaluator(config={"provider": "openai", "api_key": "sk-x", "model": "text-embedding-3-small"})
    assert TextSimilarityEvaluator(config={"model_name": "my/model"}).model_name == "my/model"  # 0.1 docs' key
    assert EvaluatorFactory.create("exact").evaluate("a", "a") == 1.0
    fuzzy = EvaluatorFactory.create({"type": "levenshtein", "config": {"threshold": 0.8}})
    assert isinstance(fuzzy, LevenshteinEvaluator)

    class RatingEvaluator:  # 0.1's documented custom evaluator protocol
        def __init__(self, config: dict[str, Any] | None = None) -> None:
            self.tolerance = (config or {}).get("tolerance", 0.5)

        def evaluate(self, extracted: Any, expected: Any, input_data: Any, field_path: Any) -> float:
            return 1.0 if abs(float(extracted) - float(expected)) <= self.tolerance else 0.0

    made = EvaluatorFactory.create({"class": RatingEvaluator, "config": {"tolerance": 2}})
    assert made.evaluate(31, 30, None, "age") == 1.0
    assert EvaluatorFactory.parse_evaluator_config({"type": "exact", "config": {}}, default_lm=judge_lm) == (
        "exact", {"lm": judge_lm})

    class Within(BaseEvaluator):
        def evaluate(self, extracted: Any, expected: Any, input_data: Any = None, field_path: Any = None) -> float:
            return 1.0 if abs(int(extracted) - int(expected)) <= 1 else 0.0

    register_evaluator("within_one_016", Within)
    register_evaluator(name="within_one_016_kw", evaluator_class=Within)  # 0.1.6's keyword names
    assert EVALUATOR_REGISTRY["within_one_016_kw"] is Within
    assert EVALUATOR_REGISTRY["within_one_016"] is Within
    p = prompter()
    lm.add_response({"name": "Ada Lovelace", "age": 31})
    result = p.optimize(EXAMPLES[1:2], valset=EXAMPLES[:1], optimizer="bootstrap", compare_original=False,
                        evaluate_fn={"default": "exact", "field_overrides": {"age": "within_one_016"}})
    assert result.baseline_per_field["age"] == 1.0


# --------------------------------------------------------------------------------------------------
# PydanticOptimizer, persistence, extractor, utils, module
# --------------------------------------------------------------------------------------------------


def test_pydantic_optimizer_runs_on_the_dspy_configured_lm(lm: FakeLLMServer) -> None:
    import dspy

    from dspydantic import PydanticOptimizer

    configured = dspy.LM("openai/gpt-4o-mini", api_base=lm.base_url, api_key="k", cache=False)
    with dspy.context(lm=configured):
        with pytest.warns(DeprecationWarning, match=r"Prompter\(model=.*\)\.optimize"):
            opt = PydanticOptimizer(model=User, examples=EXAMPLES, evaluate_fn="exact", optimizer="bootstrapfewshot",
                                    system_prompt="You extract people.", num_threads=2, early_stopping_patience=2)
        with pytest.warns(DeprecationWarning, match="early_stopping_patience"):
            result = opt.optimize()
        assert result.validated and result.api_calls > 0
        assert opt.prompter is not None and opt.prompter.state == result.state
        served = Prompter.from_optimization_result(User, result)
        assert served.run("Ada Lovelace, 36").age == 36
    with pytest.raises(ValueError, match="at least one example"), pytest.warns(DeprecationWarning):
        PydanticOptimizer(model=User, examples=[])
    with pytest.raises(ValueError, match="model cannot be None"), pytest.warns(DeprecationWarning):
        PydanticOptimizer(model=None, examples=EXAMPLES)


def test_016_persistence_functions(lm: FakeLLMServer, tmp_path: Path) -> None:
    from dspydantic.persistence import PersistenceError, load_prompter_state, save_prompter_state
    from dspydantic.types import PrompterState

    state = PrompterState(
        model_schema=User.model_json_schema(),
        optimized_descriptions={"name": "Full name of the person", "age": "Age in years"},
        optimized_system_prompt="You extract people.",
        optimized_instruction_prompt=None,
        model_id="openai/gpt-4o-mini",
        model_config={"api_key": "sk-must-not-be-saved"},
        version="0.1.6",
        metadata={},
        optimized_demos=[{"input_data": {"text": "Alan Turing, 41"}, "expected_output": {"name": "Alan Turing",
                                                                                         "age": 41}}],
    )
    with pytest.warns(DeprecationWarning, match=r"prompter\.save\(path\)"):
        save_prompter_state(state, tmp_path / "old")
    assert "sk-must-not-be-saved" not in "".join(f.read_text() for f in (tmp_path / "old").iterdir())
    p = Prompter.load(tmp_path / "old", model=User)
    assert p.system_prompt == "You extract people." and p.field_descriptions["name"] == "Full name of the person"
    assert p.run("Ada Lovelace, 36").age == 36 and len(p.demos) == 1
    p.save(tmp_path / "new")
    with pytest.warns(DeprecationWarning, match=r"Prompter\.load\(path\)"):
        back = load_prompter_state(tmp_path / "new")
    assert back.optimized_system_prompt == "You extract people."
    assert back.optimized_descriptions["age"] == "Age in years" and back.optimized_demos
    with pytest.raises(PersistenceError), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        load_prompter_state(tmp_path / "missing")


def test_016_extractor_functions() -> None:
    from dspydantic import apply_optimized_descriptions, create_optimized_model, extract_field_descriptions

    assert extract_field_descriptions(User) == {"name": "User name", "age": "User age"}
    nested = extract_field_descriptions(Customer)
    assert nested == {"name": "name", "addresses": "Known addresses", "addresses.street": "Street and number",
                      "addresses.city": "city"}
    schema = apply_optimized_descriptions(Customer, {"addresses.city": "City name", "name": "Customer name"})
    assert schema["properties"]["addresses"]["items"]["properties"]["city"]["description"] == "City name"
    assert schema["properties"]["name"]["description"] == "Customer name"
    Better = create_optimized_model(Customer, {"addresses.city": "City name", "name": "Customer name"})
    assert issubclass(Better, Customer)
    full = Better.model_json_schema()
    assert full["properties"]["name"]["description"] == "Customer name"
    city = json.dumps(full)
    assert "City name" in city
    made = Better(name="  Ada ", addresses=[{"street": "Main St 1", "city": "London"}])
    assert made.name == "Ada"  # the validator is inherited
    assert create_optimized_model(User, {}) is User


def test_016_extract_field_types() -> None:
    """0.1.6's ``dspydantic.extractor.extract_field_types``: field path -> readable type name."""
    import enum
    from typing import Literal

    from dspydantic.extractor import extract_field_types

    class Tier(enum.Enum):
        GOLD = "gold"
        SILVER = "silver"

    class Account(BaseModel):
        owner: Customer
        tier: Tier
        kind: Literal["personal", "business"]
        note: str | None = None
        scores: dict[str, float] = {}
        referrer: Account | None = None

    assert extract_field_types(User) == {"name": "str", "age": "int"}
    assert extract_field_types(Customer) == {
        "name": "str", "addresses": "list[Address]", "addresses.street": "str", "addresses.city": "str",
    }
    types = extract_field_types(Account)
    assert types["owner"] == "Customer" and types["owner.addresses.city"] == "str"
    assert types["tier"] == 'Enum["gold", "silver"]' and types["kind"] == 'Literal["personal", "business"]'
    assert types["note"] == "Union[str, NoneType]" and types["scores"] == "dict[str, float]"
    assert types["referrer"] == "Union[Account, NoneType]" and "referrer.owner" not in types  # not expanded forever
    assert extract_field_types(User, prefix="user") == {"user.name": "str", "user.age": "int"}


def test_016_utils_functions(tmp_path: Path) -> None:
    from dspydantic import image_to_base64, pdf_to_base64_images, prepare_input_data

    img = png_file(tmp_path)
    b64 = image_to_base64(img)
    assert base64.b64decode(b64) == img.read_bytes()
    pdf = tmp_path / "doc.pdf"
    pdf.write_bytes(text_pdf(["Invoice from Acme, total 10 EUR", "Page two"]))
    pages = pdf_to_base64_images(pdf, dpi=36)
    assert len(pages) == 2 and png_width("data:image/png;base64," + pages[0]) == 306  # 8.5 in at 36 dpi
    data = prepare_input_data(text="see image", image_path=img, image_base64=b64, pdf_path=pdf, pdf_dpi=36)
    assert data["text"] == "see image" and len(data["images"]) == 4
    with pytest.raises(ValueError, match="at least one input"):
        prepare_input_data()
    with pytest.raises(FileNotFoundError):
        image_to_base64(tmp_path / "missing.png")


def test_016_create_output_model_is_free_text_mode(lm: FakeLLMServer) -> None:
    from dspydantic import create_output_model

    Output = create_output_model()
    assert Output(output="excellent").output == "excellent"
    lm.respond_from_schema({"output": "positive"})
    free = Prompter(model_id="openai/gpt-4o-mini")  # 0.1: free text needed string labels; here: no model
    assert free.run("I love it").output == "positive"
    result = free.optimize([Example(text="I love it", expected_output="positive"),
                            Example(text="Awful", expected_output="negative")], optimizer="bootstrap")
    assert result.validated


def test_016_signatures_warn_and_keep_their_fields() -> None:
    with pytest.warns(DeprecationWarning, match="GEPA"):
        from dspydantic.module import OptimizeFieldDescription
    assert set(OptimizeFieldDescription.input_fields) == {"field_description", "field_type"}
    assert set(OptimizeFieldDescription.output_fields) == {"optimized_field_description"}


@pytest.fixture(autouse=True)
def _no_dspy_global_lm() -> Iterator[None]:
    """0.1 code configured DSPy globally; these tests use dspy.context only, and check nothing leaks."""
    yield
    import sys

    dspy = sys.modules.get("dspy")
    if dspy is not None:
        assert dspy.settings.lm is None
