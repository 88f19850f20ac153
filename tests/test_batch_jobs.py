"""Provider batch jobs, end to end against FakeLLMServer's Files and Batches APIs (real HTTP, our own transport)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest
from pydantic import BaseModel

from dspydantic import (
    BatchError,
    ConfigurationError,
    ExtractionError,
    ExtractionResult,
    LMError,
    PersistenceError,
    Prompter,
)
from dspydantic._cost import cost_usd
from dspydantic._render import Demo
from dspydantic.errors import BatchJobError, BatchJobItemError
from dspydantic.testing import FakeLLMServer, Fault, last_user_text

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-test-SECRET-0123456789abcdef"
_NUMBER = re.compile(r"document #(\d+)")


class Item(BaseModel):
    n: int
    label: str


def answer_by_number(body: dict[str, Any]) -> Any:
    """Answers ``{"n": N, "label": ...}`` for "document #N"; "FAIL" -> a provider error, "BAD" -> invalid JSON;
    a re-ask (the prompt says the previous answer was not valid) gets a valid answer."""
    text = last_user_text(body)
    if text.startswith("Your answer was not valid"):
        prior = "\n".join(str(m.get("content")) for m in body["messages"] if m.get("role") == "user")
        n = int(_NUMBER.findall(prior)[-1])
        return {"n": n, "label": f"fixed-{n}"}
    if "FAIL" in text:
        return Fault(status=500, body="the model is overloaded")
    if "BAD" in text:
        return "I could not find anything, sorry."
    match = _NUMBER.search(text)
    return {"n": int(match.group(1)) if match else -1, "label": "ok"}


def doc(i: int, tag: str = "") -> str:
    return f"document #{i}: an invoice {tag}".strip()


@pytest.fixture()
def srv() -> Any:
    with FakeLLMServer() as server:
        server.set_responder(answer_by_number)
        yield server


@pytest.fixture(autouse=True)
def _batch_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    jobs = tmp_path / "jobs"
    monkeypatch.setenv("DSPYDANTIC_BATCH_DIR", str(jobs))
    return jobs


def make(srv: FakeLLMServer, **kwargs: Any) -> Prompter:
    return Prompter(model=Item, model_id="openai/fake-batch", api_base=srv.base_url, api_key=SECRET, **kwargs)


# -- the prompt is exactly the real-time one -------------------------------------------------------------


def test_each_line_is_the_request_run_would_send(srv: FakeLLMServer) -> None:
    p = make(
        srv,
        system_prompt="You read invoices.",
        field_descriptions={"label": "a short label"},
        demos=[Demo(input="document #0", output={"n": 0, "label": "zero"})],
        temperature=0.2,
        max_tokens=64,
    )
    assert p.run(doc(5)).n == 5
    assert p.run(text=doc(6)).n == 6  # input keywords
    assert p.run({"page": doc(7)}).n == 7  # template variables
    realtime = [r.body for r in srv.chat_requests]
    job = p.submit_batch([doc(5), {"text": doc(6)}, {"page": doc(7)}])
    (upload,) = srv.batches.uploads
    lines = upload.lines()
    assert [line["body"] for line in lines] == realtime  # byte-for-byte the same JSON body as run() sent
    assert all(line["url"] == "/v1/chat/completions" and line["method"] == "POST" for line in lines)
    created = [r for r in srv.requests if r.path == "/v1/batches" and r.method == "POST"]
    assert created[0].body["endpoint"] == "/v1/chat/completions" and created[0].body["completion_window"] == "24h"
    assert created[0].headers["authorization"] == f"Bearer {SECRET}"
    assert job.results() == [Item(n=5, label="ok"), Item(n=6, label="ok"), Item(n=7, label="ok")]


def test_lines_are_the_bytes_json_dumps_writes_and_large_jobs_split_into_several_batches(
    srv: FakeLLMServer,
) -> None:
    from dspydantic.integrations import _batch_bridge as bridge
    from dspydantic.integrations._batch_lines import LineEncoder

    p = make(srv, instruction_prompt="Extract the {kind}.")  # a templated prompt: the system message changes
    fp = bridge.fingerprint(p)
    plain = make(srv)
    items = [(plain, doc(1)), (plain, doc(2)), (p, {"kind": "invoice", "page": doc(3)}),
             (p, {"kind": "receipt", "page": "ünïcödé \"q\""}), (p, {"kind": "receipt", "page": doc(4)}),
             (plain, doc(4)), (plain, {"text": "document #5 \u2028 with a line separator"})]
    encoder = LineEncoder()
    for prompter, item in items:
        line = bridge.render(prompter, item, fp)
        whole = {"custom_id": line.custom_id, "method": "POST", "url": "/v1/chat/completions", "body": line.body}
        assert encoder.encode(line) == json.dumps(whole, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
    job = make(srv).submit_batch([doc(i) for i in range(7)], max_requests_per_batch=3)
    assert [len(u.lines()) for u in srv.batches.uploads] == [3, 3, 1] and len(job.batch_ids) == 3
    job.wait(poll=0.05, timeout=10)
    assert job.results() == [Item(n=i, label="ok") for i in range(7)]


def test_custom_ids_are_stable_across_processes_and_change_with_the_prompt(srv: FakeLLMServer) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from pydantic import BaseModel
        from dspydantic import Prompter
        from dspydantic.integrations import _batch_bridge as bridge

        class Item(BaseModel):
            n: int
            label: str

        p = Prompter(model=Item, model_id="openai/fake-batch", api_base={srv.base_url!r}, api_key="other-key")
        fp = bridge.fingerprint(p)
        print(bridge.render(p, "document #1", fp).custom_id)
        """
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), check=True)
    from dspydantic.integrations import _batch_bridge as bridge

    p = make(srv)
    here = bridge.render(p, "document #1", bridge.fingerprint(p)).custom_id
    assert child.stdout.strip() == here
    p.state = p.state.replace(instruction_prompt="Extract carefully.")
    assert bridge.render(p, "document #1", bridge.fingerprint(p)).custom_id != here


