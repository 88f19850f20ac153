"""Prompter.save / Prompter.load: format, round trips, schema drift, atomic writes, secrets, 0.1.x directories.

Every extraction goes over real HTTP to ``FakeLLMServer``; nothing of the library is mocked. The only patched
functions are our own file-writing steps (``atomic._write_file`` / ``atomic._rename``), to simulate a
crash in the middle of a save.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import json
import os
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field
from pydantic_core import to_jsonable_python

import dspydantic
from dspydantic import PersistenceError, Prompter
from dspydantic._rebuild import rebuild_model
from dspydantic._render import Demo
from dspydantic._schema import fingerprint, model_schema
from dspydantic.errors import ConfigurationError
from dspydantic.lm.openai_compat import OpenAICompatBackend
from dspydantic.persist import SchemaDriftWarning, atomic, sanitize_api_base, schema_drift
from dspydantic.testing import FakeLLMServer

KEY = "sk-test-9f8e7d6c5b4a3f2e1d0c"


# --------------------------------------------------------------------------------------------------
# models covering every field type


class Color(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str = Field(description="Street and number")
    city: str
    zip: str | None = None


class LineItem(BaseModel):
    name: str = Field(description="Item name")
    qty: int = Field(ge=1)
    unit_price: Decimal


class Price(BaseModel):
    amount: float
    currency: Literal["EUR", "USD"] = "EUR"


class Everything(BaseModel):
    vendor: str = Field(description="Vendor name")
    count: int
    ratio: float
    paid: bool
    note: str | None = None
    kind: Literal["invoice", "receipt"]
    color: Color
    issued: dt.date
    created: dt.datetime
    total: Decimal
    address: Address
    items: list[LineItem]
    prices: dict[str, Price]
    code: Annotated[str, Field(min_length=2, max_length=8, pattern=r"^[A-Z0-9-]+$")]
    score: Annotated[float, Field(ge=0, le=1)] = 0.5
    tags: list[str] = Field(default_factory=list, max_length=5)


ANSWER: dict[str, Any] = {
    "vendor": "ACME GmbH",
    "count": 3,
    "ratio": 0.25,
    "paid": True,
    "note": None,
    "kind": "invoice",
    "color": "blue",
    "issued": "2024-03-01",
    "created": "2024-03-01T10:30:00",
    "total": "1234.50",
    "address": {"street": "Main St 1", "city": "Berlin", "zip": "10115"},
    "items": [{"name": "Bolt", "qty": 2, "unit_price": "0.10"}],
    "prices": {"net": {"amount": 1000.0, "currency": "EUR"}, "gross": {"amount": 1190.0}},
    "code": "INV-42",
    "score": 0.9,
    "tags": ["hardware"],
}


def tiny_png(rgb: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" + bytes(rgb)))
        + chunk(b"IEND", b"")
    )


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


RED, BLUE = tiny_png((255, 0, 0)), tiny_png((0, 0, 255))


def make_prompter(srv: FakeLLMServer, model: type[BaseModel] | None = Everything, **kwargs: Any) -> Prompter:
    kwargs.setdefault("api_base", srv.base_url)
    return Prompter(model, "openai/fake", api_key=KEY, **kwargs)


def optimize_by_hand(p: Prompter) -> None:
    """What optimize() leaves behind: new prompts, per-path descriptions and demos (one with an image)."""
    p.state = p.state.replace(
        system_prompt="You extract invoices for the accounting team.",
        instruction_prompt="Read every line. Dates as ISO 8601.",
        field_descriptions={
            "vendor": "Company that issued the invoice",
            "address.city": "City of the vendor address",
            "items[].name": "Product name as printed",
            "prices{}.amount": "Amount in the price's currency",
        },
        demos=[
            Demo("Invoice from ACME GmbH, total 1234.50", ANSWER),
            Demo(
                [
                    {"type": "text", "text": "Scanned invoice"},
                    {"type": "image_url", "image_url": {"url": data_url(RED), "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": data_url(BLUE)}},
                ],
                ANSWER,
            ),
        ],
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def siblings(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


@pytest.fixture()
def answering(srv: FakeLLMServer) -> FakeLLMServer:
    srv.set_responder(lambda body: ANSWER)
    return srv


# --------------------------------------------------------------------------------------------------
# round trips


def test_round_trip_with_model_sends_the_same_request(answering: FakeLLMServer, tmp_path: Path) -> None:
    p = make_prompter(answering, temperature=0.0, max_tokens=800, max_retries=1)
    optimize_by_hand(p)
    first = p.run("Invoice 42 from ACME")
    p.save(str(tmp_path / "saved"))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unchanged model loads without any warning
        q = Prompter.load(str(tmp_path / "saved"), model=Everything, api_key=KEY, api_base=answering.base_url)
    assert q.model is Everything
    assert q.model_id == "openai/fake"
    assert (q.temperature, q.max_tokens, q.max_retries) == (0.0, 800, 1)
    assert q.state == p.state
    assert q._original_state == p._original_state
    assert q.system_prompt == "You extract invoices for the accounting team."
    assert q.field_descriptions == p.field_descriptions

    second = q.run("Invoice 42 from ACME")
    assert second == first
    bodies = [r.body for r in answering.chat_requests]
    assert len(bodies) == 2
    assert bodies[1] == bodies[0]


def test_round_trip_without_model_rebuilds_every_field_type(answering: FakeLLMServer, tmp_path: Path) -> None:
    p = make_prompter(answering)
    optimize_by_hand(p)
    first = p.run("Invoice 42 from ACME")
    p.save(tmp_path / "saved")  # a Path works too

    q = Prompter.load(tmp_path / "saved", api_key=KEY, api_base=answering.base_url)  # type: ignore[arg-type]
    assert q.model is not Everything
    assert q.model.__name__ == "Everything"
    assert model_schema(q.model) == model_schema(Everything)  # the rebuilt class is exact for these types
    second = q.run("Invoice 42 from ACME")
    assert answering.chat_requests[1].body == answering.chat_requests[0].body
    assert second.model_dump(mode="json") == first.model_dump(mode="json")
    assert isinstance(second.issued, dt.date) and isinstance(second.created, dt.datetime)
    assert isinstance(second.total, Decimal) and second.total == Decimal("1234.50")
    assert isinstance(second.items[0].unit_price, Decimal)
    assert second.prices["gross"].currency == "EUR"  # default restored
    assert second.color == "blue"
    # constraints survive: an invalid code is rejected by the rebuilt class too
    with pytest.raises(ValueError):
        q.model.model_validate({**ANSWER, "code": "lower-case"})
    with pytest.raises(ValueError):
        q.model.model_validate({**ANSWER, "items": [{"name": "x", "qty": 0, "unit_price": "1"}]})


def test_directory_layout_is_plain_json_with_images_beside_it(answering: FakeLLMServer, tmp_path: Path) -> None:
    p = make_prompter(answering, temperature=0.2)
    optimize_by_hand(p)
    p.state = p.state.replace(demos=[*p.state.demos, p.state.demos[1]])  # the same images again: stored once
    target = tmp_path / "saved"
    p.save(str(target))

    files = snapshot(target)
    assert sorted(files) == ["demos/0001.png", "demos/0002.png", "dspydantic.json", "prompts.json", "schema.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~mask  # readable by a service user, like any directory
    assert files["demos/0001.png"] == RED and files["demos/0002.png"] == BLUE
    for name, data in files.items():
        if name.endswith(".json"):
            json.loads(data)  # every other file is JSON: nothing pickled, nothing executable
    assert b"base64" not in files["prompts.json"] and b"data:image" not in files["prompts.json"]

    manifest = json.loads(files["dspydantic.json"])
    assert manifest["format"] == "dspydantic.prompter"
    assert manifest["format_version"] == 1
    assert manifest["library_version"] == dspydantic.__version__
    assert manifest["model"] == {
        "name": "Everything",
        "fingerprint": fingerprint(model_schema(Everything)),
        "free_text": False,
    }
    assert manifest["lm"]["model_id"] == "openai/fake"
    assert manifest["lm"]["settings"]["temperature"] == 0.2
    assert manifest["optimized"] is True
    assert set(manifest["files"]) == set(files) - {"dspydantic.json"}
    assert json.loads(files["schema.json"]) == model_schema(Everything)

    prompts = json.loads(files["prompts.json"])
    assert prompts["original"]["system_prompt"] is None
    assert prompts["optimized"]["field_descriptions"]["items[].name"] == "Product name as printed"
    assert prompts["optimized"]["field_descriptions"]["prices{}.amount"] == "Amount in the price's currency"
    assert prompts["effective_field_descriptions"]["address.street"] == "Street and number"  # from the model
    image_parts = [part for d in prompts["optimized"]["demos"] if isinstance(d["input"], list) for part in d["input"]]
    assert {"type": "image_file", "path": "demos/0001.png", "mime": "image/png", "image_url": {"detail": "low"}} in (
        image_parts
    )


def test_demo_outputs_are_stored_json_safe(answering: FakeLLMServer, tmp_path: Path) -> None:
    p = make_prompter(answering)
    rich = {
        **ANSWER,
        "issued": dt.date(2024, 3, 1),
        "created": dt.datetime(2024, 3, 1, 10, 30),
        "total": Decimal("1234.50"),
        "color": Color.BLUE,
        "items": [{"name": "Bolt", "qty": 2, "unit_price": Decimal("0.10")}],
    }
    p.state = p.state.replace(demos=[Demo("Invoice ACME", rich)])
    p.save(str(tmp_path / "saved"))

    stored = json.loads((tmp_path / "saved" / "prompts.json").read_text())["optimized"]["demos"][0]["output"]
    assert stored["issued"] == "2024-03-01" and stored["total"] == "1234.50" and stored["color"] == "blue"
    q = Prompter.load(str(tmp_path / "saved"), model=Everything, api_key=KEY, api_base=answering.base_url)
    assert q.demos[0].output == to_jsonable_python(rich)
    q.run("Invoice 43")  # the loaded demo renders (JSON-safe) and the extraction goes through
    assert json.loads(answering.chat_requests[0].messages[2]["content"])["issued"] == "2024-03-01"


def test_unoptimized_prompter_round_trips(answering: FakeLLMServer, tmp_path: Path) -> None:
    p = make_prompter(answering, system_prompt="Custom system prompt")
    p.run("x")
    p.save(str(tmp_path / "plain"))
    prompts = json.loads((tmp_path / "plain" / "prompts.json").read_text())
    assert prompts["optimized"] is None
    assert prompts["original"]["system_prompt"] == "Custom system prompt"
    assert json.loads((tmp_path / "plain" / "dspydantic.json").read_text())["optimized"] is False

    q = Prompter.load(str(tmp_path / "plain"), model=Everything, api_key=KEY, api_base=answering.base_url)
    assert q.state is q._original_state
    assert q.system_prompt == "Custom system prompt"
    q.run("x")
    assert answering.chat_requests[1].body == answering.chat_requests[0].body


def test_free_text_prompter_round_trips(srv: FakeLLMServer, tmp_path: Path) -> None:
    srv.set_responder(lambda body: {"output": "A short summary."})
    p = make_prompter(srv, model=None, instruction_prompt="Summarise the document.")
    assert p.run("Long text").output == "A short summary."
    p.save(str(tmp_path / "free"))
    q = Prompter.load(str(tmp_path / "free"), api_key=KEY, api_base=srv.base_url)
    assert q.free_text
    assert q.run("Long text").output == "A short summary."
    assert srv.chat_requests[1].body == srv.chat_requests[0].body


class _Report:
    def to_json(self) -> dict[str, Any]:
        return {"baseline_score": 0.5, "optimized_score": Decimal("0.875"), "finished": dt.date(2024, 5, 1)}


def test_optimization_report_is_saved(answering: FakeLLMServer, tmp_path: Path) -> None:
    p = make_prompter(answering)
    optimize_by_hand(p)
    p.optimization_result = _Report()
    p.save(str(tmp_path / "saved"))
    expected = {"baseline_score": 0.5, "optimized_score": "0.875", "finished": "2024-05-01"}
    assert json.loads((tmp_path / "saved" / "report.json").read_text()) == expected
    q = Prompter.load(str(tmp_path / "saved"), model=Everything, api_key=KEY, api_base=answering.base_url)
    loaded = q.optimization_result
    assert (loaded.to_json() if hasattr(loaded, "to_json") else loaded) == expected

    p.optimization_result = object()  # no to_json(): nothing to store
    p.save(str(tmp_path / "saved"))
    assert not (tmp_path / "saved" / "report.json").exists()
    q = Prompter.load(str(tmp_path / "saved"), model=Everything, api_key=KEY, api_base=answering.base_url)
    assert q.optimization_result is None


def test_report_refers_to_the_same_demo_files_as_the_prompts(answering: FakeLLMServer, tmp_path: Path) -> None:
    from dspydantic.optimize import OptimizationResult

    p = make_prompter(answering)
    baseline = p.state
    optimize_by_hand(p)
    result = OptimizationResult(
        baseline_score=0.5, optimized_score=0.75, accepted=True, message="accepted", optimizer="by hand",
        optimizer_reason="test", state=p.state, baseline_state=baseline, candidate_state=p.state,
        candidate_score=0.75, baseline_per_field={}, candidate_per_field={}, n_train=2, n_val=2, n_examples=4,
        lm_calls=0, requests=0, cache_hits=0, prompt_tokens=0, completion_tokens=0, estimated_cost_usd=None,
        wall_time_s=0.0,
    )
    p.optimization_result = result
    p.save(str(tmp_path / "saved"))

    files = snapshot(tmp_path / "saved")
    assert sorted(n for n in files if n.startswith("demos/")) == ["demos/0001.png", "demos/0002.png"]  # once
    report = files["report.json"]
    assert b"base64" not in report and b"data:image" not in report  # images are files, not inline copies
    parts = [part for d in json.loads(report)["state"]["demos"] if isinstance(d["input"], list) for part in d["input"]]
    assert {"type": "image_file", "path": "demos/0002.png", "mime": "image/png"} in parts
    q = Prompter.load(str(tmp_path / "saved"), model=Everything, api_key=KEY, api_base=answering.base_url)
    assert isinstance(q.optimization_result, OptimizationResult)
    assert q.optimization_result.state == p.state == q.state  # the images come back from the same files
    assert q.optimization_result.to_json() == result.to_json()


# --------------------------------------------------------------------------------------------------
# schema drift: everything per field is keyed by its path


class Author(BaseModel):
    name: str


class DocV1(BaseModel):
    title: str = Field(description="Title")
    author: Author
    pages: int = Field(description="Number of pages")
    chapters: list[str] = Field(default_factory=list)


class AuthorV2(BaseModel):
    email: str | None = None
    name: str


class DocV2(BaseModel):  # fields reordered, optional fields added at the front
    subtitle: str | None = None
    pages: int = Field(description="Number of pages")
    chapters: list[str] = Field(default_factory=list)
    author: AuthorV2
    title: str = Field(description="Title")


DOC = {"title": "Dune", "author": {"name": "Frank Herbert"}, "pages": 412, "chapters": []}


def save_doc(srv: FakeLLMServer, target: Path) -> Prompter:
    srv.set_responder(lambda body: DOC)
    p = make_prompter(srv, model=DocV1)
    p.state = p.state.replace(
        field_descriptions={"title": "Book title as on the cover", "author.name": "Full name of the author"},
        demos=[Demo("Dune by Frank Herbert, 412 pages", DOC)],
    )
    p.save(str(target))
    return p


def test_descriptions_stay_with_their_fields_when_fields_move(srv: FakeLLMServer, tmp_path: Path) -> None:
    save_doc(srv, tmp_path / "doc")
    with pytest.warns(SchemaDriftWarning) as caught:
        q = Prompter.load(str(tmp_path / "doc"), model=DocV2, api_key=KEY, api_base=srv.base_url)
    message = str(caught[0].message)
    assert "subtitle: added optional field" in message
    assert "author.email: added optional field" in message
    assert q.field_descriptions["title"] == "Book title as on the cover"
    assert q.field_descriptions["author.name"] == "Full name of the author"
    assert q.field_descriptions["pages"] == "Number of pages"
    assert "subtitle" not in q.field_descriptions

    q.run("Dune")
    schema = srv.chat_requests[0].body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["title"]["description"] == "Book title as on the cover"
    assert schema["properties"]["author"]["properties"]["name"]["description"] == "Full name of the author"
    assert "description" not in schema["properties"]["subtitle"]
    system = srv.chat_requests[0].messages[0]["content"]
    assert "- author.name (string, required): Full name of the author" in system


def test_changed_description_and_widened_type_load_with_a_warning(srv: FakeLLMServer, tmp_path: Path) -> None:
    save_doc(srv, tmp_path / "doc")

    class DocV3(BaseModel):
        title: str = Field(description="The title")
        author: Author
        pages: int | float | None = Field(default=None, description="Page count")
        chapters: list[str] = Field(default_factory=list)

    with pytest.warns(SchemaDriftWarning) as caught:
        q = Prompter.load(str(tmp_path / "doc"), model=DocV3, api_key=KEY, api_base=srv.base_url)
    message = str(caught[0].message)
    for expected in ("title: description changed", "pages: type widened", "pages: became optional"):
        assert expected in message
    assert q.field_descriptions["title"] == "Book title as on the cover"  # the saved override wins
    assert q.field_descriptions["pages"] == "Page count"  # no override: the model's new text


class _Removed(BaseModel):
    title: str
    author: Author
    chapters: list[str] = []


class _Retyped(BaseModel):
    title: str
    author: Author
    pages: str
    chapters: list[str] = []


class _NewRequired(BaseModel):
    title: str
    author: Author
    pages: int
    chapters: list[str] = []
    isbn: str


class _NestedRemoved(BaseModel):
    title: str
    author: dict[str, str]
    pages: int
    chapters: list[str] = []


class _ListRetyped(BaseModel):
    title: str
    author: Author
    pages: int
    chapters: list[int] = []


class _BecameRequired(BaseModel):
    title: str
    author: Author
    pages: int
    chapters: list[str]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (_Removed, "pages: removed"),
        (_Retyped, "pages: type changed from integer to string"),
        (_NewRequired, "isbn: new required field"),
        (_NestedRemoved, "author: type changed"),
        (_ListRetyped, "chapters: type changed from list[string] to list[integer]"),
        (_BecameRequired, "chapters: became required"),
    ],
    ids=["removed", "retyped", "new-required", "object-to-dict", "list-item-type", "became-required"],
)
def test_incompatible_model_is_refused(
    srv: FakeLLMServer, tmp_path: Path, model: type[BaseModel], expected: str
) -> None:
    save_doc(srv, tmp_path / "doc")
    with pytest.raises(PersistenceError) as err:
        Prompter.load(str(tmp_path / "doc"), model=model, api_key=KEY)
    text = str(err.value)
    assert expected in text
    assert str(tmp_path / "doc") in text and "DocV1" in text
    assert "save it again" in text


def test_schema_drift_reports_nested_paths() -> None:
    class Old(BaseModel):
        items: list[LineItem]
        prices: dict[str, Price]

    class NewItem(BaseModel):
        name: str
        qty: float
        unit_price: Decimal
        sku: str

    class NewPrice(BaseModel):
        amount: float
        currency: Literal["EUR", "USD", "GBP"] = "EUR"

    class New(BaseModel):
        items: list[NewItem]
        prices: dict[str, NewPrice]

    compatible, incompatible = schema_drift(model_schema(Old), model_schema(New))
    assert incompatible == ["items[].sku: new required field"]
    assert "items[].qty: type widened from integer to number" in compatible
    assert "items[].qty: constraints changed" in compatible
    assert "items[].name: description changed" in compatible
    assert any(c.startswith("prices{}.currency: type widened") for c in compatible)


# --------------------------------------------------------------------------------------------------
# atomic writes


def test_unserializable_demo_leaves_previous_save_intact(answering: FakeLLMServer, tmp_path: Path) -> None:
    target = tmp_path / "saved"
    p = make_prompter(answering)
    optimize_by_hand(p)
    p.save(str(target))
    before = snapshot(target)

    with pytest.raises(ConfigurationError, match="JSON-serializable"):
        p.state = p.state.replace(demos=[Demo("x", {"vendor": object()})])  # rejected before it can be saved
    # one that got past that check (its output dict changed afterwards) makes the save itself fail, before
    # anything is written: the previous save keeps every byte (its manifest's saved_at included)
    demo = Demo("x", {"vendor": "ok"})
    demo.output["vendor"] = object()
    p.state = p.state.replace(demos=[*p.state.demos, demo])
    with pytest.raises(PersistenceError, match="JSON-serializable"):
        p.save(str(target))
    assert snapshot(target) == before
    assert siblings(target) == []


def test_failure_while_writing_files_leaves_previous_save_intact(
    answering: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "saved"
    p = make_prompter(answering)
    optimize_by_hand(p)
    p.save(str(target))
    before = snapshot(target)

    real = atomic._write_file
    written: list[str] = []

    def flaky(path: Path, data: bytes) -> None:
        if len(written) == 2:
            path.write_bytes(data[: len(data) // 2])  # half a file, then the disk "fails"
            raise OSError(28, "No space left on device")
        written.append(path.name)
        real(path, data)

    monkeypatch.setattr(atomic, "_write_file", flaky)
    p.state = p.state.replace(system_prompt="a newer prompt")
    with pytest.raises(PersistenceError, match="No space left on device") as err:
        p.save(str(target))
    assert "previous save there, if any, is unchanged" in str(err.value)
    assert snapshot(target) == before
    assert siblings(target) == []


def test_failure_during_the_swap_restores_the_previous_save(
    answering: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "saved"
    p = make_prompter(answering)
    optimize_by_hand(p)
    p.save(str(target))
    before = snapshot(target)

    real = atomic._rename
    calls: list[tuple[str, str]] = []

    def failing(src: Path, dst: Path) -> None:
        calls.append((src.name, dst.name))
        if ".tmp-" in src.name:  # the old directory is already moved aside at this point
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(atomic, "_rename", failing)
    p.state = p.state.replace(system_prompt="a newer prompt")
    with pytest.raises(PersistenceError, match="Input/output error"):
        p.save(str(target))
    assert calls[0][1].startswith(".saved.bak-")  # the swap had begun
    assert snapshot(target) == before
    assert siblings(target) == []
    loaded = Prompter.load(str(target), model=Everything, api_key=KEY, api_base=answering.base_url)
    assert loaded.state == make_state_v1(answering)


def make_state_v1(srv: FakeLLMServer) -> Any:
    p = make_prompter(srv)
    optimize_by_hand(p)
    return p.state


_KILLED_SAVE = textwrap.dedent(
    """
    import os, sys
    from pydantic import BaseModel
    from dspydantic import Prompter
    from dspydantic.persist import atomic

    class Doc(BaseModel):
        title: str

    target = sys.argv[1]
    p = Prompter(Doc, "openai/fake", api_base="http://127.0.0.1:9/v1", api_key="k")
    p.save(target)
    p.state = p.state.replace(system_prompt="version 2")
    real = atomic._rename

    def dying(src, dst):
        if ".tmp-" in src.name:
            os._exit(3)  # killed after the old save was moved aside, before the new one is in place
        real(src, dst)

    atomic._rename = dying
    p.save(target)
    """
)


def test_save_killed_mid_swap_is_recovered(tmp_path: Path) -> None:
    target = tmp_path / "saved"
    proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(target)], capture_output=True, timeout=120)
    assert proc.returncode == 3, proc.stderr.decode()
    assert not target.exists()
    left = siblings(target)
    assert len(left) == 2 and left[0].startswith(".saved.bak-") and left[1].startswith(".saved.tmp-")

    class Doc(BaseModel):
        title: str

    with pytest.warns(UserWarning, match="interrupted"):
        q = Prompter.load(str(target), model=Doc, api_key="k", api_base="http://127.0.0.1:9/v1")
    assert q.system_prompt is None  # the last complete save, not the half-done one
    q.save(str(target))  # the next save completes and clears what the killed one left
    assert siblings(target) == []
    assert (target / "dspydantic.json").is_file()


def test_resave_replaces_the_whole_directory(answering: FakeLLMServer, tmp_path: Path) -> None:
    target = tmp_path / "saved"
    p = make_prompter(answering)
    optimize_by_hand(p)
    p.save(str(target))
    assert (target / "demos" / "0002.png").exists()
    p.state = p.state.replace(demos=[])
    p.save(str(target))
    assert not (target / "demos").exists()
    assert siblings(target) == []
    assert Prompter.load(str(target), model=Everything, api_key=KEY, api_base=answering.base_url).demos == ()


def test_refuses_to_replace_a_directory_that_is_not_a_prompter(answering: FakeLLMServer, tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.mkdir()
    (target / "important.csv").write_text("a,b\n")
    with pytest.raises(PersistenceError, match="not a saved prompter"):
        make_prompter(answering).save(str(target))
    assert (target / "important.csv").read_text() == "a,b\n"
    assert siblings(target) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(PersistenceError, match="a file with that name exists"):
        make_prompter(answering).save(str(tmp_path / "file"))


# --------------------------------------------------------------------------------------------------
# secrets


def test_no_secret_is_written(srv: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    srv.set_responder(lambda body: ANSWER)
    port = srv.port
    leaky = f"http://alice:hunter2pass@127.0.0.1:{port}/v1?api-key=querysecret42#frag"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-key-should-not-leak")
    p = Prompter(Everything, "openai/fake", api_base=leaky, api_key=KEY)
    optimize_by_hand(p)
    p.run("Invoice")
    auth = srv.chat_requests[0].headers["authorization"]
    assert KEY in auth
    p.save(str(tmp_path / "saved"))

    files = snapshot(tmp_path / "saved")
    assert files
    for name, data in files.items():
        for secret in (KEY, auth, "hunter2pass", "alice", "querysecret42", "sk-env-key-should-not-leak", "frag"):
            assert secret.encode() not in data, f"{secret!r} leaked into {name}"
    manifest = json.loads(files["dspydantic.json"])
    assert manifest["lm"]["api_base"] == f"http://127.0.0.1:{port}/v1"

    q = Prompter.load(str(tmp_path / "saved"), model=Everything, api_key=KEY, trust_saved_endpoint=True)
    q.run("Invoice")
    assert srv.chat_requests[1].headers["authorization"] == auth


def test_sanitize_api_base() -> None:
    assert sanitize_api_base("https://u:p@example.com:8443/v1/?key=x#y") == "https://example.com:8443/v1/"
    assert sanitize_api_base("http://[::1]:8000/v1") == "http://[::1]:8000/v1"
    assert sanitize_api_base("not a url") is None
    assert sanitize_api_base(None) is None


# --------------------------------------------------------------------------------------------------
# load options


def test_load_options(answering: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    p = make_prompter(answering, temperature=0.0)
    optimize_by_hand(p)
    p.save(str(tmp_path / "saved"))
    path = str(tmp_path / "saved")

    # kwargs reach the constructor and override saved settings; the saved endpoint only on request
    with pytest.warns(UserWarning, match="does not use an endpoint named by a file"):
        plain = Prompter.load(path, model=Everything, api_key=KEY)
    assert plain.backend.base_url == "https://api.openai.com/v1"  # type: ignore[attr-defined]
    q = Prompter.load(path, model=Everything, api_key=KEY, trust_saved_endpoint=True, temperature=0.5, cache=True)
    assert q.temperature == 0.5 and q.cache is not None
    assert q.backend.base_url == answering.base_url  # type: ignore[attr-defined]
    q.run("a")
    q.run("a")
    assert len(answering.chat_requests) == 1  # second answer from the cache

    # another model id never inherits the saved endpoint
    other = Prompter.load(path, model=Everything, model_id="openai/gpt-4o-mini", api_key=KEY)
    assert other.model_id == "openai/gpt-4o-mini"
    assert other.backend.base_url == "https://api.openai.com/v1"  # type: ignore[attr-defined]

    # lm= replaces the saved model id
    backend = OpenAICompatBackend("served-model", api_base=answering.base_url, api_key=KEY)
    via_lm = Prompter.load(path, model=Everything, lm=backend)
    assert via_lm.model_id is None and via_lm.backend is backend
    via_lm.run("b")
    assert answering.chat_requests[-1].body["model"] == "served-model"

    with pytest.raises(ConfigurationError, match=r"prompter\.state"):
        Prompter.load(path, model=Everything, api_key=KEY, system_prompt="other")


# --------------------------------------------------------------------------------------------------
# broken directories


def _saved(answering: FakeLLMServer, tmp_path: Path) -> Path:
    p = make_prompter(answering)
    optimize_by_hand(p)
    p.save(str(tmp_path / "saved"))
    return tmp_path / "saved"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: _truncate(d / "dspydantic.json"), ["dspydantic.json", "not valid JSON", "save the prompter again"]),
        (lambda d: _truncate(d / "prompts.json"), ["prompts.json", "corrupt or truncated", "checksum"]),
        (lambda d: (d / "schema.json").unlink(), ["schema.json", "is missing", "incomplete"]),
        (lambda d: _truncate(d / "demos" / "0001.png"), ["0001.png", "corrupt or truncated", "save the prompter"]),
        (
            lambda d: (d / "dspydantic.json").write_text('{"format": "something.else", "format_version": 1}'),
            ["dspydantic.json", "does not look like a file dspydantic wrote", "something.else"],
        ),
        (
            lambda d: (d / "dspydantic.json").write_text(
                json.dumps({**json.loads((d / "dspydantic.json").read_text()), "format_version": 99})
            ),
            ["format version 99", "pip install -U dspydantic"],
        ),
        (
            lambda d: (d / "dspydantic.json").write_text(
                json.dumps({**json.loads((d / "dspydantic.json").read_text()), "files": {"../outside.json": {}}})
            ),
            ["leaves the directory"],
        ),
    ],
    ids=["truncated-manifest", "truncated-prompts", "missing-schema", "truncated-image", "foreign-manifest",
         "future-format", "path-escape"],
)
def test_damaged_directory_gives_an_actionable_error(
    answering: FakeLLMServer, tmp_path: Path, damage: Any, expected: list[str]
) -> None:
    target = _saved(answering, tmp_path)
    damage(target)
    with pytest.raises(PersistenceError) as err:
        Prompter.load(str(target), model=Everything, api_key=KEY)
    for text in expected:
        assert text in str(err.value)


def test_edited_json_is_refused_with_the_way_to_change_prompts(answering: FakeLLMServer, tmp_path: Path) -> None:
    target = _saved(answering, tmp_path)
    prompts = json.loads((target / "prompts.json").read_text())
    prompts["optimized"]["system_prompt"] = "Edited by hand."
    (target / "prompts.json").write_text(json.dumps(prompts))
    with pytest.raises(PersistenceError, match="changed after it was saved") as err:
        Prompter.load(str(target), model=Everything, api_key=KEY)
    assert "prompts.json" in str(err.value) and "set prompter.state and save it" in str(err.value)


def test_not_a_prompter_directory(tmp_path: Path) -> None:
    with pytest.raises(PersistenceError, match=r"does not exist\. Check the path"):
        Prompter.load(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PersistenceError, match="not a saved dspydantic prompter"):
        Prompter.load(str(tmp_path / "empty"))
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(PersistenceError, match="is a file"):
        Prompter.load(str(tmp_path / "file.json"))


# --------------------------------------------------------------------------------------------------
# rebuilding model classes


def test_rebuild_handles_recursion_odd_names_and_formats() -> None:
    class Node(BaseModel):
        name: str
        children: list[Node] = []

    class Odd(BaseModel):
        model_config = {"populate_by_name": True}
        schema_: str = Field(alias="schema")
        class_: int = Field(alias="class")
        email: str = Field(json_schema_extra={"format": "email"})
        tree: Node | None = None

    Odd.model_rebuild()
    rebuilt = rebuild_model(model_schema(Odd), "Odd")
    value = rebuilt.model_validate(
        {"schema": "s", "class": 1, "email": "a@b.c", "tree": {"name": "a", "children": [{"name": "b"}]}}
    )
    assert value.model_dump(mode="json", by_alias=True) == {
        "schema": "s",
        "class": 1,
        "email": "a@b.c",
        "tree": {"name": "a", "children": [{"name": "b", "children": []}]},
    }
    assert model_schema(rebuilt)["properties"]["email"] == {"format": "email", "type": "string"}
    with pytest.raises(PersistenceError):
        rebuild_model({"type": "string"}, "X")


# --------------------------------------------------------------------------------------------------
# directories written by dspydantic 0.1.x (fixtures written by hand, in the shape 0.1.x wrote them)


class LegacyAddress(BaseModel):
    street: str = Field(description="Street")
    city: str = Field(description="City")


class LegacyItem(BaseModel):
    name: str = Field(description="Item name")
    price: float


class Receipt(BaseModel):
    merchant: str = Field(description="Merchant name")
    total: float = Field(description="Total paid")
    address: LegacyAddress
    items: list[LegacyItem]
    category: Literal["food", "travel"]


LEGACY_SCHEMA = {
    "$defs": {
        "LegacyAddress": {
            "properties": {
                "street": {"description": "Street", "title": "Street", "type": "string"},
                "city": {"description": "City", "title": "City", "type": "string"},
            },
            "required": ["street", "city"],
            "title": "LegacyAddress",
            "type": "object",
        },
        "LegacyItem": {
            "properties": {
                "name": {"description": "Item name", "title": "Name", "type": "string"},
                "price": {"title": "Price", "type": "number"},
            },
            "required": ["name", "price"],
            "title": "LegacyItem",
            "type": "object",
        },
    },
    "properties": {
        "merchant": {"description": "Merchant name", "title": "Merchant", "type": "string"},
        "total": {"description": "Total paid", "title": "Total", "type": "number"},
        "address": {"$ref": "#/$defs/LegacyAddress"},
        "items": {"items": {"$ref": "#/$defs/LegacyItem"}, "title": "Items", "type": "array"},
        "category": {"enum": ["food", "travel"], "title": "Category", "type": "string"},
    },
    "required": ["merchant", "total", "address", "items", "category"],
    "title": "Receipt",
    "type": "object",
}

RECEIPT = {
    "merchant": "Bob's Diner",
    "total": 23.5,
    "address": {"street": "1 Elm St", "city": "Springfield"},
    "items": [{"name": "Pancakes", "price": 23.5}],
    "category": "food",
}


def write_legacy(directory: Path, *, version: str, model_id: str, model_config: dict[str, Any]) -> None:
    directory.mkdir()
    (directory / "dspydantic_metadata.json").write_text(
        json.dumps({"version": version, "model_id": model_id, "model_config": model_config, "metadata": {}}, indent=2)
    )
    (directory / "optimized_state.json").write_text(
        json.dumps(
            {
                "optimized_descriptions": {
                    "merchant": "Business name printed at the top of the receipt",
                    "total": "Grand total including tax",
                    "address": "address",
                    "address.street": "Street",
                    "address.city": "Town or city of the merchant",
                    "items": "items",
                    "items.name": "Product name as printed",
                    "items.price": "price",
                    "category": "Spending category",
                },
                "optimized_system_prompt": "You are an expert receipt reader.",
                "optimized_instruction_prompt": "Extract the receipt fields from the text.",
                "optimized_demos": [
                    {"input_data": {"text": "Bob's Diner, 1 Elm St, Springfield. Pancakes 23.50"},
                     "expected_output": RECEIPT},
                    {"input_data": {"text": "Scanned receipt", "images": [base64.b64encode(RED).decode()]},
                     "expected_output": RECEIPT},
                    {"input_data": {"text": "an unlabelled example"}, "expected_output": None},
                ],
            },
            indent=2,
        )
    )
    (directory / "model_schema.json").write_text(json.dumps(LEGACY_SCHEMA, indent=2))


def test_hand_written_legacy_schema_matches_pydantic() -> None:
    assert Receipt.model_json_schema() == LEGACY_SCHEMA


def test_reads_a_0_1_directory_with_the_model(srv: FakeLLMServer, tmp_path: Path) -> None:
    srv.set_responder(lambda body: RECEIPT)
    write_legacy(tmp_path / "old", version="0.1.6", model_id="", model_config={})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = Prompter.load(
            str(tmp_path / "old"), model=Receipt, model_id="openai/fake", api_key=KEY, api_base=srv.base_url
        )
    assert q.system_prompt == "You are an expert receipt reader."
    assert q.instruction_prompt == "Extract the receipt fields from the text."
    assert q.field_descriptions["items[].name"] == "Product name as printed"
    assert q.field_descriptions["address.city"] == "Town or city of the merchant"
    assert "items" not in q.state.field_descriptions  # 0.1.x wrote the bare field name as a placeholder
    assert len(q.demos) == 2  # the unlabelled example is not a demonstration
    assert q.demos[1].input == [
        {"type": "text", "text": "Scanned receipt"},
        {"type": "image_url", "image_url": {"url": data_url(RED)}},
    ]
    assert q.run("Receipt from Bob's Diner") == Receipt.model_validate(RECEIPT)

    body = srv.chat_requests[0].body
    system = body["messages"][0]["content"]
    assert system.startswith("You are an expert receipt reader.\n\nExtract the receipt fields from the text.")
    assert "- items[].name (string, required): Product name as printed" in system
    items = body["response_format"]["json_schema"]["schema"]["properties"]["items"]
    assert items["items"]["properties"]["name"]["description"] == "Product name as printed"
    assert json.loads(body["messages"][2]["content"]) == RECEIPT
    assert body["messages"][3]["content"][1]["image_url"]["url"] == data_url(RED)

    # and a re-save writes the current format, which loads to the same state
    q.save(str(tmp_path / "old"))
    assert (tmp_path / "old" / "dspydantic.json").exists() and not (tmp_path / "old" / "model_schema.json").exists()
    r = Prompter.load(str(tmp_path / "old"), model=Receipt, api_key=KEY, api_base=srv.base_url)
    assert r.state == q.state and r.model_id == "openai/fake"


def test_reads_a_0_1_directory_without_the_model(srv: FakeLLMServer, tmp_path: Path) -> None:
    srv.set_responder(lambda body: RECEIPT)
    leaky = {"api_base": srv.base_url + "?sig=abc", "api_version": "2024-01-01", "api_key": "sk-old-leak"}
    write_legacy(tmp_path / "old", version="0.1.2", model_id="openai/fake", model_config=leaky)
    with pytest.warns(UserWarning, match="contains an api_key; it is ignored"):
        q = Prompter.load(str(tmp_path / "old"), api_key=KEY, trust_saved_endpoint=True)
    assert q.model.__name__ == "Receipt" and q.model_id == "openai/fake"
    result = q.run("Receipt from Bob's Diner")
    assert result.model_dump() == RECEIPT
    assert srv.chat_requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_legacy_directory_with_an_incompatible_model(srv: FakeLLMServer, tmp_path: Path) -> None:
    write_legacy(tmp_path / "old", version="0.1.6", model_id="openai/fake", model_config={})

    class Smaller(BaseModel):
        merchant: str
        total: str

    with pytest.raises(PersistenceError) as err:
        Prompter.load(str(tmp_path / "old"), model=Smaller, api_key=KEY, api_base=srv.base_url)
    for text in ("total: type changed from number to string", "address: removed", "items: removed"):
        assert text in str(err.value)
    assert "address.city" not in str(err.value)  # reported with its parent


def test_legacy_directory_missing_a_file(tmp_path: Path) -> None:
    write_legacy(tmp_path / "old", version="0.1.6", model_id="openai/fake", model_config={})
    (tmp_path / "old" / "optimized_state.json").unlink()
    with pytest.raises(PersistenceError, match=r"optimized_state.json' is missing"):
        Prompter.load(str(tmp_path / "old"), model=Receipt, api_key=KEY)


# --------------------------------------------------------------------------------------------------
# the one identity: Prompter.fingerprint / version, used by the store, Celery, the service and batch jobs


def test_one_fingerprint_shared_by_every_integration_and_kept_by_a_load(
    answering: FakeLLMServer, tmp_path: Path
) -> None:
    from dspydantic.integrations import _batch_bridge, _identity, _version

    p = make_prompter(answering, temperature=0.0, max_tokens=800)
    optimize_by_hand(p)
    fp = p.fingerprint
    assert len(fp) == 64 and p.version == fp[:12]
    assert _identity.prompter_fingerprint(p) == _batch_bridge.fingerprint(p) == fp  # store, Celery, batch jobs
    assert _version.prompter_version(p) == p.version  # the service and the file pipeline
    p.save(tmp_path / "saved")
    assert Prompter.load(tmp_path / "saved", model=Everything, api_base=answering.base_url).fingerprint == fp
    assert Prompter.load(tmp_path / "saved", api_base=answering.base_url).fingerprint == fp  # rebuilt model
    code = (
        "import sys; from dspydantic import Prompter; "
        "print(Prompter.load(sys.argv[1], api_base='http://127.0.0.1:9/v1', api_key='other').fingerprint)"
    )
    child = subprocess.run([sys.executable, "-c", code, str(tmp_path / "saved")], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}, check=True)
    assert child.stdout.strip() == fp  # the same in another process, whatever endpoint and key

    # what decides an answer changes it; where and how the requests go does not
    same = make_prompter(answering, temperature=0.0, max_tokens=800, api_base="http://127.0.0.1:9/v1",
                         lm_retries=5, max_retries=0, cache=True)
    same.state = p.state
    assert same.fingerprint == fp
    changed = [
        p.state.replace(system_prompt="other"),
        p.state.replace(demos=p.state.demos[:1]),
        p.state.replace(field_descriptions={**p.state.field_descriptions, "vendor": "other"}),
    ]
    for state in changed:
        q = make_prompter(answering, temperature=0.0, max_tokens=800)
        q.state = state
        assert q.fingerprint != fp
    hotter = make_prompter(answering, temperature=0.5, max_tokens=800)
    hotter.state = p.state
    other_model = Prompter(Everything, "openai/other", api_base=answering.base_url, api_key=KEY,
                           temperature=0.0, max_tokens=800)
    other_model.state = p.state
    assert len({fp, hotter.fingerprint, other_model.fingerprint}) == 3
    chain = p.with_fallback(hotter)
    assert _version.prompter_version(chain) not in (p.version, hotter.version)
