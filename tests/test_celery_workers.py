"""Celery workers end to end: real ``dspydantic worker`` processes on the local Redis and RabbitMQ, answering
through the fake LLM server; clients that call the tasks by name.

What each test proves is in its docstring. Tests that need a broker skip when it is absent. Every run uses
queues of its own on Redis db 11 (or on RabbitMQ's default vhost, deleted afterwards).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from dspydantic import ConfigurationError, LMError, Prompter
from dspydantic.testing import FakeLLMServer, Fault, Reply, last_user_text

from ._services import (
    Worker,
    celery_client,
    child_env,
    children,
    need_rabbitmq,
    need_redis,
    pdf_with_text,
    purge_redis,
    run_cli,
    unique,
)

pytest.importorskip("celery", reason="the [celery] extra is not installed")

from dspydantic.celery import make_app, threads_per_process


class Invoice(BaseModel):
    vendor: str
    total: float


_DOC = re.compile(r"Invoice from ([^,]+), total (\d+)")


def answer(body: dict[str, Any]) -> Any:
    """The fake LM: reads vendor and total from the document; images get a fixed answer."""
    text = " ".join(m["content"] if isinstance(m["content"], str) else
                    " ".join(p.get("text", "") for p in m["content"])
                    for m in body["messages"] if m["role"] == "user")
    if "unreadable" in text:
        return "not JSON at all"
    if any(isinstance(m["content"], list) and any(p.get("type") == "image_url" for p in m["content"])
           for m in body["messages"]):
        return {"vendor": "From An Image", "total": 1}
    m = _DOC.search(text)
    return {"vendor": m.group(1), "total": int(m.group(2))} if m else {"vendor": "?", "total": 0}


def requests_for(srv: FakeLLMServer, needle: str) -> int:
    return sum(1 for r in srv.chat_requests if needle in last_user_text(r.body))


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        server.set_responder(answer)
        yield server


@pytest.fixture(scope="module")
def saved(llm: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same prompter saved twice (one is served by its folder name); the LM retries nothing itself, so
    every transient fault reaches Celery."""
    root = tmp_path_factory.mktemp("prompters")
    p = Prompter(Invoice, model_id="openai/fake", api_base=llm.base_url, max_retries=1, lm_retries=0)
    p.save(root / "invoice")
    p.save(root / "receipts")
    return {"invoice": root / "invoice", "receipts": root / "receipts"}


def worker(args: list[str], logfile: Path, llm: FakeLLMServer) -> Worker:
    # the endpoint comes from the environment: load() never uses the one a saved directory names
    env = child_env(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=llm.base_url)
    env.pop("DSPYDANTIC_LOCAL_THREADS", None)  # the worker chooses
    w = Worker(args, logfile)
    w.env = env
    return w


@pytest.fixture(scope="module")
def redis_worker(
    saved: dict[str, Path], llm: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Worker, str]]:
    url = need_redis()
    queue = unique("dspydantic_q")
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    args = [f"invoice={saved['invoice']}", str(saved["receipts"]), "--broker", url, "--backend", url,
            "--concurrency", "2", "--queues", queue]
    try:
        with worker(args, log, llm) as w:
            yield w, queue
    finally:
        purge_redis(url, queue)


_CLIENT = r"""
import base64, json, sys
from celery import Celery
broker, queue, pdf, png, txt = sys.argv[1:6]
app = Celery(broker=broker, backend=broker)
def call(name, **kw):
    return app.send_task(name, kwargs=kw, queue=queue).get(timeout=60)
out = {
    "text": call("dspydantic.extract", prompter="invoice", text="Invoice from Acme, total 10"),
    "by_folder": call("dspydantic.extract", prompter="receipts", text="Invoice from Globex, total 20"),
    "pdf": call("dspydantic.extract", prompter="invoice", pdf_path=pdf),
    "pdf_b64": call("dspydantic.extract", prompter="invoice",
                    pdf_base64=base64.b64encode(open(pdf, "rb").read()).decode()),
    "file_pdf": call("dspydantic.extract_file", prompter="invoice", path=pdf),
    "file_png": call("dspydantic.extract_file", prompter="invoice", path=png),
    "file_txt": call("dspydantic.extract_file", prompter="invoice", path=txt),
    "batch": call("dspydantic.extract_batch", prompter="invoice",
                  items=["Invoice from A, total 1", {"text": "Invoice from B, total 2"}, {"pdf_path": "/none.pdf"}]),
    "returned": call("dspydantic.extract", prompter="invoice", text="unreadable", on_error="return"),
}
try:
    call("dspydantic.extract", prompter="nope", text="x")
except Exception as exc:
    out["unknown"] = [type(exc).__name__, str(exc)]
out["imported"] = sorted(m for m in sys.modules if m.split(".")[0] == "dspydantic")
print(json.dumps(out))
"""