# -- the process dies between submit and fetch -----------------------------------------------------------

_WORKER = """
import json, sys, time
from pydantic import BaseModel
from dspydantic import Prompter

class Item(BaseModel):
    n: int
    label: str

mode, base_url, job_file = sys.argv[1:4]
p = Prompter(model=Item, model_id="openai/fake-batch", api_base=base_url, api_key="{secret}")
if mode == "submit":
    docs = []
    for i in range(1000):
        tag = "FAIL" if i % 100 == 7 else "BAD" if i % 100 == 42 else ""
        docs.append(f"document #{{i}}: an invoice {{tag}}".strip())
    job = p.submit_batch(docs, name="archive", path=job_file)
    print("SUBMITTED", job.id, flush=True)
    time.sleep(600)  # killed here, between submit and fetch
else:
    job = p.resume_batch(job_file)
    job.wait(poll=0.1, timeout=60)
    out = []
    for r in job.results():
        if isinstance(r, Exception):
            out.append({{"error": type(r).__name__, "reason": getattr(r, "reason", None),
                        "status": getattr(r, "status", None), "index": getattr(r, "batch_index", None)}})
        else:
            out.append(r.model_dump())
    print(json.dumps({{"results": out, "calls": job.usage.calls, "tokens": job.usage.total_tokens,
                      "openai_imported": "openai" in sys.modules}}))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_1000_inputs_survive_a_killed_submitter_and_resume_in_a_new_process(
    srv: FakeLLMServer, tmp_path: Path
) -> None:
    srv.batches.duration = 3.0
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(secret=SECRET))
    job_file = tmp_path / "job.json"
    submitter = subprocess.Popen(
        [sys.executable, str(script), "submit", srv.base_url, str(job_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        assert submitter.stdout is not None
        line = submitter.stdout.readline()
        assert line.startswith("SUBMITTED"), submitter.stderr.read() if submitter.stderr else line
        batch_id = line.split()[1]
        assert srv.batches.batch(batch_id)["status"] == "in_progress"
    finally:
        submitter.send_signal(signal.SIGKILL)
        submitter.wait(timeout=10)
    assert submitter.returncode == -signal.SIGKILL
    assert job_file.is_file()

    resumed = subprocess.run(
        [sys.executable, str(script), "resume", srv.base_url, str(job_file)],
        capture_output=True, text=True, env=_env(), timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    results = report["results"]
    assert len(results) == 1000
    for i, r in enumerate(results):
        if i % 100 == 7:  # the provider failed that line: a typed error in its slot
            assert r == {"error": "BatchJobItemError", "reason": "provider", "status": 500, "index": i}
        elif i % 100 == 42:  # the answer did not validate
            assert r == {"error": "ExtractionError", "reason": None, "status": None, "index": i}
        else:
            assert r == {"n": i, "label": "ok"}
    assert report["calls"] == 990  # 1000 lines, 10 failed at the provider
    assert report["openai_imported"] is False  # the Files/Batches calls went through our own transport
    # one upload and one batch: the new process only read the job
    assert len(srv.batches.uploads) == 1 and srv.batches.batch_ids == [batch_id]
    assert len(srv.batches.uploaded_custom_ids()) == 1000
    assert srv.chat_requests == []
    record = job_file.read_text()
    assert SECRET not in record and "authorization" not in record.lower() and "bearer" not in record.lower()
    assert "document #" not in record and "invoice" not in record  # ids only, no document text


# -- answers are grounded in their documents, as run() grounds them -------------------------------------


def test_batch_answers_are_grounded_like_run_in_this_process_and_after_resume(srv: FakeLLMServer) -> None:
    """The label "ok" is in the first document and not in the second: per-field confidence and the
    ungrounded list are run()'s, whether the job is read where it was submitted (texts in memory) or resumed
    elsewhere (texts read back from the job's input file at the provider); nothing is written to disk."""
    p = make(srv)
    docs = [doc(0, "ok"), doc(1)]
    job = p.submit_batch(docs)
    job.wait(poll=0.05, timeout=10)
    here = job.results(with_confidence=True)
    input_file = srv.batches.uploads[0].id

    def input_reads() -> int:
        return sum(1 for r in srv.requests if r.method == "GET" and r.path.endswith(f"/files/{input_file}/content"))

    assert input_reads() == 0  # in the submitting process the texts are in memory
    live = [p.predict_with_confidence(d) for d in docs]
    assert [r.ungrounded for r in here] == [r.ungrounded for r in live] == [[], ["label"]]
    assert [r.field_confidences for r in here] == [r.field_confidences for r in live]
    assert here[1].field_confidences["label"] < here[0].field_confidences["label"]

    elsewhere = make(srv).resume_batch(job.id)  # a new Prompter: no texts in memory
    got = elsewhere.results(with_confidence=True)
    assert input_reads() == 1
    assert [r.ungrounded for r in got] == [[], ["label"]]
    assert [r.field_confidences for r in got] == [r.field_confidences for r in here]
    assert "document #" not in job.path.read_text()  # the record keeps ids only

    unground = make(srv).resume_batch(job.id).results(with_confidence=True, ground=False)
    assert [r.ungrounded for r in unground] == [[], []] and input_reads() == 1


def test_an_altered_or_deleted_input_file_never_grounds_in_other_text(srv: FakeLLMServer) -> None:
    p = make(srv)
    job = p.submit_batch([doc(0, "ok"), doc(1, "ok")])
    job.wait(poll=0.05, timeout=10)
    upload = srv.batches.uploads[0]
    upload.data = upload.data.replace(b"document #1: an invoice ok", b"document #1: an invoice")
    got = make(srv).resume_batch(job.id).results(with_confidence=True)
    # line 0 still hashes to its custom_id (grounded); line 1 no longer does: its text is not used
    ungrounded = make(srv).resume_batch(job.id).results(with_confidence=True, ground=False)
    assert got[0].field_confidences == make(srv).predict_with_confidence(doc(0, "ok")).field_confidences
    assert got[1].data == Item(n=1, label="ok") and got[1].ungrounded == []
    assert got[1].field_confidences == ungrounded[1].field_confidences  # as without grounding, not "ok"-less text
    srv.batches.delete_file(upload.id)
    with pytest.warns(UserWarning, match="input file .* is gone"):
        gone = make(srv).resume_batch(job.id).results(with_confidence=True)
    assert [r.data for r in gone] == [Item(n=0, label="ok"), Item(n=1, label="ok")]


# -- failures land in their slots ----------------------------------------------------------------------


def test_provider_failures_and_invalid_answers_land_in_their_slots(srv: FakeLLMServer) -> None:
    p = make(srv)
    docs = [doc(0), doc(1, "FAIL"), doc(2, "BAD"), doc(3)]
    job = p.submit_batch(docs)
    job.wait(poll=0.05, timeout=10)
    out = job.results()
    assert out[0] == Item(n=0, label="ok") and out[3] == Item(n=3, label="ok")
    assert isinstance(out[1], BatchJobItemError)
    assert (out[1].reason, out[1].status, out[1].retryable, out[1].batch_index) == ("provider", 500, True, 1)
    assert "overloaded" in str(out[1])
    assert isinstance(out[2], ExtractionError) and out[2].raw_output == "I could not find anything, sorry."
    assert out[2].batch_index == 2 and "reask=True" in str(out[2])
    with pytest.raises(BatchError) as info:
        job.results(on_error="raise")
    assert sorted(info.value.errors) == [1, 2] and info.value.results[0] == Item(n=0, label="ok")


def test_reask_goes_through_the_real_time_path_only_when_asked(srv: FakeLLMServer) -> None:
    p = make(srv)
    docs = [doc(0), doc(1, "BAD"), doc(2), doc(3, "BAD")]
    job = p.submit_batch(docs)
    job.wait(poll=0.05, timeout=10)
    assert isinstance(job.results()[1], ExtractionError) and srv.chat_requests == []
    out = job.results(reask=True, with_confidence=True)
    assert [r.data for r in out] == [
        Item(n=0, label="ok"), Item(n=1, label="fixed-1"), Item(n=2, label="ok"), Item(n=3, label="fixed-3")
    ]
    assert [r.attempts for r in out] == [1, 2, 1, 2]
    # grounded as run() grounds: "1" is in "document #1", "fixed-1" is not; the re-ask lowers both fields
    assert out[1].ungrounded == ["label"] and out[1].field_confidences["n"] == 0.75
    # the re-asks are the uploaded request plus the invalid answer and the validation feedback
    sent = {line["custom_id"]: line["body"]["messages"] for line in srv.batches.uploads[0].lines()}
    reasks = srv.chat_requests
    assert len(reasks) == 2
    # the two re-asks run concurrently: match each to its item by the request it extends, not by arrival order
    expected = [sent[out[1].extra["custom_id"]], sent[out[3].extra["custom_id"]]]
    assert sorted((r.messages[:-2] for r in reasks), key=str) == sorted(expected, key=str)
    for request in reasks:
        assert request.messages[-2] == {"role": "assistant", "content": "I could not find anything, sorry."}
    assert job.reask_usage.calls == 2 and job.usage.calls == 4


def test_an_expired_window_leaves_typed_errors_for_the_lines_not_reached(srv: FakeLLMServer) -> None:
    srv.batches.duration = 1.0
    srv.batches.expire_after = 0.45  # 4 of 10 lines done when the window closes
    p = make(srv)
    job = p.submit_batch([doc(i) for i in range(10)])
    seen: list[str] = []
    status = job.wait(poll=0.05, timeout=10, on_progress=lambda s: seen.append(s.state))
    assert status.state == "expired" and status.done and status.completed == 4 and status.failed == 6
    assert seen[-1] == "expired" and "in_progress" in seen
    out = job.results()
    assert out[:4] == [Item(n=i, label="ok") for i in range(4)]
    for i, r in enumerate(out[4:], 4):
        assert isinstance(r, BatchJobItemError) and r.reason == "expired" and r.batch_index == i


def test_cancel_keeps_the_answers_so_far(srv: FakeLLMServer) -> None:
    srv.batches.duration = 30.0
    p = make(srv)
    job = p.submit_batch([doc(i) for i in range(6)])
    status = job.cancel()
    assert status.state == "cancelled" and status.done
    assert all(isinstance(r, BatchJobItemError) and r.reason == "cancelled" for r in job.results())


def test_results_before_the_end_and_a_wait_timeout_are_typed_errors(srv: FakeLLMServer) -> None:
    srv.batches.duration = 30.0
    job = make(srv).submit_batch([doc(1)])
    with pytest.raises(BatchJobError, match="not finished") as info:
        job.results()
    assert info.value.state == "in_progress"
    started = time.monotonic()
    with pytest.raises(BatchJobError, match="still in_progress"):
        job.wait(poll=0.05, timeout=0.3)
    assert time.monotonic() - started < 5


# -- re-submission reuses finished work -------------------------------------------------------------------


def test_resubmission_uploads_only_what_no_earlier_job_answered(srv: FakeLLMServer) -> None:
    p = make(srv)
    first = p.submit_batch([doc(i, "FAIL" if i == 3 else "") for i in range(10)])
    first.wait(poll=0.05, timeout=10)
    srv.set_responder(lambda body: answer_by_number(body) if "FAIL" not in last_user_text(body) else {
        "n": 3, "label": "second try"})
    second = p.submit_batch([doc(i, "FAIL" if i == 3 else "") for i in range(10)] + [doc(i) for i in range(10, 15)])
    first_ids = [line["custom_id"] for line in srv.batches.uploads[0].lines()]
    second_ids = [line["custom_id"] for line in srv.batches.uploads[1].lines()]
    # the line the provider failed is sent again, with the 5 new inputs; the 9 answered lines are not
    assert second_ids == [first_ids[3]] + [line[0] for line in second.record["lines"][10:]]
    assert len(srv.batches.uploads) == 2 and len(second_ids) == 6
    assert second.submit_timings["reused"] == 9 and second.submit_timings["uploaded"] == 6
    second.wait(poll=0.05, timeout=10)
    out = second.results(with_confidence=True)
    assert [r.data.n for r in out] == list(range(15))
    assert out[3].data.label == "second try"
    assert {r.extra["batch_id"] for r in out[:3]} == {first.id} and out[3].extra["batch_id"] == second.id
    assert second.usage.calls == 15


def test_resubmission_while_the_first_job_runs_uploads_nothing(srv: FakeLLMServer) -> None:
    srv.batches.duration = 0.6
    p = make(srv)
    first = p.submit_batch([doc(i) for i in range(5)])
    again = p.submit_batch([doc(i) for i in range(5)])
    assert len(srv.batches.uploads) == 1 and again.id.startswith("local-") and again.batch_ids == [first.id]
    assert not again.status().done
    again.wait(poll=0.05, timeout=10)
    assert again.results() == [Item(n=i, label="ok") for i in range(5)]


def test_answers_go_to_the_prompters_cache_and_are_reused_from_it(
    srv: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_dir = tmp_path / "cache"
    p = make(srv, cache=str(cache_dir))
    job = p.submit_batch([doc(i) for i in range(4)])
    job.wait(poll=0.05, timeout=10)
    assert len(job.results()) == 4
    # the batch answers are the real-time path's cache entries: run() makes no call
    assert p.run(doc(2)) == Item(n=2, label="ok") and srv.chat_requests == []
    # a new prompter (another process would do the same) with the same cache, and no earlier job files
    monkeypatch.setenv("DSPYDANTIC_BATCH_DIR", str(tmp_path / "other-jobs"))
    fresh = make(srv, cache=str(cache_dir))
    again = fresh.submit_batch([doc(i) for i in range(6)])
    assert len(srv.batches.uploads) == 2
    assert [line["custom_id"] for line in srv.batches.uploads[1].lines()] == [
        line[0] for line in again.record["lines"][4:]
    ]
    assert again.submit_timings["cached"] == 4 and again.submit_timings["uploaded"] == 2
    again.wait(poll=0.05, timeout=10)
    out = again.results(with_confidence=True)
    assert [r.data.n for r in out] == list(range(6))
    assert [r.cached for r in out] == [True] * 4 + [False] * 2
    assert again.usage.cache_hits == 4 and again.usage.calls == 2
    # everything answered already: nothing is uploaded, the job is done at once
    third = fresh.submit_batch([doc(i) for i in range(6)])
    assert len(srv.batches.uploads) == 2 and third.id.startswith("local-") and third.batch_ids == []
    assert third.status().done and third.results() == [Item(n=i, label="ok") for i in range(6)]


def test_only_answers_that_validated_go_into_the_cache(srv: FakeLLMServer, tmp_path: Path) -> None:
    p = make(srv, cache=str(tmp_path / "cache"))
    job = p.submit_batch([doc(0), doc(1, "BAD")])
    job.wait(poll=0.05, timeout=10)
    out = job.results()
    assert out[0] == Item(n=0, label="ok") and isinstance(out[1], ExtractionError)
    assert p.run(doc(0)) == Item(n=0, label="ok") and srv.chat_requests == []  # the valid answer was cached
    # the invalid answer was not: run() asks the LM (which answers invalid again, then the re-ask validates)
    assert p.run(doc(1, "BAD")) == Item(n=1, label="fixed-1")
    assert len(srv.chat_requests) == 2
    fresh = make(srv, cache=str(tmp_path / "cache"))
    again = fresh.submit_batch([doc(0), doc(1, "BAD")], path=tmp_path / "again.json")
    assert again.submit_timings["cached"] == 1 and again.record["lines"][0][1] == -1


# -- the Files/Batches calls go through the Prompter's transport ------------------------------------------


def test_batch_api_calls_use_the_prompters_proxy_key_and_retry_policy(srv: FakeLLMServer) -> None:
    from urllib.parse import urlsplit

    from ._proxy import ForwardProxy

    with ForwardProxy() as proxy:
        p = make(srv, proxy=proxy.url(), retry_backoff=0.01)
        srv.batches.fail_next("POST", "/files", 503)
        srv.batches.fail_next("GET", "/batches/", 502)
        srv.batches.fail_next("GET", "/files/", 500)
        job = p.submit_batch([doc(1), doc(2)])
        job.wait(poll=0.05, timeout=10)
        assert job.results() == [Item(n=1, label="ok"), Item(n=2, label="ok")]
        seen = [(s.method, urlsplit(s.target).path) for s in proxy.seen]
    assert seen == [(r.method, r.path) for r in srv.requests]  # every call went through the proxy
    assert seen[:3] == [("POST", "/v1/files"), ("POST", "/v1/files"), ("POST", "/v1/batches")]  # 503 retried
    assert seen.count(("GET", f"/v1/batches/{job.id}")) >= 3  # one 502 retried, then wait() and results()
    content = [path for method, path in seen if method == "GET" and path.endswith("/content")]
    assert len(content) == 2 and content[0] == content[1]  # the 500 on the output file was retried
    assert all(r.headers["authorization"] == f"Bearer {SECRET}" for r in srv.requests)
    upload = srv.requests[1]
    assert upload.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert upload.body == {"purpose": "batch", "filename": upload.body["filename"], "bytes": len(
        srv.batches.uploads[0].data)}


def test_without_retries_a_batch_api_fault_is_a_typed_error_without_the_key(srv: FakeLLMServer) -> None:
    p = make(srv, lm_retries=0)
    srv.batches.fail_next("POST", "/batches", 503)
    with pytest.raises(LMError) as info:
        p.submit_batch([doc(1)])
    err = info.value
    assert err.status == 503 and err.retryable and "creating the batch" in str(err) and SECRET not in str(err)
    assert [(r.method, r.path) for r in srv.requests] == [("POST", "/v1/files"), ("POST", "/v1/batches")]


def test_our_client_sends_what_the_official_openai_client_sends(srv: FakeLLMServer) -> None:
    """The same calls through the official ``openai`` client and through ours reach the fake identically
    (method, path, the fields each request carries, the key): our client speaks the documented wire."""
    openai = pytest.importorskip("openai")
    from dspydantic.integrations import _batch_bridge as bridge

    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "fake-batch", "messages": [{"role": "user", "content": "document #1"}]}}
    data = (json.dumps(line) + "\n").encode()

    def wire(since: int) -> list[tuple[str, str, str, Any]]:
        ids = {}
        out = []
        for r in srv.requests[since:]:
            path = re.sub(r"(file|batch)_?-?fake\d+", lambda m: ids.setdefault(m.group(0), f"<{len(ids)}>"), r.path)
            body = json.loads(re.sub(r"(file|batch)_?-?fake\d+",
                                     lambda m: ids.setdefault(m.group(0), f"<{len(ids)}>"), json.dumps(r.body)))
            out.append((r.method, path, r.headers["authorization"], body))
        return out

    client = openai.OpenAI(api_key=SECRET, base_url=srv.base_url, max_retries=0)
    uploaded = client.files.create(file=("in.jsonl", data, "application/jsonl"), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"k": "v"})
    client.batches.retrieve(batch.id)
    assert client.files.content(uploaded.id).content == data
    client.batches.cancel(batch.id)
    client.close()
    theirs = wire(0)

    ours_client = bridge.provider(make(srv))
    file_id = ours_client.upload(data, "in.jsonl")
    created = ours_client.create(file_id, {"k": "v"})
    ours_client.retrieve(created["id"])
    assert list(ours_client.lines(file_id)) == [line]
    ours_client.cancel(created["id"])
    ours = wire(len(theirs))
    assert ours == theirs and len(ours) == 5


