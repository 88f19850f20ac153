"""``dspydantic demo``: the bundled dataset, and the whole run against the fake OpenAI-compatible server."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from dspydantic import Example, Prompter
from dspydantic.demo import FIELDS, Invoice, load_examples, load_records, run_demo, sizes, split_records
from dspydantic.testing import FakeLLMServer, last_user_text

# --------------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------------


def test_dataset_validates_against_the_invoice_model() -> None:
    records = load_records()
    assert 25 <= len(records) <= 40
    assert len({r.id for r in records}) == len(records)
    assert len({r.text for r in records}) == len(records)
    for r in records:
        assert set(r.expected) == set(FIELDS), r.id
        inv = Invoice.model_validate(r.expected)
        # labels are JSON with ISO dates, and round-trip unchanged through the model
        assert inv.model_dump(mode="json") == r.expected, r.id
        for key in ("invoice_date", "due_date"):
            if r.expected[key] is not None:
                assert date.fromisoformat(r.expected[key]).isoformat() == r.expected[key]
        assert len(r.text) <= 500, r.id
        # the vendor's name is in the document (ignoring case): the label is what the text says
        assert r.expected["vendor"].casefold() in r.text.casefold(), r.id
    examples = load_examples()
    assert all(isinstance(ex, Example) and isinstance(ex.text, str) for ex in examples)


def test_dataset_is_varied() -> None:
    records = load_records()
    currencies = {r.expected["currency"] for r in records}
    assert currencies == {"USD", "EUR", "GBP", "CHF", "JPY"}
    assert {r.style for r in records} >= {"email", "formal", "receipt"}
    assert sum(r.style == "email" for r in records) >= 5
    assert sum(r.style == "receipt" for r in records) >= 5
    assert len({r.language for r in records}) >= 4
    assert sum(r.expected["due_date"] is None for r in records) >= 5
    assert sum(r.expected["invoice_number"] is None for r in records) >= 2
    assert sum(r.expected["customer"] is None for r in records) >= 5
    texts = [r.text for r in records]
    # European decimal commas (1.234,49), dotted dates (03.04.2024), written-out dates (3 April 2024)
    assert sum(bool(re.search(r"\d\.\d{3},\d{2}", t)) for t in texts) >= 3
    assert sum(bool(re.search(r"\b\d{2}\.\d{2}\.\d{4}\b", t)) for t in texts) >= 4
    written = re.compile(r"\b\d{1,2}\.? (April|Februar|avril|juin|January|June|May) 20\d\d")
    assert sum(bool(written.search(t)) for t in texts) >= 4


def test_split_is_disjoint_and_seeded() -> None:
    records = load_records()
    for quick in (False, True):
        size = sizes(quick)
        train, test = split_records(records, 0, size.n_train, size.n_test)
        assert (len(train), len(test)) == (size.n_train, size.n_test)
        assert not {r.id for r in train} & {r.id for r in test}
    assert split_records(records, 1, 18, 12) == split_records(records, 1, 18, 12)
    assert split_records(records, 1, 18, 12) != split_records(records, 2, 18, 12)
    with pytest.raises(ValueError):
        split_records(records, 0, len(records), 1)


# --------------------------------------------------------------------------------------------------
# the whole run, against the fake server
# --------------------------------------------------------------------------------------------------


def _label_responder(calls: list[str], *, demos_fix_customer: bool = False) -> Any:
    """Answers each dataset document with its label, except ``customer`` (always null), so the printed
    numbers are predictable: every field is right but ``customer``, right only where the label is null.
    With ``demos_fix_customer`` a prompt with few-shot demos gets the customer right too."""
    labels = {r.text: r.expected for r in load_records()}

    def responder(body: dict[str, Any]) -> Any:
        text = last_user_text(body).strip()
        calls.append(text)
        expected = labels.get(text)
        if expected is None:  # a document quoted inside a larger prompt
            expected = next((v for k, v in labels.items() if k in text), None)
        if expected is None:
            return "{}"
        has_demos = any(m.get("role") == "assistant" for m in body.get("messages", []))
        return expected if demos_fix_customer and has_demos else {**expected, "customer": None}

    return responder


def _rows(out: str) -> dict[str, list[str]]:
    """The table's data rows: first cell -> the other cells (box-drawing characters stripped)."""
    rows: dict[str, list[str]] = {}
    for line in out.splitlines():
        if "│" not in line and "┃" not in line:
            continue
        cells = [c.strip() for c in re.split(r"[│┃]", line)]
        cells = [c for c in cells if c != ""]
        if cells:
            rows.setdefault(cells[0], cells[1:])
    return rows


