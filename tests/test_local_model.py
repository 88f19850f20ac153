"""The embedded local backend on the real models (Qwen2.5-0.5B from the split packages, SmolLM2-135M).

Tests marked ``local`` load a real model; the unmarked ones at the top need no model.
Model-file tests assemble the 491 MB file into one temporary ``DSPYDANTIC_MODEL_DIR`` shared by this
module; the inference tests use the default cache directory, so it is assembled at most once there.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from dspydantic.errors import ConfigurationError, LMError, MissingExtraError
from dspydantic.lm._assemble import QWEN, SplitModel, ensure_split_model
from dspydantic.lm._base import LMBackend, LMRequest
from dspydantic.lm.local import LocalBackend, bound_string_lengths, local_model_path, resolve_local
from dspydantic.lm.local.grammar import every_key_written
from dspydantic.lm.settings import ModelSettings

SRC = Path(__file__).resolve().parents[1] / "src"


# ------------------------------------------------------------------------------------------ no model


def test_bound_string_lengths_adds_max_length_to_free_strings_only() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "short": {"type": "string", "maxLength": 5},
            "kind": {"type": "string", "enum": ["a", "b"]},
            "day": {"type": "string", "format": "date"},
            "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "either": {"type": ["string", "null"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "ref": {"$ref": "#/$defs/Item"},
        },
        "$defs": {"Item": {"type": "object", "properties": {"label": {"type": "string"}}}},
    }
    out = bound_string_lengths(schema, 300)
    props = out["properties"]
    assert props["name"]["maxLength"] == 300
    assert props["short"]["maxLength"] == 5
    assert "maxLength" not in props["kind"] and "maxLength" not in props["day"]
    assert "maxLength" not in props["code"]
    assert props["maybe"]["anyOf"][0]["maxLength"] == 300
    assert props["either"] == {"anyOf": [{"type": "string", "maxLength": 300}, {"type": "null"}]}
    assert props["tags"]["items"]["maxLength"] == 300
    assert out["$defs"]["Item"]["properties"]["label"]["maxLength"] == 300
    assert "maxLength" not in schema["properties"]["name"]  # the input is not modified
    assert bound_string_lengths(schema, None) == schema


def test_every_key_that_may_be_null_is_required_in_the_grammar_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "vendor": {"type": "string"},
            "number": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "pages": {"type": "integer", "default": 1},  # not nullable: stays optional (no invented value)
            "note": {"type": ["string", "null"]},
            "item": {"$ref": "#/$defs/Item"},
        },
        "required": ["vendor", "item"],
        "$defs": {"Item": {"type": "object", "properties": {
            "label": {"type": "string"}, "sku": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        }, "required": ["label"]}},
    }
    out = every_key_written(schema)
    assert out["required"] == ["vendor", "number", "note", "item"]  # the model's field order
    assert out["$defs"]["Item"]["required"] == ["label", "sku"]
    assert schema["required"] == ["vendor", "item"]  # the input is not modified
    assert every_key_written({"type": "string"}) == {"type": "string"}


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs dspydantic[local]")
def test_the_grammar_makes_the_model_write_an_optional_key_before_the_next_one() -> None:
    # what the converter does with and without the change: an optional key may be skipped (and goes last),
    # a required nullable key has to be written, in order, as a value or null
    from dspydantic.lm.local import _llama

    schema = {
        "type": "object",
        "properties": {"vendor": {"type": "string"}, "number": {"type": ["string", "null"]},
                       "total": {"type": "string"}},
        "required": ["vendor", "total"],
    }
    before = _llama.gbnf_from_json_schema(json.dumps(schema))
    after = _llama.gbnf_from_json_schema(json.dumps(every_key_written(schema)))
    root_before = next(line for line in before.splitlines() if line.startswith("root ::="))
    root_after = next(line for line in after.splitlines() if line.startswith("root ::="))
    assert root_before.index("total") < root_before.index("number")  # optional keys come after the required
    assert ")?" in root_before
    assert root_after.index("vendor") < root_after.index("number") < root_after.index("total")
    assert ")?" not in root_after


def test_missing_model_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPYDANTIC_MODEL_DIR", str(tmp_path))
    ghost = SplitModel(
        name="ghost",
        filename="ghost.gguf",
        sha256="0" * 64,
        size=1,
        parts=(("dspydantic_no_such_model_pkg", "dspydantic-no-such-model-pkg", "data/part01.bin"),),
        label="ghost",
    )
    with pytest.raises(MissingExtraError, match=r"pip install 'dspydantic\[local\]'") as info:
        ensure_split_model(ghost)
    assert info.value.package == "dspydantic-no-such-model-pkg"
    assert not list(tmp_path.iterdir())


def test_llama_cpp_versions_outside_0_3_are_refused() -> None:
    from dspydantic.lm.local import _llama

    for ok in ("0.3.0", "0.3.36", "0.3.99.dev1", None):
        _llama.check_version(ok)
    for bad in ("0.2.90", "0.4.0", "1.0.0", "unknown"):
        with pytest.raises(_llama.UnsupportedLlamaVersionError, match=re.escape(bad)) as info:
            _llama.check_version(bad)
        assert isinstance(info.value, MissingExtraError) and info.value.extra == "local"
        assert "0.3.x" in str(info.value) and "pip install 'dspydantic[local]'" in str(info.value)


def test_an_unsupported_llama_cpp_fails_when_the_local_backend_is_imported() -> None:
    code = (
        "import importlib.metadata as md\n"
        "real = md.version\n"
        "md.version = lambda name: '0.4.2' if name == 'llama-cpp-python' else real(name)\n"
        "from dspydantic.errors import MissingExtraError\n"
        "try:\n"
        "    from dspydantic import Prompter\n"
        "    Prompter(model_id='local')\n"
        "except MissingExtraError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.startswith("UnsupportedLlamaVersionError llama-cpp-python 0.4.2 is installed"), out.stderr
    assert "0.3.x" in out.stdout


_PRIVATE_LLAMA = re.compile(
    r"llama\w*\._\w|\._grammar\b|_requires_eval|\.input_ids\[|\.n_tokens\s*=|"
    r"llama_sampler_|llama_state_|llama_token_data|LlamaGrammar|llama_chat_format"
)


def test_only_one_module_reaches_into_llama_cpp() -> None:
    offenders = []
    for path in sorted((SRC / "dspydantic").rglob("*.py")):
        if path.name == "_llama.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if _PRIVATE_LLAMA.search(line):
                offenders.append(f"{path.relative_to(SRC)}:{n}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize(
    "model_id", ["openai/gpt-4o", "local:", "local/no-such-model", "local:/no/such.gguf"]
)
def test_bad_local_model_ids(model_id: str) -> None:
    with pytest.raises(ConfigurationError):
        resolve_local(model_id)


# --------------------------------------------------------------------------------- model assembly


@pytest.fixture(scope="module")
def _scratch_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One model directory for the assembly tests of this module (deleted afterwards: 491 MB)."""
    path = tmp_path_factory.mktemp("models")
    yield path
    for child in path.iterdir():
        child.unlink()