# -- records, resume, store ---------------------------------------------------------------------------------


def test_the_job_record_holds_no_secret(srv: FakeLLMServer, tmp_path: Path) -> None:
    base = srv.base_url.replace("http://", "http://batchuser:hunter2-password@")
    p = Prompter(model=Item, model_id="openai/fake-batch", api_base=base, api_key=SECRET)
    job = p.submit_batch([doc(1), doc(2)], name="nightly", path=tmp_path / "job.json")
    text = (tmp_path / "job.json").read_text()
    for secret in (SECRET, "hunter2-password", "batchuser", "Bearer", "uthorization"):
        assert secret not in text
    record = json.loads(text)
    assert record["endpoint"] == srv.base_url and record["name"] == "nightly" and record["id"] == job.id
    job.wait(poll=0.05, timeout=10)
    assert job.results() == [Item(n=1, label="ok"), Item(n=2, label="ok")]


class DictStore:
    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    def save_batch_job(self, job_id: str, record: dict[str, Any]) -> None:
        self.records[job_id] = json.loads(json.dumps(record))

    def load_batch_job(self, job_id: str) -> dict[str, Any] | None:
        return self.records.get(job_id)


def test_a_store_records_jobs_and_resume_finds_them_by_id(srv: FakeLLMServer, _batch_dir: Path) -> None:
    store = DictStore()
    p = make(srv)
    job = p.submit_batch([doc(1), doc(2)], store=store)
    assert job.path is None and job.id in store.records and not _batch_dir.exists()
    assert SECRET not in json.dumps(store.records)
    again = make(srv).resume_batch(job.id, store=store)
    again.wait(poll=0.05, timeout=10)
    assert again.results() == [Item(n=1, label="ok"), Item(n=2, label="ok")]
    third = p.submit_batch([doc(1), doc(2), doc(3)], store=store)  # reuse through the store's index
    assert [line["custom_id"] for line in srv.batches.uploads[-1].lines()] == [third.record["lines"][2][0]]


