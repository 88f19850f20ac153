"""The review loop closed: extractions land in the store, low-confidence ones are reviewed, the corrections
become Examples, ``optimize()`` learns from them, and the result is scored on held-out documents the loop
never saw. In the library (SQLite and PostgreSQL) and through the CLI (``dspydantic review`` and
``dspydantic optimize --from-store``).

The fake LM copies the vendor's name as the document writes it, including the clerk's reference some
documents append to it ("globex (ref 1011)"). The business wants the bare name; the LM leaves the
reference out only when its prompt shows a demonstration of that convention (a demo whose input has a
reference and whose answer is the name without it), and it is unsure (low token log-probabilities) when
it copies a name with a reference.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from dspydantic import Example, Prompter
from dspydantic.store import ExtractionStore
from dspydantic.testing import FakeLLMServer, Reply, message_text

from ._services import drop_tables, need_postgres, run_cli, unique

pytest.importorskip("sqlalchemy", reason="the [db] extra is not installed")


class Invoice(BaseModel):
    vendor: str
    total: float


_DOC = re.compile(r"from (.+?), total (\d+)")
_REF = re.compile(r" \(ref \d+\)$")


def bare(vendor: str) -> str:
    return _REF.sub("", vendor)


def lm(body: dict[str, Any]) -> Any:
    messages = body["messages"]
    learned = False
    for prev, msg in itertools.pairwise(messages):  # (demo input, demo answer) pairs
        if prev["role"] == "user" and msg["role"] == "assistant":
            m = _DOC.search(message_text(prev["content"]))
            shown = json.loads(message_text(msg["content"])).get("vendor", "")
            learned |= bool(m and _REF.search(m.group(1)) and shown == bare(m.group(1)))
    m = _DOC.search(message_text(messages[-1]["content"]))
    if not m:
        return {"vendor": "?", "total": 0}
    vendor, total = m.group(1), int(m.group(2))
    unsure = bool(_REF.search(vendor)) and not learned
    out = {"vendor": bare(vendor) if learned else vendor, "total": total}
    return Reply(json.dumps(out), logprobs=[-2.0 if unsure else -0.01] * 4)


def doc(i: int, vendor: str, ref: bool) -> str:
    return f"Invoice {i:02d} from {vendor}{f' (ref {1000 + i})' if ref else ''}, total {10 + i}"


CLEAN = ["IBM", "SAP SE", "BASF", "KPMG"]
REFERENCED = ["Acme GmbH", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Soylent", "Kramerica"]
HELD_OUT = [(doc(50 + i, v, ref=True), v) for i, v in enumerate(["Wonka", "Stark", "Wayne", "Oscorp", "Tyrell"])]


def held_out() -> list[Example]:
    return [Example(text=t, expected_output={"vendor": v, "total": float(10 + 50 + i)})
            for i, (t, v) in enumerate(HELD_OUT)]


def fixed(data: dict[str, Any] | None) -> dict[str, Any]:
    """A reviewer's correction: the bare vendor name."""
    assert data is not None
    return {**data, "vendor": bare(data["vendor"])}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ExtractionStore]:
    prefix = unique("loop") + "_"
    url = f"sqlite:///{tmp_path / 'loop.db'}" if request.param == "sqlite" else need_postgres()
    try:
        with ExtractionStore(url, table_prefix=prefix, review_below=0.8) as s:
            yield s
    finally:
        if request.param == "postgresql":
            drop_tables(url, prefix)


def make_prompter(srv: FakeLLMServer) -> Prompter:
    srv.set_responder(lm)
    return Prompter(Invoice, model_id="openai/fake", api_base=srv.base_url, api_key="sk-test", logprobs=True)


def test_reviewed_corrections_improve_the_prompter_on_held_out_documents(
    store: ExtractionStore, srv: FakeLLMServer
) -> None:
    prompter = make_prompter(srv)
    clean = [doc(i, v, ref=False) for i, v in enumerate(CLEAN)]
    referenced = [doc(10 + i, v, ref=True) for i, v in enumerate(REFERENCED)]
    docs = store.process(prompter, clean + referenced)
    assert [d.status for d in docs] == ["done"] * 4 + ["review"] * 8
    assert [d.id for d in store.pending()] == [d.id for d in docs[4:]]

    # a reviewer confirms two confident results and corrects every queued one
    for d in docs[:2]:
        store.approve(d.id)
    for d in store.pending():
        store.correct(d.id, fixed(d.data))
    assert store.pending() == []
    examples = store.examples()
    assert len(examples) == 10
    assert {e.text: e.expected_output["vendor"] for e in examples}[referenced[0]] == "Acme GmbH"  # type: ignore[index]

    before = prompter.evaluate(held_out())
    result = prompter.optimize(examples, optimizer="bootstrap", seed=0, fallback="baseline")
    after = prompter.evaluate(held_out())
    assert before.score == pytest.approx(0.5)  # totals right, vendors with their reference
    assert after.score == pytest.approx(1.0), result.message
    assert prompter.demos  # what it learned from: the reviewed examples
    assert set(d.input for d in prompter.demos) <= {e.text for e in examples}
    assert not {t for t, _ in HELD_OUT} & {d.input for d in prompter.demos}