def test_run_demo_end_to_end_on_the_fake_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "140")
    out_dir = tmp_path / "demo_prompter"
    calls: list[str] = []
    with FakeLLMServer() as srv:
        srv.set_responder(_label_responder(calls))
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-fake")
        code = run_demo(model_id="openai/fake", optimizer="auto", out=str(out_dir), seed=0, quick=True)
        out = capsys.readouterr().out
        assert code == 0, out
        assert srv.chat_requests, "the demo never called the server"

        # the saved directory exists and reloads with the demo's model
        assert out_dir.is_dir()
        reloaded = Prompter.load(str(out_dir), model=Invoice, model_id="openai/fake")
        try:
            assert reloaded.model is Invoice
            test = split_records(load_records(), 0, sizes(True).n_train, sizes(True).n_test)[1]
            got = reloaded.run(test[0].text)
            assert isinstance(got, Invoice)
            assert got.model_dump(mode="json") == {**test[0].expected, "customer": None}
        finally:
            reloaded.close()

    rows = _rows(out)
    # a test document is only ever extracted by the evaluations (before, [plain demos,] after), the samples
    # and the reload check above: the optimizer never saw one
    size = sizes(True)
    test = split_records(load_records(), 0, size.n_train, size.n_test)[1]
    # prompts already scored are not scored again: the plain demos when they are what is served, the
    # un-optimized prompts when the candidate was not accepted and no baseline is served
    evaluations = 1 + ("plain demos" in rows["field"] and "scored once, in step 4" not in out) + (
        "the score of step 1 stands" not in out
    )
    for i, r in enumerate(test):
        assert calls.count(r.text) == evaluations + (i < size.n_samples) + (i == 0), r.id

    for path in FIELDS:
        assert path in rows, f"no row for {path!r} in:\n{out}"
    for label in ("overall score", "invoices fully right", "LM calls", "time"):
        assert label in rows, f"no row {label!r} in:\n{out}"
    # every field but customer is always right; customer is right only on the test items whose label is null
    customer_null = sum(r.expected["customer"] is None for r in test) / len(test)
    for path in FIELDS:
        cells = rows[path]
        expected = f"{100 * customer_null:.1f}%" if path == "customer" else "100.0%"
        assert cells[0] == expected, (path, cells)  # before
        assert cells[-2] == expected, (path, cells)  # after (the last column is the change)
    overall = (len(FIELDS) - 1 + customer_null) / len(FIELDS)
    assert rows["overall score"][0] == f"{100 * overall:.1f}%"
    assert rows["LM calls"][0] == str(size.n_test)  # one call per test invoice, no re-asks

    assert "before = the un-optimized prompter" in out
    assert "A few extractions by the reloaded prompter" in out
    assert str(out_dir) in out.replace("\n", "")


def test_run_demo_reports_a_failure_with_a_nonzero_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeLLMServer() as srv:
        srv.set_responder(lambda body: json.dumps({"error": "x"}))
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        code = run_demo(model_id="openai/fake", optimizer="no-such-optimizer", out=str(tmp_path / "p"), quick=True)
    out = capsys.readouterr().out
    assert code != 0
    assert "demo failed" in out
    assert not (tmp_path / "p").exists()


def test_the_demo_serves_the_fair_baseline_when_it_beats_the_default_prompts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "140")
    with FakeLLMServer() as srv:
        calls: list[str] = []
        srv.set_responder(_label_responder(calls, demos_fix_customer=True))
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-fake")
        # bootstrap's demos are as good as plain ones here: the candidate only ties the baseline
        code = run_demo(model_id="openai/fake", optimizer="bootstrap", out=str(tmp_path / "p"), seed=0, quick=True)
        out = capsys.readouterr().out
    assert code == 0, out
    rows = _rows(out)
    before, plain, after = rows["customer"][:3]
    assert before != "100.0%" and plain == after == "100.0%", rows["customer"]
    assert "serving the fair baseline" in out.replace("\n", " ")
    saved = Prompter.load(str(tmp_path / "p"), model=Invoice, model_id="openai/fake")
    assert len(saved.demos) == 4
    # the served prompts (plain demos) are scored once, not in step 3 and again in step 4
    test = split_records(load_records(), 0, sizes(True).n_train, sizes(True).n_test)[1]
    for i, r in enumerate(test):
        assert calls.count(r.text) == 2 + (i < sizes(True).n_samples), r.id  # before, after, [sample]
    assert "scored once, in step 4" in out


def test_the_demo_prints_a_line_per_step_when_its_output_is_not_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "140")
    with FakeLLMServer() as srv:
        srv.set_responder(_label_responder([]))
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-fake")
        code = run_demo(model_id="openai/fake", optimizer="bootstrap", out=str(tmp_path / "p"), seed=0, quick=True)
        out = capsys.readouterr().out  # captured: not a terminal, as in a file or a CI log
    assert code == 0, out
    n_test = sizes(True).n_test
    extracted = re.findall(r"^  extracted (\d+)/(\d+) \(\d+\.\d s\)$", out, re.M)
    assert len(extracted) >= 2 * n_test and {int(t) for _, t in extracted} == {n_test}
    assert {int(d) for d, _ in extracted} == set(range(1, n_test + 1))
    stages = re.findall(r"^  stage: (.+)$", out, re.M)
    assert "scoring baseline" in stages and "scoring candidate" in stages
    assert "loading openai/fake ..." in out