def test_resume_refuses_another_prompter_endpoint_or_a_damaged_record(srv: FakeLLMServer, tmp_path: Path) -> None:
    job = make(srv).submit_batch([doc(1)], path=tmp_path / "job.json")
    changed = make(srv, system_prompt="Something else.")
    with pytest.raises(ConfigurationError, match="another prompter"):
        changed.resume_batch(tmp_path / "job.json")
    with FakeLLMServer() as other, pytest.raises(ConfigurationError, match="lives at"):
        make(other).resume_batch(tmp_path / "job.json")
    by_id = make(srv).submit_batch([doc(2)])  # recorded in the default directory: found by its id
    assert by_id.path is not None and make(srv).resume_batch(by_id.id).record == by_id.record
    assert job.id != by_id.id
    with pytest.raises(ConfigurationError, match="no batch job record"):
        make(srv).resume_batch("batch_does_not_exist")
    damaged = json.loads((tmp_path / "job.json").read_text())
    damaged["items"] = [5]
    (tmp_path / "bad.json").write_text(json.dumps(damaged))
    with pytest.raises(PersistenceError, match="line indexes"):
        make(srv).resume_batch(tmp_path / "bad.json")


# -- what has no batch endpoint ----------------------------------------------------------------------------


class _NoBatches(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _not_found(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"error": {"message": "Not Found"}}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _not_found

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_backends_without_a_batch_endpoint_name_predict_batch() -> None:
    class Custom:
        cache_id = "custom"
        context_window = None

        def complete(self, request: Any) -> Any: ...
        async def acomplete(self, request: Any) -> Any: ...
        def close(self) -> None: ...

    for p in (
        Prompter(model=Item, model_id="anthropic/claude-3-5-haiku-latest", api_key="x"),
        Prompter(model=Item, lm=Custom()),
    ):
        with pytest.raises(ConfigurationError, match=r"predict_batch"):
            p.submit_batch([doc(1)])
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoBatches)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        p = Prompter(model=Item, model_id="openai/x", api_base=f"http://127.0.0.1:{server.server_port}/v1",
                     api_key=SECRET, lm_retries=0)
        with pytest.raises(Exception, match="predict_batch") as info:
            p.submit_batch([doc(1)])
        assert info.value.status == 404 and SECRET not in str(info.value)  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def test_a_backend_wrapped_in_layers_is_unwrapped_to_its_endpoint(srv: FakeLLMServer) -> None:
    from dspydantic.lm.layers import RetryingBackend
    from dspydantic.lm.openai_compat import OpenAICompatBackend

    base = OpenAICompatBackend("fake-batch", api_base=srv.base_url, api_key=SECRET)
    p = Prompter(model=Item, lm=RetryingBackend(base, retries=0))
    job = p.submit_batch([doc(1), doc(2)])
    assert job.record["endpoint"] == srv.base_url
    job.wait(poll=0.05, timeout=10)
    assert job.results() == [Item(n=1, label="ok"), Item(n=2, label="ok")]