def test_a_client_without_dspydantic_calls_the_tasks_by_name(
    redis_worker: tuple[Worker, str], llm: FakeLLMServer, tmp_path: Path
) -> None:
    """Text, PDF (path, base64, file), image and text files, a batch with a bad item, a returned error and
    an unknown prompter, from a client process that never imports dspydantic; each pool process loaded each
    prompter once, after the fork, and the parent loaded none."""
    w, queue = redis_worker
    pytest.importorskip("pypdf")
    image = pytest.importorskip("PIL.Image")
    (tmp_path / "inv.pdf").write_bytes(pdf_with_text(["INVOICE", "Invoice from PdfCo, total 70"]))
    image.new("RGB", (8, 8), "white").save(tmp_path / "scan.png")
    (tmp_path / "inv.txt").write_text("Invoice from TextCo, total 30", encoding="utf-8")
    client = subprocess.run(
        [sys.executable, "-c", _CLIENT, need_redis(), queue, *(str(tmp_path / n) for n in ("inv.pdf", "scan.png",
                                                                                          "inv.txt"))],
        capture_output=True, text=True, timeout=180, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert client.returncode == 0, client.stderr
    out = json.loads(client.stdout.strip().splitlines()[-1])
    assert out["imported"] == []  # the client never imported our code

    text = out["text"]
    assert text["data"] == {"vendor": "Acme", "total": 10.0} and text["error"] is None
    assert text["confidence"] == 1.0 and text["usage"]["calls"] == 1 and text["usage"]["prompt_tokens"] > 0
    assert text["prompter"] == "invoice" and len(text["document_id"]) == 64
    assert text["spans"] == {"vendor": [[13, 17]]} and text["ungrounded"] == []  # "Acme" in the document
    assert out["by_folder"]["data"] == {"vendor": "Globex", "total": 20.0}
    assert out["by_folder"]["prompter"] == "receipts"
    for key in ("pdf", "pdf_b64", "file_pdf"):
        assert out[key]["data"] == {"vendor": "PdfCo", "total": 70.0}, key
    # one idempotency key for one content, however it was sent
    assert out["pdf"]["document_id"] == out["pdf_b64"]["document_id"] == out["file_pdf"]["document_id"]
    assert out["file_png"]["data"] == {"vendor": "From An Image", "total": 1.0}
    assert out["file_txt"]["data"] == {"vendor": "TextCo", "total": 30.0}
    batch = out["batch"]
    assert [b["data"] for b in batch[:2]] == [{"vendor": "A", "total": 1.0}, {"vendor": "B", "total": 2.0}]
    # a missing file is an InputFileNotFoundError (a ConfigurationError and a FileNotFoundError)
    assert batch[2]["data"] is None and batch[2]["error"]["type"] == "InputFileNotFoundError"
    assert "PDF file not found" in batch[2]["error"]["message"]
    returned = out["returned"]
    assert returned["data"] is None and returned["error"]["type"] == "ExtractionError"
    assert "no valid Invoice after 2 attempts" in returned["error"]["message"]
    assert returned["usage"]["calls"] == 2
    assert out["unknown"][0] == "ConfigurationError"
    assert "no prompter named 'nope'" in out["unknown"][1] and "['invoice', 'receipts']" in out["unknown"][1]

    log = w.log()
    loads = re.findall(r"process (\d+) loaded prompter '(\w+)'", log)
    pool = children(w.pid)
    assert len(pool) == 2
    assert sorted(loads) == sorted((str(pid), name) for pid in pool for name in ("invoice", "receipts"))
    assert str(w.pid) not in {pid for pid, _ in loads}  # never in the parent of the pool
    threads = threads_per_process(2)
    assert f"local model threads per worker process: {threads} ({threads_per_process(1)} cores / 2 processes" in log


def test_transient_errors_are_retried_by_celery_and_permanent_ones_fail_the_task(
    redis_worker: tuple[Worker, str], llm: FakeLLMServer
) -> None:
    """Two 503s are retried with backoff until the answer comes; a 400 and an answer that never validates
    fail the task at once with the typed error's message."""
    w, queue = redis_worker
    with celery_client(need_redis(), need_redis()) as app:
        llm.add_response(Fault(status=503), times=2)
        started = time.monotonic()
        ok = app.send_task("dspydantic.extract", kwargs={"prompter": "invoice", "text": "Invoice from Retry, total 5"},
                           queue=queue).get(timeout=90)
        assert ok["data"] == {"vendor": "Retry", "total": 5.0}
        assert requests_for(llm, "Retry") == 3 and time.monotonic() - started < 60
        assert w.log().count("TransientLMError") >= 2 and "Retry in" in w.log()

        llm.add_response(Fault(status=400, body="model 'fake' does not exist"))
        bad = {"prompter": "invoice", "text": "Invoice from Bad, total 1"}
        failed = app.send_task("dspydantic.extract", kwargs=bad, queue=queue)
        with pytest.raises(LMError, match="HTTP 400: model 'fake' does not exist"):
            failed.get(timeout=60)
        assert failed.state == "FAILURE" and requests_for(llm, "Bad") == 1  # not retried

        invalid = app.send_task("dspydantic.extract", kwargs={"prompter": "invoice", "text": "unreadable scan"},
                                queue=queue)
        with pytest.raises(Exception, match="no valid Invoice after 2 attempts") as err:
            invalid.get(timeout=60)
        assert type(err.value).__name__ == "ExtractionError"


def test_a_pool_process_killed_mid_task_is_redelivered_and_stored_once(
    saved: dict[str, Path], llm: FakeLLMServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """kill -9 of the pool process while its LM call is in flight: the message (acks_late,
    reject_on_worker_lost) is delivered again to the new pool process, which extracts it; the store holds
    one row. The same document sent again is answered from the store without an LM call."""
    url = need_redis()
    queue = unique("dspydantic_kill")
    db = tmp_path / "store.db"
    args = [f"invoice={saved['invoice']}", "--broker", url, "--backend", url, "--concurrency", "1",
            "--queues", queue, "--store", f"sqlite:///{db}"]
    text = "Invoice from Killed, total 9"
    request.addfinalizer(lambda: purge_redis(url, queue))
    with worker(args, tmp_path / "w.log", llm) as w, celery_client(url, url) as app:
        (first_pool,) = children(w.pid)
        llm.add_response(Reply(json.dumps({"vendor": "Killed", "total": 9}), delay=30))  # the first call hangs
        result = app.send_task("dspydantic.extract", kwargs={"prompter": "invoice", "text": text}, queue=queue)
        deadline = time.monotonic() + 60
        while requests_for(llm, "Killed") < 1:
            assert time.monotonic() < deadline, w.log()
            time.sleep(0.05)
        os.kill(first_pool, signal.SIGKILL)
        out = result.get(timeout=90)
        assert out["data"] == {"vendor": "Killed", "total": 9.0} and out["status"] == "done"
        assert requests_for(llm, "Killed") == 2  # the killed call, and the redelivered one
        assert "WorkerLostError" in w.log() or "signal 9" in w.log()
        (second_pool,) = children(w.pid)
        assert second_pool != first_pool
        assert f"process {second_pool} loaded prompter 'invoice'" in w.log()

        again = app.send_task("dspydantic.extract", kwargs={"prompter": "invoice", "text": text},
                              queue=queue).get(timeout=60)
        assert again["document_id"] == out["document_id"] and again["data"] == out["data"]
        assert requests_for(llm, "Killed") == 2  # answered from the store

    from dspydantic.store import ExtractionStore

    with ExtractionStore(f"sqlite:///{db}") as store:
        docs = store.documents()
    assert [(d.id, d.status, d.data) for d in docs] == [(out["document_id"], "done", out["data"])]


def test_rabbitmq_a_killed_worker_is_replaced_and_the_task_completes_once(
    saved: dict[str, Path], llm: FakeLLMServer, tmp_path: Path
) -> None:
    """On RabbitMQ (rpc:// results): one normal round trip; then the whole worker (main process and pool) is
    SIGKILLed mid-task, the broker requeues the unacknowledged message, a second worker (thread pool)
    completes it; one row in the store. The thread pool loads the prompter in its own process and gives the
    local model every core."""
    amqp = need_rabbitmq()
    queue = unique("dspydantic_amqp")
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    common = [f"invoice={saved['invoice']}", "--broker", amqp, "--backend", "rpc://", "--queues", queue,
              "--store", store_url]
    with celery_client(amqp, "rpc://") as app:
        try:
            with worker([*common, "--concurrency", "1"], tmp_path / "a.log", llm) as a:
                quick = app.send_task("dspydantic.extract", kwargs={"prompter": "invoice",
                                                                    "text": "Invoice from Rabbit, total 4"},
                                      queue=queue).get(timeout=60)
                assert quick["data"] == {"vendor": "Rabbit", "total": 4.0}
                llm.add_response(Reply(json.dumps({"vendor": "Crash", "total": 3}), delay=30))
                result = app.send_task("dspydantic.extract",
                                       kwargs={"prompter": "invoice", "text": "Invoice from Crash, total 3"},
                                       queue=queue)
                deadline = time.monotonic() + 60
                while requests_for(llm, "Crash") < 1:
                    assert time.monotonic() < deadline, a.log()
                    time.sleep(0.05)
                a.kill()
            with worker([*common, "--pool", "threads", "--concurrency", "2"], tmp_path / "b.log", llm) as b:
                out = result.get(timeout=90)
                assert out["data"] == {"vendor": "Crash", "total": 3.0}
                assert requests_for(llm, "Crash") == 2
                assert f"process {b.pid} loaded prompter 'invoice'" in b.log()
                assert f"local model threads per worker process: {threads_per_process(1)} (" in b.log()
        finally:
            with app.connection_for_write() as conn:
                conn.default_channel.queue_delete(queue)

    from dspydantic.store import ExtractionStore

    with ExtractionStore(store_url) as store:
        assert sorted((d.data["vendor"], d.status) for d in store.documents()) == [("Crash", "done"),
                                                                                   ("Rabbit", "done")]


def test_eager_mode_runs_the_same_tasks_in_process(llm: FakeLLMServer, saved: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """No broker: the tasks run when called, with Celery's retries; a factory works as a prompter spec."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")

    def factory() -> Prompter:
        return Prompter(Invoice, model_id="openai/fake", api_base=llm.base_url, lm_retries=0)

    app = make_app({"invoice": str(saved["invoice"]), "built": factory}, eager=True, retry_backoff=0,
                   load_kwargs={"api_base": llm.base_url})
    extract = app.tasks["dspydantic.extract"]
    assert extract.delay(prompter="invoice", text="Invoice from Eager, total 2").get()["data"] == {
        "vendor": "Eager", "total": 2.0}
    (tmp_path / "doc.txt").write_text("Invoice from FileCo, total 6")
    got = app.tasks["dspydantic.extract_file"].delay(prompter="built", path=str(tmp_path / "doc.txt")).get()
    assert got["data"] == {"vendor": "FileCo", "total": 6.0}
    missing = app.tasks["dspydantic.extract_file"].delay(prompter="built", path=str(tmp_path / "nope.txt"),
                                                          on_error="return").get()
    assert missing["error"]["type"] == "ConfigurationError" and "cannot read" in missing["error"]["message"]
    (tmp_path / "blob.bin").write_bytes(b"\x00\xff\xfe binary")
    with pytest.raises(ConfigurationError, match="neither a PDF, an image nor UTF-8 text"):
        app.tasks["dspydantic.extract_file"].delay(prompter="built", path=str(tmp_path / "blob.bin")).get()
    made_up = extract.delay(prompter="invoice", text="Nothing to read here").get()  # the fake LM answers "?"
    assert made_up["ungrounded"] == ["vendor"] and made_up["field_confidences"]["vendor"] < made_up[
        "field_confidences"]["total"]
    llm.add_response(Fault(status=503))
    assert extract.delay(prompter="invoice", text="Invoice from Flaky, total 8").get()["data"]["vendor"] == "Flaky"
    assert requests_for(llm, "Flaky") == 2
    with pytest.raises(ConfigurationError, match="nothing to extract from"):
        extract.delay(prompter="invoice").get()


def test_worker_command_rejects_bad_prompter_arguments(tmp_path: Path, saved: dict[str, Path]) -> None:
    missing = run_cli("worker", str(tmp_path / "nowhere"), "--broker", "redis://127.0.0.1:1/0")
    assert missing.returncode == 2 and "dspydantic worker:" in missing.stderr and "Traceback" not in missing.stderr
    twice = run_cli("worker", f"a={saved['invoice']}", f"a={saved['receipts']}", "--broker", "memory://")
    assert twice.returncode == 2 and "two prompters are named 'a'" in twice.stderr


def test_local_threads_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from dspydantic.lm.local.backend import _default_threads

    monkeypatch.delenv("DSPYDANTIC_LOCAL_THREADS", raising=False)
    cores = threads_per_process(1)
    assert _default_threads() == cores
    monkeypatch.setenv("DSPYDANTIC_LOCAL_THREADS", "1")
    assert _default_threads() == 1
    for bad in ("0", "-2", "two"):
        monkeypatch.setenv("DSPYDANTIC_LOCAL_THREADS", bad)
        with pytest.raises(ConfigurationError, match="DSPYDANTIC_LOCAL_THREADS must be a positive integer"):
            _default_threads()
    assert threads_per_process(cores * 4) == 1 and threads_per_process(1) == cores