@pytest.fixture()
def model_dir(_scratch_models: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DSPYDANTIC_MODEL_DIR", str(_scratch_models))
    return _scratch_models


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


_CHILD = """
import json, sys
from dspydantic.lm.local import local_model_path
p = local_model_path()
print(json.dumps({"path": str(p), "ino": p.stat().st_ino}))
"""


@pytest.mark.local
def test_concurrent_assembly_from_three_processes(model_dir: Path) -> None:
    target = model_dir / QWEN.filename
    if target.exists():
        pytest.skip("assembled already by an earlier test in this module")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]
    outs = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert {o["path"] for o in outs} == {str(target)}
    # assembled once: every process got the very same file (a second assembly would replace the inode)
    assert {o["ino"] for o in outs} == {target.stat().st_ino}
    assert target.stat().st_size == QWEN.size
    assert _sha256(target) == QWEN.sha256
    assert not [p.name for p in model_dir.iterdir() if p.name.endswith(".partial")]


@pytest.mark.local
def test_corrupt_or_partial_cache_file_is_rebuilt(model_dir: Path) -> None:
    path = local_model_path()
    assert path.parent == model_dir

    # bytes flipped in place, with the modification time put back: ctime still gives it away
    st = path.stat()
    with path.open("r+b") as f:
        f.seek(200_000_000)
        original = f.read(16)
        f.seek(200_000_000)
        f.write(bytes(b ^ 0xFF for b in original))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert local_model_path() == path
    with path.open("rb") as f:
        f.seek(200_000_000)
        assert f.read(16) == original

    # truncated (as if a copy was interrupted)
    with path.open("r+b") as f:
        f.truncate(QWEN.size // 3)
    assert local_model_path().stat().st_size == QWEN.size

    # a leftover temp file of a killed process is cleaned up by the next assembly
    leftover = model_dir / f".{QWEN.filename}.dead.partial"
    leftover.write_bytes(b"x" * 1000)
    path.write_bytes(b"not a gguf")
    local_model_path()
    assert not leftover.exists()
    assert _sha256(path) == QWEN.sha256


@pytest.mark.local
def test_valid_file_without_sidecar_is_rehashed_not_rebuilt(model_dir: Path) -> None:
    path = local_model_path()
    sidecar = path.with_name(path.name + ".verified")
    sidecar.unlink()
    ino = path.stat().st_ino
    assert local_model_path() == path
    assert path.stat().st_ino == ino  # verified in place, not copied again
    assert sidecar.exists()


@pytest.mark.local
def test_corrupt_packages_raise_a_typed_error(model_dir: Path) -> None:
    wrong = SplitModel(
        name="qwen-first-part",
        filename="first-part.gguf",
        sha256="0" * 64,
        size=1,
        parts=QWEN.parts[:1],
        label="x",
    )
    with pytest.raises(ConfigurationError, match="corrupt"):
        ensure_split_model(wrong)
    assert not (model_dir / "first-part.gguf").exists()
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".first-part.gguf")]