def test_bad_arguments_fail_before_any_request(srv: FakeLLMServer) -> None:
    p = make(srv)
    with pytest.raises(ConfigurationError, match="at least one input"):
        p.submit_batch([])
    with pytest.raises(ConfigurationError, match="input 1"):
        p.submit_batch([doc(1), 42])
    assert srv.requests == []


def test_a_document_too_long_for_one_request_gets_a_typed_error_in_its_slot(srv: FakeLLMServer) -> None:
    """run() would chunk it; one batch request cannot, so that item is not submitted and says why, while the
    rest of the job is submitted and answered (an invalid item never sinks the batch)."""
    p = make(srv, context_window=256)
    long = "word " * 2000
    job = p.submit_batch([doc(0), long, doc(2)])
    assert len(srv.batches.uploaded_custom_ids()) == 2 and job.submit_timings["too_long"] == 1
    assert all("word word" not in str(line) for f in srv.batches.uploads for line in f.lines())
    job.wait(poll=0.05, timeout=10)
    assert job.status().failed == 1
    out = p.resume_batch(job.id).results()
    assert out[0] == Item(n=0, label="ok") and out[2] == Item(n=2, label="ok")
    assert isinstance(out[1], BatchJobItemError) and out[1].reason == "too_long" and out[1].batch_index == 1
    assert "context window" in str(out[1]) and "prompter.run" in str(out[1])
    assert srv.chat_requests == []