def test_review_and_optimize_from_the_command_line(srv: FakeLLMServer, tmp_path: Path) -> None:
    prompter = make_prompter(srv)
    saved = tmp_path / "invoice_prompter"
    prompter.save(saved)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    clean = [doc(i, v, ref=False) for i, v in enumerate(CLEAN[:2])]
    referenced = [doc(10 + i, v, ref=True) for i, v in enumerate(REFERENCED[:6])]
    with ExtractionStore(url) as store:
        docs = store.process(prompter, clean + referenced)
        srv.add_response("not JSON", times=3)
        (failed,) = store.process(prompter, ["Invoice 99 from nobody, total 99 (torn page)"])
    assert failed.status == "failed"

    listed = run_cli("review", "list", "--store", url)
    assert listed.returncode == 0, listed.stderr
    for d in [*docs[2:], failed]:
        assert d.id[:12] in listed.stdout
    assert docs[0].id[:12] not in listed.stdout  # confident: not queued
    assert "no valid Invoice" in listed.stdout and "7 shown; 2 done, 6 review, 1 failed" in listed.stdout

    approved = run_cli("review", "approve", "--store", url, docs[0].id[:12], docs[1].id[:12])
    assert approved.returncode == 0, approved.stderr
    fix = {"vendor": "NOBODY", "total": 99}
    corrected = run_cli("review", "correct", "--store", url, failed.id[:10], "--data", json.dumps(fix))
    assert corrected.returncode == 0, corrected.stderr
    bad = run_cli("review", "approve", "--store", url, "ffffffffffff")
    assert bad.returncode == 2 and "no document id starts with" in bad.stderr
    with ExtractionStore(url) as store:
        for d in docs[2:]:  # the rest of the queue, reviewed through the API
            store.correct(d.id, fixed(d.data))
        assert store.pending() == []
        stored = store.get(failed.id)
        assert stored is not None and stored.status == "corrected" and stored.label == {"vendor": "NOBODY",
                                                                                         "total": 99}

    out = tmp_path / "optimized"
    run = run_cli("optimize", "--from-store", url, "--prompter", str(saved), "--out", str(out),
                  "--optimizer", "bootstrap", timeout=300, OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=srv.base_url)
    assert run.returncode == 0, run.stderr
    assert "9 reviewed examples" in run.stdout
    optimized = Prompter.load(out, model=Invoice, api_key="sk-test", api_base=srv.base_url)
    before = Prompter.load(saved, model=Invoice, api_key="sk-test", api_base=srv.base_url)
    assert before.evaluate(held_out()).score == pytest.approx(0.5)
    assert optimized.evaluate(held_out()).score == pytest.approx(1.0)

    empty = run_cli("optimize", "--from-store", f"sqlite:///{tmp_path / 'empty.db'}", "--prompter", str(saved),
                    "--out", str(tmp_path / "x"))
    assert empty.returncode == 2 and "no approved or corrected documents" in empty.stderr


def test_optimize_takes_a_file_or_a_store_and_says_what_is_missing(tmp_path: Path) -> None:
    """`optimize` has two sources of examples: a file (with --model and --model-id) or --from-store (with
    --prompter); a call with neither, both, or an incomplete one exits 2 naming what is missing, before any LM."""
    missing = run_cli("optimize", "--out", str(tmp_path / "o"))
    assert missing.returncode == 2 and "EXAMPLES.jsonl, --model, --model-id" in missing.stderr
    no_model = run_cli("optimize", str(tmp_path / "ex.jsonl"), "--out", str(tmp_path / "o"))
    assert no_model.returncode == 2 and "--model, --model-id" in no_model.stderr
    both = run_cli("optimize", str(tmp_path / "ex.jsonl"), "--from-store", "sqlite://", "--out", str(tmp_path / "o"))
    assert both.returncode == 2 and "not both" in both.stderr
    no_prompter = run_cli("optimize", "--from-store", "sqlite://", "--out", str(tmp_path / "o"))
    assert no_prompter.returncode == 2 and "needs --prompter DIR" in no_prompter.stderr
