"""ExtractionStore end to end on the fake LLM server, on SQLite and on the local PostgreSQL.

Every LM call below went over HTTP to ``FakeLLMServer``; "no LM call" is read from its request log.
PostgreSQL runs use a table prefix of their own (dropped afterwards); they skip when the server is absent.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from dspydantic import ConfigurationError, ExtractionResult, MissingExtraError, PersistenceError, Prompter
from dspydantic.store import ExtractionStore
from dspydantic.testing import FakeLLMServer, Reply, message_text

from ._services import child_env, drop_tables, need_postgres, unique

pytest.importorskip("sqlalchemy", reason="the [db] extra is not installed")


class Invoice(BaseModel):
    vendor: str
    total: float


def invoice_for(text: str) -> dict[str, Any]:
    """What the fake LM extracts from 'Invoice from <vendor>, total <n>'."""
    vendor = text.split("from ", 1)[1].split(",", 1)[0]
    return {"vendor": vendor, "total": float(text.rsplit(" ", 1)[1])}


def document_text(body: dict[str, Any]) -> str:
    """The document of an extraction request (a re-ask adds messages after it)."""
    users = [m for m in body["messages"] if m["role"] == "user"]
    return message_text(users[-1 if len(users) == 1 else len(users) - 2]["content"]) if users else ""


def answer(body: dict[str, Any]) -> Any:
    text = document_text(body)
    if "unreadable" in text:
        return "this is not JSON"  # never validates: the extraction fails after the re-asks
    data = invoice_for(text)
    if "smudged" in text:  # the LM is unsure: low token log-probabilities -> low confidence
        return Reply(json.dumps(data), logprobs=[-2.0] * 4)
    return Reply(json.dumps(data), logprobs=[-0.01] * 4)


def texts(*vendors: str) -> list[str]:
    return [f"Invoice from {v}, total {10 * (i + 1)}" for i, v in enumerate(vendors)]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    prefix = unique("t") + "_"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'extractions.db'}", prefix
        return
    url = need_postgres()
    try:
        yield url, prefix
    finally:
        drop_tables(url, prefix)


@pytest.fixture()
def store(store_url: tuple[str, str]) -> Iterator[ExtractionStore]:
    url, prefix = store_url
    with ExtractionStore(url, table_prefix=prefix) as s:
        yield s


@pytest.fixture()
def prompter(srv: FakeLLMServer) -> Prompter:
    srv.set_responder(answer)
    return Prompter(Invoice, model_id="openai/fake", api_base=srv.base_url, api_key="sk-test", logprobs=True,
                    max_retries=1, lm_retries=0)


def test_process_is_idempotent(store: ExtractionStore, prompter: Prompter, srv: FakeLLMServer) -> None:
    inputs = texts("Acme", "Globex")
    docs = store.process(prompter, [*inputs, inputs[0]])  # a duplicate in one call is extracted once
    assert srv.request_count == 2
    assert [d.data for d in docs] == [invoice_for(inputs[0]), invoice_for(inputs[1]), invoice_for(inputs[0])]
    assert docs[0].id == docs[2].id and docs[0].id != docs[1].id
    assert {d.status for d in docs} == {"done"}
    first = docs[0]
    assert first.prompter_name == "Invoice" and first.lm == "openai/fake" and len(first.prompter_version) == 12
    assert first.usage["calls"] == 1 and first.usage["prompt_tokens"] > 0
    assert first.confidence is not None and first.confidence > 0.9
    assert first.input == {"kind": "text", "text": inputs[0]}
    assert first.created_at is not None and first.extracted_at is not None

    again = store.process(prompter, inputs)
    assert srv.request_count == 2  # no LM call
    assert [d.id for d in again] == [docs[0].id, docs[1].id]
    assert [d.updated_at for d in again] == [docs[0].updated_at, docs[1].updated_at]  # nothing rewritten
    assert sum(store.counts().values()) == 2  # no new row


def test_a_changed_prompter_is_a_new_version(store: ExtractionStore, prompter: Prompter, srv: FakeLLMServer) -> None:
    (old,) = store.process(prompter, texts("Acme"))
    prompter.state = prompter.state.replace(system_prompt="You read supplier invoices.")
    (new,) = store.process(prompter, texts("Acme"))
    assert srv.request_count == 2
    assert new.id != old.id and new.prompter_version != old.prompter_version
    assert new.input_sha256 == old.input_sha256  # the same document
    prompter.state = prompter.state.replace(system_prompt=None)
    assert store.process(prompter, texts("Acme"))[0].id == old.id  # back to the first version: stored
    assert srv.request_count == 2


def test_review_queue_and_examples(store: ExtractionStore, prompter: Prompter, srv: FakeLLMServer) -> None:
    good, unsure, broken = texts("Acme", "smudged Globex", "unreadable Initech")
    docs = store.process(prompter, [good, unsure, broken])
    assert [d.status for d in docs] == ["done", "review", "failed"]
    assert docs[1].confidence is not None and docs[1].confidence < 0.8
    assert docs[2].error_type == "ExtractionError" and "no valid Invoice" in (docs[2].error or "")
    assert docs[2].data is None and docs[2].usage["calls"] == 2  # the first answer and one re-ask
    assert [d.id for d in store.pending()] == [docs[1].id, docs[2].id]
    assert store.examples() == []  # nothing reviewed yet

    with pytest.raises(ConfigurationError, match="correct\\(\\) it instead"):
        store.approve(docs[2].id)
    with pytest.raises(ConfigurationError, match="no document with id"):
        store.approve("0" * 64)
    with pytest.raises(ConfigurationError, match="must be a dict"):
        store.correct(docs[1].id, "Globex")

    approved = store.approve(docs[1].id)
    fixed = store.correct(docs[2].id, Invoice(vendor="Initech", total=30))
    assert approved.status == "approved" and approved.reviewed_at is not None
    assert fixed.status == "corrected" and fixed.label == {"vendor": "Initech", "total": 30.0}
    assert store.pending() == []
    with pytest.raises(ConfigurationError, match="corrected already"):
        store.approve(docs[2].id)

    examples = store.examples()
    assert sorted((e.text, e.expected_output) for e in examples) == sorted([
        (unsure, invoice_for(unsure)),
        (broken, {"vendor": "Initech", "total": 30.0}),
    ])
    assert store.examples(name="Other") == []
    # a second correction of the same document replaces the label
    store.correct(docs[2].id, {"vendor": "Initech Ltd", "total": 30.0})
    assert {e.text: e.expected_output for e in store.examples()}[broken] == {"vendor": "Initech Ltd", "total": 30.0}
    assert store.find_ids(docs[2].id[:10]) == [docs[2].id]


def test_failed_documents_are_extracted_again_only_when_asked(
    store: ExtractionStore, prompter: Prompter, srv: FakeLLMServer
) -> None:
    (doc,) = store.process(prompter, texts("unreadable Acme"))
    assert doc.status == "failed" and srv.request_count == 2
    assert store.process(prompter, texts("unreadable Acme"))[0].status == "failed"
    assert srv.request_count == 2
    srv.add_response(json.dumps({"vendor": "Acme", "total": 10}))
    (again,) = store.process(prompter, texts("unreadable Acme"), retry_failed=True)
    assert srv.request_count == 3
    assert again.id == doc.id and again.status == "done" and again.data == {"vendor": "Acme", "total": 10.0}
    assert again.error is None


def test_review_threshold_uses_per_field_confidences_when_present(store_url: tuple[str, str]) -> None:
    url, prefix = store_url
    store = ExtractionStore(url, table_prefix=prefix, review_below=0.8, review_fields=["total"])
    result = ExtractionResult(data=Invoice(vendor="A", total=1), confidence=0.95, raw_output="{}")
    assert store._route(result) == "done"
    result.field_confidences = {"vendor": 0.3, "total": 0.9}  # filled by the confidence work (issue 11)
    assert store._route(result) == "done"  # only "total" is reviewed on
    assert ExtractionStore(url, table_prefix=prefix)._route(result) == "review"  # min over every field
    store.close()


def test_bad_inputs_fail_before_any_lm_call_and_add_no_row(
    store: ExtractionStore, prompter: Prompter, srv: FakeLLMServer
) -> None:
    with pytest.raises(ConfigurationError, match="got int"):
        store.process(prompter, [texts("Acme")[0], 42])
    with pytest.raises(ConfigurationError, match="PDF file not found"):
        store.process(prompter, [{"pdf_path": "/nowhere/x.pdf"}])
    assert srv.request_count == 0 and sum(store.counts().values()) == 0


def test_a_dead_workers_claim_is_taken_over_after_its_lease(
    store_url: tuple[str, str], prompter: Prompter, srv: FakeLLMServer
) -> None:
    url, prefix = store_url
    store = ExtractionStore(url, table_prefix=prefix, lease_seconds=0.5)
    text = texts("Acme")[0]
    # a worker claimed the document and died before writing anything
    from dspydantic.integrations._identity import document_key, prepare_input, prompter_fingerprint

    prep = prepare_input(text)
    key = document_key(prompter_fingerprint(prompter), prep.digest)
    meta = {"prompter_name": "Invoice", "prompter_version": "x", "prompter_fingerprint": "x", "lm": "x"}
    assert store._claim(key, prep, meta, "dead-worker", retry_failed=False)
    (busy,) = store.process(prompter, [text], wait=False)
    assert busy.status == "processing" and srv.request_count == 0  # someone else's live claim: not touched
    started = time.monotonic()
    (doc,) = store.process(prompter, [text])  # waits, then takes the expired claim over
    assert time.monotonic() - started >= 0.3
    assert doc.status == "done" and doc.id == key and srv.request_count == 1
    # the dead worker coming back cannot overwrite the result: the claim is no longer its
    assert not store.record(key, "dead-worker", ValueError("late"))
    stored = store.get(key)
    assert stored is not None and stored.status == "done"
    store.close()


_CONCURRENT = r"""
import json, sys
from dspydantic import Prompter
from dspydantic.store import ExtractionStore
url, prefix, saved, texts = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
prompter = Prompter.load(saved, api_key="sk-test")          # a copy loaded from disk, in another process
store = ExtractionStore(url, table_prefix=prefix)
print("ready", flush=True)
sys.stdin.readline()                                         # all processes start claiming together
docs = store.process(prompter, texts, max_workers=4)
print(json.dumps([[d.id, d.status, d.data] for d in docs]))
"""


def test_several_processes_process_the_same_inputs_once(
    store_url: tuple[str, str], prompter: Prompter, srv: FakeLLMServer, tmp_path: Path
) -> None:
    url, prefix = store_url
    srv.latency = 0.1  # the processes race for the same rows while answers are in flight
    saved = tmp_path / "invoice_prompter"
    prompter.save(saved)
    inputs = texts(*(f"Vendor{i}" for i in range(8)))
    procs = [
        subprocess.Popen([sys.executable, "-c", _CONCURRENT, url, prefix, str(saved), json.dumps(inputs)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=child_env(OPENAI_BASE_URL=srv.base_url))  # the endpoint from the environment
        for _ in range(3)
    ]
    for p in procs:  # every process has imported everything and opened the store...
        assert p.stdout is not None and p.stderr is not None
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    for p in procs:  # ...then they go at once
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    expected = [[invoice_for(t)] for t in inputs]
    for out in outs:
        assert [[data] for _id, _status, data in out] == expected
        assert {status for _id, status, _data in out} == {"done"}
    assert outs[0] == outs[1] == outs[2]
    assert len(srv.chat_requests) == len(inputs)  # every input extracted exactly once, over all processes
    with ExtractionStore(url, table_prefix=prefix) as store:
        assert store.counts()["done"] == len(inputs)
        # the keys are the same in this process, for the original prompter: nothing to do
        docs = store.process(prompter, inputs)
    assert [d.id for d in docs] == [row[0] for row in outs[0]]
    assert len(srv.chat_requests) == len(inputs)


def test_export_jsonl_and_parquet(
    store: ExtractionStore, prompter: Prompter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = texts("Acme", "smudged Globex")
    docs = store.process(prompter, inputs)
    store.correct(docs[1].id, {"vendor": "Globex Corp", "total": 20})
    n = store.export(tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert n == 2 and [r["id"] for r in rows] == [d.id for d in docs]
    assert rows[1]["status"] == "corrected" and rows[1]["label"] == {"vendor": "Globex Corp", "total": 20}
    assert rows[1]["data"] == invoice_for(inputs[1]) and rows[0]["input"]["text"] == inputs[0]
    assert rows[0]["created_at"].endswith("+00:00")

    pq = pytest.importorskip("pyarrow.parquet")
    assert store.export(tmp_path / "out.parquet", status="corrected") == 1
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["id"] for r in table] == [docs[1].id]
    assert json.loads(table[0]["label"]) == {"vendor": "Globex Corp", "total": 20}

    with pytest.raises(ConfigurationError, match=r"\.jsonl or \.parquet"):
        store.export(tmp_path / "out.csv")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    with pytest.raises(MissingExtraError, match=r"dspydantic\[db\]"):
        store.export(tmp_path / "other.parquet")
    assert not (tmp_path / "other.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_batch_job_records(store: ExtractionStore) -> None:
    assert store.load_batch_job("job-1") is None
    store.save_batch_job("job-1", {"state": "submitted", "ids": [1, 2]})
    store.save_batch_job("job-2", {"state": "submitted"})
    store.save_batch_job("job-1", {"state": "done", "ids": [1, 2], "output": {"a": 1.5}})
    assert store.load_batch_job("job-1") == {"state": "done", "ids": [1, 2], "output": {"a": 1.5}}
    assert store.load_batch_job("job-2") == {"state": "submitted"}
    with pytest.raises(ConfigurationError):
        store.save_batch_job("", {})


def test_urls_never_show_the_password() -> None:
    store = ExtractionStore("postgresql+psycopg://user:s3cr3t-pw@127.0.0.1:1/db", create_tables=False)
    assert "s3cr3t" not in store.url and "s3cr3t" not in repr(store)
    pytest.importorskip("psycopg")
    with pytest.raises(PersistenceError) as err:
        store.create_tables()  # nothing listens on port 1
    assert "s3cr3t" not in str(err.value) and "127.0.0.1" in str(err.value)
    with pytest.raises(ConfigurationError, match="not a database URL"):
        ExtractionStore("not a url at all")


# -- field-level confidence (issue 11 "Use it") ---------------------------------------------------------

_FIELDS = re.compile(r"Invoice from (\w+), total (\d+)(?: \((.*)\))?")


def field_answer(body: dict[str, Any]) -> Any:
    """The fake LM with one log-probability per field value: a note in parentheses makes it unsure of a
    field ("unsure vendor" 0.74, "unsure total" 0.61) or answer a vendor the document does not contain."""
    m = _FIELDS.search(document_text(body))
    assert m is not None
    vendor, total, note = m.group(1), float(m.group(2)), m.group(3) or ""
    if "ghost" in note:
        vendor = "Ghostco"  # not in the document: ungrounded
    lp_vendor = -0.3 if "unsure vendor" in note else -0.01
    lp_total = -0.5 if "unsure total" in note else -0.01
    # tokens: '{"vendor":' '"<vendor>",' '"total":' '<total>}'
    return Reply(json.dumps({"vendor": vendor, "total": total}), logprobs=[-0.01, lp_vendor, -0.01, lp_total])


def test_review_queue_routes_on_each_fields_own_threshold_and_keeps_the_grounding(
    store_url: tuple[str, str], srv: FakeLLMServer
) -> None:
    """Per-field thresholds (a map, "*" for the others) decide the queue from the confidences the extraction
    computed; the stored document keeps them, the spans and the ungrounded fields."""
    url, prefix = store_url
    srv.set_responder(field_answer)
    prompter = Prompter(Invoice, model_id="openai/fake", api_base=srv.base_url, api_key="sk-test", logprobs=True)
    inputs = [
        "Invoice from Acme, total 10",
        "Invoice from Globex, total 20 (unsure total)",
        "Invoice from Hesitant, total 30 (unsure vendor)",
        "Invoice from Initech, total 40 (ghost)",
    ]
    with ExtractionStore(url, table_prefix=prefix, review_below={"total": 0.9, "*": 0.5}) as store:
        docs = store.process(prompter, inputs)
        # Globex: total 0.61 < 0.9; Hesitant: vendor 0.74 >= the 0.5 of "*"; Initech: an ungrounded vendor
        assert [d.status for d in docs] == ["done", "review", "done", "review"]
        assert docs[2].field_confidences["vendor"] == pytest.approx(0.741, abs=0.01)
        assert docs[1].field_confidences["total"] == pytest.approx(0.607, abs=0.01)
        assert docs[3].ungrounded == ["vendor"] and docs[3].field_confidences["vendor"] < 0.5
        assert docs[0].ungrounded == [] and docs[0].spans == {"vendor": [[13, 17]]}
        assert inputs[0][13:17] == "Acme"
        assert [d.id for d in store.pending()] == [docs[1].id, docs[3].id]
        exported = tmp_rows(store)
        assert exported[docs[3].id]["ungrounded"] == ["vendor"]
    # one number for every field: the unsure vendor (0.74) is queued too
    with ExtractionStore(url, table_prefix=prefix, review_below=0.8) as strict:
        result = prompter.predict_with_confidence(inputs[2])
        assert strict._route(result) == "review"
    with pytest.raises(ConfigurationError, match=r"review_below\['total'\] must be a number in \[0, 1\]"):
        ExtractionStore(url, table_prefix=prefix, review_below={"total": 2})


def tmp_rows(store: ExtractionStore) -> dict[str, dict[str, Any]]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        store.export(Path(d) / "rows.jsonl")
        return {r["id"]: r for r in map(json.loads, (Path(d) / "rows.jsonl").read_text().splitlines())}


def test_put_records_an_extraction_made_elsewhere_once(store: ExtractionStore, srv: FakeLLMServer) -> None:
    """What the HTTP service does with ``--store``: the result of an extraction is stored under the id
    ``process`` gives the input, once; ``process`` then finds it without an LM call."""
    srv.set_responder(field_answer)
    prompter = Prompter(Invoice, model_id="openai/fake", api_base=srv.base_url, api_key="sk-test", logprobs=True)
    text = "Invoice from Acme, total 10"
    doc = store.put(prompter, text, prompter.predict_with_confidence(text), name="invoice")
    assert doc.status == "done" and doc.data == {"vendor": "Acme", "total": 10.0} and doc.prompter_name == "invoice"
    again = store.put(prompter, text, ValueError("a later failure does not replace a stored result"))
    assert again.id == doc.id and again.status == "done"
    (processed,) = store.process(prompter, [text], name="invoice")
    assert processed.id == doc.id and srv.request_count == 1
    failed = store.put(prompter, "Invoice from Nobody, total 1", ValueError("the LM was down"))
    assert failed.status == "failed" and failed.error == "the LM was down"
    fixed = store.put(prompter, "Invoice from Nobody, total 1",
                      prompter.predict_with_confidence("Invoice from Nobody, total 1"))
    assert fixed.id == failed.id and fixed.status == "done"  # a result replaces a stored failure
    assert sum(store.counts().values()) == 2


def test_a_database_created_before_the_ungrounded_column_is_migrated_in_place(
    store_url: tuple[str, str], prompter: Prompter, srv: FakeLLMServer
) -> None:
    """A documents table as the first release created it (no ``ungrounded`` column), holding a row: opening
    the store adds the column (nullable), the old row reads back unchanged, new rows store the column."""
    import datetime as dt

    import sqlalchemy as sa

    from dspydantic.integrations._store_tables import Tables

    url, prefix = store_url
    current = Tables(prefix).documents
    old_md = sa.MetaData()
    old = sa.Table(current.name, old_md, *(sa.Column(c.name, c.type, primary_key=c.primary_key,
                                                     nullable=c.nullable)
                                           for c in current.columns if c.name != "ungrounded"))
    engine = sa.create_engine(url)
    now = dt.datetime.now(dt.UTC)
    try:
        old_md.create_all(engine)
        with engine.begin() as conn:
            conn.execute(old.insert().values(
                id="a" * 64, input_sha256="b" * 64, prompter_name="Invoice", prompter_version="v1",
                prompter_fingerprint="f" * 64, input={"kind": "text", "text": "old"}, status="done",
                data={"vendor": "Old", "total": 1.0}, confidence=0.9, field_confidences={"vendor": 0.9},
                spans={}, usage={}, created_at=now, updated_at=now))
        assert "ungrounded" not in {c["name"] for c in sa.inspect(engine).get_columns(current.name)}
    finally:
        engine.dispose()
    with ExtractionStore(url, table_prefix=prefix) as store:
        old_doc = store.get("a" * 64)
        assert old_doc is not None and old_doc.data == {"vendor": "Old", "total": 1.0} and old_doc.ungrounded == []
        srv.set_responder(field_answer)
        (new,) = store.process(prompter, ["Invoice from Initech, total 40 (ghost)"])
        assert new.ungrounded == ["vendor"]
    with ExtractionStore(url, table_prefix=prefix) as reopened:  # the second open has nothing to add
        assert reopened.get(new.id) == new