# ------------------------------------------------------------------------------------- inference


class LineItem(BaseModel):
    description: str
    amount: float


class Invoice(BaseModel):
    vendor: str
    invoice_number: str | None
    currency: Literal["USD", "EUR", "GBP"]
    total: float
    line_items: list[LineItem]


SYSTEM = (
    "Extract the invoice as JSON. vendor: the company that issued the invoice. invoice_number: as printed, "
    "or null. currency: USD, EUR or GBP. total: the total amount due as a number. line_items: each billed "
    "item with its amount."
)

INVOICES = [
    (
        "INVOICE 2024-117\nNorthwind Traders\n2 x Paper boxes $40.00\nShipping $12.50\nTOTAL DUE: $52.50",
        "Northwind",
        52.5,
    ),
    (
        "Rechnung Nr. R-889 von Müller Bürobedarf GmbH\nDruckerpapier 19,00 EUR\nToner 61,00 EUR\n"
        "Gesamtbetrag: 80,00 EUR",
        "Müller",
        80.0,
    ),
    (
        "Hi Sam, thanks for your order! Receipt from Blue Bottle Coffee: 1 espresso machine cleaning, "
        "£30.00. Total charged: £30.00. No invoice number.",
        "Blue Bottle",
        30.0,
    ),
]


def _messages(document: str, system: str = SYSTEM) -> list[dict[str, Any]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": document}]


@pytest.fixture(scope="module")
def qwen() -> Iterator[LocalBackend]:
    backend = resolve_local("local")
    yield backend
    backend.close()


@pytest.mark.local
def test_backend_identity(qwen: LocalBackend) -> None:
    assert isinstance(qwen, LMBackend)
    grammar = f"keys+numbers+dates:{qwen.string_max_length}"
    assert qwen.cache_id == f"local:qwen2.5-0.5b-q4_k_m:{QWEN.sha256[:12]}:{grammar}"
    # a cached answer decoded under another grammar is never replayed
    assert LocalBackend(every_key=False).cache_id != qwen.cache_id
    plain = LocalBackend(every_key=False, numbers_as_text=False, dates_as_text=False, string_max_length=80)
    assert plain.cache_id.endswith(f"{QWEN.sha256[:12]}:json:80")
    assert qwen.context_window == 4096
    assert resolve_local("local/qwen2.5-0.5b").cache_id == qwen.cache_id


@pytest.mark.local
def test_constrained_json_parses_validates_and_extracts(qwen: LocalBackend) -> None:
    schema = Invoice.model_json_schema()
    texts = []
    for document, vendor, total in INVOICES:
        r = qwen.complete(LMRequest(messages=_messages(document), json_schema=schema))
        invoice = Invoice.model_validate_json(r.text)  # always parses and validates
        assert r.finish_reason == "stop"
        assert r.prompt_tokens > 50 and r.completion_tokens > 5
        assert vendor.lower() in invoice.vendor.lower(), r.text
        assert invoice.total == pytest.approx(total), r.text
        texts.append(r.text)
    # the lazy grammar check picks exactly the tokens the full per-token grammar mask picks
    full = LocalBackend(lazy_grammar=False)
    r = full.complete(LMRequest(messages=_messages(INVOICES[2][0]), json_schema=schema))
    assert r.text == texts[2]


@pytest.mark.local
def test_logprobs_from_the_logits_processor(qwen: LocalBackend) -> None:
    schema = {"type": "object", "properties": {"vendor": {"type": "string"}}, "required": ["vendor"]}
    r = qwen.complete(LMRequest(messages=_messages(INVOICES[0][0]), json_schema=schema, logprobs=True))
    assert json.loads(r.text)["vendor"]
    assert r.token_logprobs is not None and len(r.token_logprobs) == r.completion_tokens
    assert all(-math.inf < lp <= 0.0 for lp in r.token_logprobs)
    assert max(r.token_logprobs) > -0.1  # most tokens of an easy answer are near-certain

    # stopped by the token limit: the last token was never evaluated, it still gets its logprob
    r = qwen.complete(
        LMRequest(messages=_messages("Say hello."), settings=ModelSettings(max_tokens=5), logprobs=True)
    )
    assert r.finish_reason == "length" and r.completion_tokens == 5
    assert r.token_logprobs is not None and len(r.token_logprobs) == 5
    assert all(-math.inf < lp <= 0.0 for lp in r.token_logprobs)

    short = LMRequest(messages=_messages("Say hi."), settings=ModelSettings(max_tokens=3))
    assert qwen.complete(short).token_logprobs is None


@pytest.mark.local
def test_strings_are_bounded_so_output_cannot_run_away(qwen: LocalBackend) -> None:
    short = LocalBackend(string_max_length=12)
    schema = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}
    messages = _messages("Write a long, detailed summary of this invoice: " + INVOICES[0][0])
    r = short.complete(LMRequest(messages=messages, json_schema=schema))
    assert len(json.loads(r.text)["summary"]) <= 12
    assert short._shared is qwen._model()  # the model is loaded once per process and shared