# -- usage and cost ---------------------------------------------------------------------------------------


def test_usage_and_cost_at_the_batch_rate(srv: FakeLLMServer) -> None:
    p = Prompter(model=Item, model_id="openai/gpt-4o-mini", api_base=srv.base_url, api_key=SECRET)
    job = p.submit_batch([doc(i) for i in range(3)])
    job.wait(poll=0.05, timeout=10)
    out = job.results(with_confidence=True)
    assert isinstance(out[0], ExtractionResult)
    assert job.usage.calls == 3 and job.usage.prompt_tokens == sum(r.usage.prompt_tokens for r in out) > 0
    full = cost_usd("openai/gpt-4o-mini", job.usage.prompt_tokens, job.usage.completion_tokens)
    assert full is not None and job.cost_usd == pytest.approx(full / 2)  # OpenAI's batch rate: half price
    unknown = make(srv).submit_batch([doc(1)])
    unknown.wait(poll=0.05, timeout=10)
    unknown.results()
    assert unknown.cost_usd is None  # a model without a listed price


# -- the fake service itself ------------------------------------------------------------------------------


def test_the_fake_rejects_a_malformed_input_file_as_the_service_does(srv: FakeLLMServer) -> None:
    import openai

    client = openai.OpenAI(api_key="k", base_url=srv.base_url)
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": []}}
    data = (json.dumps(line) + "\n" + json.dumps(line) + "\n").encode()
    uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
    assert client.files.content(uploaded.id).content == data
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    failed = client.batches.retrieve(batch.id)
    assert failed.status == "failed" and failed.errors is not None
    assert "duplicate custom_id" in str(failed.errors.data[0].message)
    client.close()


def test_a_provider_batch_id_never_becomes_a_path() -> None:
    from dspydantic.integrations._batch_records import _filename

    assert _filename("batch_6721abc") == "batch_6721abc.json"
    for hostile in ("../../etc/cron.d/x", "/tmp/x", "a/b", "..", ""):
        name = _filename(hostile)
        assert name.startswith("job-") and "/" not in name and name.endswith(".json")