@pytest.mark.local
def test_image_parts_are_refused(qwen: LocalBackend) -> None:
    content = [
        {"type": "text", "text": "What is on this invoice?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    with pytest.raises(ConfigurationError, match="text-only"):
        qwen.complete(LMRequest(messages=[{"role": "user", "content": content}]))


@pytest.mark.local
def test_kv_prefix_survives_interleaved_prompters(qwen: LocalBackend) -> None:
    """Two prompters with different static prefixes alternate; each warm call only evaluates its
    document, and a restored state answers exactly like a cold evaluation."""
    sys_a = SYSTEM + " Copy names exactly as they are written in the document. " * 8
    sys_b = "You are an accounting assistant reading scanned receipts and invoices. " * 8 + SYSTEM
    schema = {
        "type": "object",
        "properties": {"vendor": {"type": "string"}, "total": {"type": "number"}},
        "required": ["vendor", "total"],
    }

    def call(system: str, i: int) -> tuple[str, int]:
        before = qwen.stats["evaluated_prompt_tokens"]
        r = qwen.complete(LMRequest(messages=_messages(INVOICES[i][0], system), json_schema=schema))
        return r.text, qwen.stats["evaluated_prompt_tokens"] - before

    prefix_a = qwen.count_tokens(_messages("", sys_a))
    prefix_b = qwen.count_tokens(_messages("", sys_b))
    assert min(prefix_a, prefix_b) > 150
    restores = qwen.stats["state_restores"]
    call(sys_a, 0)
    call(sys_b, 0)
    text_a, evaluated_a = call(sys_a, 2)
    _, evaluated_b = call(sys_b, 2)
    assert qwen.stats["state_restores"] - restores >= 2
    doc_tokens = qwen.count_tokens(_messages(INVOICES[2][0], sys_a)) - prefix_a
    assert evaluated_a <= doc_tokens + 16
    assert evaluated_b <= doc_tokens + 16

    shared = qwen._model()
    with shared.lock:  # forget everything: a cold evaluation of the same prompt
        shared.states.clear()
        shared.llama.reset()
    cold_text, _ = call(sys_a, 2)
    assert cold_text == text_a
    assert json.loads(text_a)["total"] == pytest.approx(30.0)


@pytest.mark.local
def test_async_calls_run_concurrently_and_keep_the_loop_responsive(qwen: LocalBackend) -> None:
    async def scenario() -> tuple[list[Any], list[float], float]:
        ticks: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.02)

        tick_task = asyncio.create_task(ticker())
        started = time.perf_counter()
        results = await asyncio.gather(
            *(
                qwen.acomplete(
                    LMRequest(
                        messages=_messages(f"Count from {k} to {k + 20}."), settings=ModelSettings(max_tokens=16)
                    )
                )
                for k in range(3)
            )
        )
        elapsed = time.perf_counter() - started
        stop.set()
        await tick_task
        return results, ticks, elapsed

    results, ticks, elapsed = asyncio.run(scenario())
    assert len(results) == 3 and all(r.text and r.completion_tokens == 16 for r in results)
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert elapsed > 0.5
    assert len(ticks) >= elapsed / 0.02 * 0.3, (len(ticks), elapsed)  # the loop kept ticking
    assert max(gaps) < 0.5, max(gaps)


@pytest.mark.local
def test_smollm2_loads_from_its_package_and_answers() -> None:
    small = resolve_local("local/smollm2-135m", n_ctx=1024)
    try:
        assert small.cache_id.startswith("local:smollm2-135m-q4_1:")
        assert small.model_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
        r = small.complete(
            LMRequest(
                messages=[{"role": "user", "content": "What is the capital of France?"}],
                settings=ModelSettings(max_tokens=24),
            )
        )
        assert r.text.strip() and r.completion_tokens > 0
        schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        r = small.complete(
            LMRequest(
                messages=[{"role": "user", "content": "Name a city in France as JSON."}], json_schema=schema
            )
        )
        assert isinstance(json.loads(r.text)["city"], str)
        # the same file by path: same model instance, same cache id
        by_path = resolve_local(f"local:{small.model_path}", n_ctx=1024)
        assert by_path.cache_id == small.cache_id
        assert by_path._model() is small._model()
        by_path.close()
    finally:
        small.close()


@pytest.mark.local
def test_forked_child_gets_an_error_instead_of_hanging(qwen: LocalBackend) -> None:
    request = LMRequest(messages=_messages("Say hi."), settings=ModelSettings(max_tokens=2))
    qwen.complete(request)  # llama.cpp has computed in this process: its thread pool won't survive a fork
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            qwen.complete(request)
            code = 1
        except LMError as exc:
            code = 0 if "fork" in str(exc) else 2
        except BaseException:
            code = 3
        os._exit(code)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
