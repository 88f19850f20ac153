"""Tests of ``dspydantic.testing.FakeLLMServer`` using only ``http.client`` and threads."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from dspydantic.testing import FakeLLMServer, Fault, RecordedRequest, Reply, last_user_text


@pytest.fixture
def srv() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


def _chat_body(user: Any = "hello", model: str = "fake/model", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "system", "content": "You extract."}, {"role": "user", "content": user}],
        **extra,
    }


def _post(
    conn: http.client.HTTPConnection,
    body: dict[str, Any] | bytes,
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, body=payload, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    raw = resp.read()
    assert int(resp.headers["Content-Length"]) == len(raw)
    return resp.status, json.loads(raw), resp


def _conn(server: FakeLLMServer, timeout: float = 10.0) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)


def _content(data: dict[str, Any]) -> str:
    content = data["choices"][0]["message"]["content"]
    assert isinstance(content, str)
    return content


# --------------------------------------------------------------------------- lifecycle & protocol


def test_base_url_and_lifecycle() -> None:
    server = FakeLLMServer()
    with pytest.raises(RuntimeError):
        _ = server.base_url
    server.start()
    port = server.port
    try:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        assert server.url == server.base_url
        assert server.port > 0
        conn = _conn(server)
        assert _post(conn, _chat_body())[0] == 200
        conn.close()
    finally:
        server.stop()
    server.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = server.port
    with pytest.raises(OSError):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/v1/models")
        conn.getresponse()


def test_stop_closes_idle_keep_alive_connections() -> None:
    server = FakeLLMServer().start()
    conn = _conn(server, timeout=5)
    _post(conn, _chat_body())
    t0 = time.perf_counter()
    server.stop()
    assert time.perf_counter() - t0 < 2.0
    with pytest.raises((OSError, http.client.HTTPException)):
        _post(conn, _chat_body())
    conn.close()


def test_default_response_shape_and_model_echo(srv: FakeLLMServer) -> None:
    conn = _conn(srv)
    status, data, resp = _post(conn, _chat_body(model="openai/gpt-test"))
    assert status == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-")
    assert isinstance(data["created"], int)
    assert data["model"] == "openai/gpt-test"
    assert _content(data) == "{}"
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["choices"][0]["message"]["role"] == "assistant"
    assert data["choices"][0]["logprobs"] is None
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] == 1  # ceil(2 / 4)
    conn.close()


def test_usage_approximation(srv: FakeLLMServer) -> None:
    srv.add_response("x" * 9)
    body = {"model": "m", "messages": [{"role": "user", "content": "a" * 40}]}
    _, data, _ = _post(_conn(srv), body)
    assert data["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    srv.add_response(Reply("whatever", prompt_tokens=7, completion_tokens=2, finish_reason="length"))
    _, data, _ = _post(_conn(srv), body)
    assert data["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    assert data["choices"][0]["finish_reason"] == "length"


def test_paths_models_and_404(srv: FakeLLMServer) -> None:
    conn = _conn(srv)
    srv.add_response("no v1 prefix")
    status, data, _ = _post(conn, _chat_body(), path="/chat/completions")
    assert status == 200 and _content(data) == "no v1 prefix"

    conn.request("GET", "/v1/models")
    resp = conn.getresponse()
    models = json.loads(resp.read())
    assert resp.status == 200 and models["object"] == "list" and models["data"][0]["id"]

    status, data, _ = _post(conn, _chat_body(), path="/v1/embeddings")
    assert status == 404
    assert data["error"]["type"] == "not_found_error" and "/v1/embeddings" in data["error"]["message"]
    conn.request("GET", "/nope")
    resp = conn.getresponse()
    assert resp.status == 404 and "error" in json.loads(resp.read())
    # the keep-alive connection still works after errors
    status, _, _ = _post(conn, _chat_body())
    assert status == 200
    conn.close()


def test_invalid_json_is_400(srv: FakeLLMServer) -> None:
    status, data, _ = _post(_conn(srv), b"{not json")
    assert status == 400
    assert data["error"]["type"] == "invalid_request_error"
    assert srv.request_count == 1


def test_urllib_client_works(srv: FakeLLMServer) -> None:
    srv.add_response({"answer": 42})
    req = urllib.request.Request(
        srv.base_url + "/chat/completions",
        data=json.dumps(_chat_body()).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        data = json.loads(resp.read())
    assert json.loads(_content(data)) == {"answer": 42}


# --------------------------------------------------------------------------- scripting


def test_scripted_queue_is_fifo_with_times(srv: FakeLLMServer) -> None:
    srv.add_response("first")
    srv.add_response({"n": 2}, times=2)
    srv.add_response(["a", "b"])
    assert srv.pending_responses == 4
    conn = _conn(srv)
    contents = [_content(_post(conn, _chat_body())[1]) for _ in range(5)]
    assert contents == ["first", '{"n": 2}', '{"n": 2}', '["a", "b"]', "{}"]
    assert srv.pending_responses == 0
    with pytest.raises(ValueError):
        srv.add_response("x", times=0)


def test_queue_takes_precedence_over_responder(srv: FakeLLMServer) -> None:
    srv.set_responder(lambda body: "from responder")
    srv.add_response("queued")
    conn = _conn(srv)
    assert _content(_post(conn, _chat_body())[1]) == "queued"
    assert _content(_post(conn, _chat_body())[1]) == "from responder"
    srv.set_responder(None)
    assert _content(_post(conn, _chat_body())[1]) == "{}"


def test_responder_receives_body(srv: FakeLLMServer) -> None:
    seen: list[dict[str, Any]] = []

    def responder(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body)
        return {"echo": last_user_text(body).upper()}

    srv.set_responder(responder)
    _, data, _ = _post(_conn(srv), _chat_body("abc", temperature=0.3))
    assert json.loads(_content(data)) == {"echo": "ABC"}
    assert seen[0]["temperature"] == 0.3


def test_responder_can_return_reply_and_fault(srv: FakeLLMServer) -> None:
    srv.set_responder(
        lambda body: Reply("r", logprobs=[-1.0]) if "ok" in last_user_text(body) else Fault(503)
    )
    conn = _conn(srv)
    assert _content(_post(conn, _chat_body("ok", logprobs=True))[1]) == "r"
    status, data, _ = _post(conn, _chat_body("bad"))
    assert status == 503 and data["error"]["type"] == "server_error"


def test_responder_exception_becomes_500(srv: FakeLLMServer) -> None:
    def broken(body: dict[str, Any]) -> str:
        raise KeyError("boom")

    srv.set_responder(broken)
    conn = _conn(srv)
    status, data, _ = _post(conn, _chat_body())
    assert status == 500 and "KeyError" in data["error"]["message"]
    srv.set_responder(None)
    assert _post(conn, _chat_body())[0] == 200


def test_respond_by_substring_uses_last_user_message(srv: FakeLLMServer) -> None:
    srv.respond_by_substring({"apple": {"fruit": "apple"}, "carrot": "veg"}, default="unknown")
    conn = _conn(srv)
    # "carrot" appears only in the system message -> must not match
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "carrot"},
            {"role": "user", "content": "I like carrot"},
            {"role": "assistant", "content": "ok"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "an"}, {"type": "text", "text": "apple pie"}],
            },
        ],
    }
    assert json.loads(_content(_post(conn, body)[1])) == {"fruit": "apple"}
    assert _content(_post(conn, _chat_body("carrot cake"))[1]) == "veg"
    assert _content(_post(conn, _chat_body("bread"))[1]) == "unknown"
    only_system = {"model": "m", "messages": [{"role": "system", "content": "apple"}]}
    assert _content(_post(conn, only_system)[1]) == "unknown"


def test_respond_by_substring_first_key_wins(srv: FakeLLMServer) -> None:
    srv.respond_by_substring({"a": "A", "ab": "AB"})
    assert _content(_post(_conn(srv), _chat_body("ab"))[1]) == "A"


# --------------------------------------------------------------------------- faults


def test_fault_status_and_bodies(srv: FakeLLMServer) -> None:
    srv.add_response(Fault(status=429, headers={"Retry-After": "0"}))
    srv.add_response(Fault(status=400, body="bad schema"))
    srv.add_response(Fault(status=502, body={"custom": True}))
    srv.add_response("plain error text", status=401)
    srv.add_response("recovered")
    conn = _conn(srv)

    status, data, resp = _post(conn, _chat_body())
    assert status == 429 and data["error"]["type"] == "rate_limit_error"
    assert resp.headers["Retry-After"] == "0"
    status, data, _ = _post(conn, _chat_body())
    assert status == 400 and data["error"]["message"] == "bad schema"
    status, data, _ = _post(conn, _chat_body())
    assert status == 502 and data == {"custom": True}
    status, data, _ = _post(conn, _chat_body())
    assert status == 401 and data["error"] == {
        "message": "plain error text",
        "type": "authentication_error",
        "param": None,
        "code": "401",
    }
    status, data, _ = _post(conn, _chat_body())
    assert status == 200 and _content(data) == "recovered"


def test_drop_connection(srv: FakeLLMServer) -> None:
    srv.add_response(Fault(drop_connection=True))
    srv.add_response("after drop")
    conn = _conn(srv)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        _post(conn, _chat_body())
    conn.close()
    assert srv.request_count == 1
    status, data, _ = _post(_conn(srv), _chat_body())
    assert status == 200 and _content(data) == "after drop"


def test_http_error_via_urllib(srv: FakeLLMServer) -> None:
    srv.add_response(Fault(500))
    req = urllib.request.Request(srv.base_url + "/chat/completions", data=json.dumps(_chat_body()).encode())
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 500
    assert "error" in json.loads(info.value.read())
    info.value.close()


# --------------------------------------------------------------------------- latency


def test_latency_honoured_and_overridable() -> None:
    with FakeLLMServer(latency=0.2) as server:
        conn = _conn(server)
        t0 = time.perf_counter()
        _post(conn, _chat_body())
        assert time.perf_counter() - t0 >= 0.19

        server.add_response("fast", delay=0.0)
        t0 = time.perf_counter()
        _post(conn, _chat_body())
        assert time.perf_counter() - t0 < 0.15

        server.add_response(Fault(500, delay=0.3))
        t0 = time.perf_counter()
        assert _post(conn, _chat_body())[0] == 500
        assert time.perf_counter() - t0 >= 0.29

        server.add_response(Reply("slow reply", delay=0.25))
        t0 = time.perf_counter()
        _post(conn, _chat_body())
        assert time.perf_counter() - t0 >= 0.24

        server.latency = 0.0
        t0 = time.perf_counter()
        _post(conn, _chat_body())
        assert time.perf_counter() - t0 < 0.15
        conn.close()


def test_add_response_delay_fills_unset_fault_delay(srv: FakeLLMServer) -> None:
    srv.add_response(Fault(503), delay=0.2)
    t0 = time.perf_counter()
    assert _post(_conn(srv), _chat_body())[0] == 503
    assert time.perf_counter() - t0 >= 0.19


# --------------------------------------------------------------------------- logprobs & streaming


def test_logprobs_default_and_explicit(srv: FakeLLMServer) -> None:
    conn = _conn(srv)
    srv.add_response('{"a": 1, "b": 2}')
    _, data, _ = _post(conn, _chat_body(logprobs=True, top_logprobs=3))
    entries = data["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in entries] == ['{"a":', "1,", '"b":', "2}"]
    assert all(e["logprob"] == -0.05 and e["bytes"] is None and e["top_logprobs"] == [] for e in entries)

    srv.add_response(Reply("x y", logprobs=[-0.1, -2.5]))
    _, data, _ = _post(conn, _chat_body(logprobs=True))
    entries = data["choices"][0]["logprobs"]["content"]
    assert [(e["token"], e["logprob"]) for e in entries] == [("x", -0.1), ("y", -2.5)]

    srv.add_response(Reply("x y", logprobs=[-0.1, -2.5]))
    _, data, _ = _post(conn, _chat_body())  # not requested -> not sent
    assert data["choices"][0]["logprobs"] is None


def test_streaming_response(srv: FakeLLMServer) -> None:
    srv.add_response({"k": "v"})
    conn = _conn(srv)
    body = _chat_body(stream=True, stream_options={"include_usage": True})
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode())
    resp = conn.getresponse()
    assert resp.headers["Content-Type"] == "text/event-stream"
    lines = [ln for ln in resp.read().decode().split("\n") if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[len("data: ") :]) for ln in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert json.loads(text) == {"k": "v"}
    assert chunks[-1]["usage"]["total_tokens"] > 0
    assert any(c["choices"] and c["choices"][0]["finish_reason"] == "stop" for c in chunks)


# --------------------------------------------------------------------------- request log


def test_request_log_headers_and_reset(srv: FakeLLMServer) -> None:
    conn = _conn(srv)
    before = time.time()
    content_parts = [{"type": "text", "text": "part one"}, {"type": "image_url", "image_url": {"url": "x"}}]
    _post(conn, _chat_body(content_parts), headers={"Authorization": "Bearer sk-secret-123"})
    _post(conn, _chat_body("second"), path="/chat/completions")
    conn.request("GET", "/v1/models")
    conn.getresponse().read()

    reqs = srv.requests
    assert srv.request_count == 3
    assert [r.path for r in reqs] == ["/v1/chat/completions", "/chat/completions", "/v1/models"]
    assert len(srv.chat_requests) == 2
    first = reqs[0]
    assert isinstance(first, RecordedRequest)
    assert first.method == "POST" and reqs[2].method == "GET"
    assert first.body["model"] == "fake/model"
    assert first.last_user_text == "part one"
    assert reqs[1].last_user_text == "second"
    assert len(first.messages) == 2
    assert before <= first.received_at <= reqs[1].received_at <= time.time()
    # headers recorded, case-insensitively
    assert first.headers["Authorization"] == "Bearer sk-secret-123"
    assert first.headers.get("authorization") == "Bearer sk-secret-123"
    assert "AUTHORIZATION" in first.headers
    assert "authorization" not in reqs[1].headers
    # ...but never shown in repr
    assert "sk-secret-123" not in repr(first)
    assert "sk-secret-123" not in repr(first.headers)
    # requests is a snapshot
    reqs.clear()
    assert srv.request_count == 3

    srv.add_response("left over")
    srv.reset()
    assert srv.request_count == 0 and srv.requests == [] and srv.pending_responses == 0
    assert srv.max_in_flight == 0
    conn.close()


def test_authorization_never_echoed(srv: FakeLLMServer) -> None:
    conn = _conn(srv)
    for path in ("/v1/chat/completions", "/v1/unknown"):
        conn.request(
            "POST", path, body=json.dumps(_chat_body()).encode(), headers={"Authorization": "Bearer sk-zzz"}
        )
        resp = conn.getresponse()
        raw = resp.read()
        assert b"sk-zzz" not in raw
        assert "sk-zzz" not in str(resp.headers)
    conn.close()


# --------------------------------------------------------------------------- concurrency


def test_concurrency_32_threads_with_latency() -> None:
    n, latency = 32, 0.1
    with FakeLLMServer(latency=latency) as server:
        server.respond_by_substring({f"item-{i}:": f"answer-{i}" for i in range(n)})
        barrier = threading.Barrier(n)
        results: dict[int, str] = {}
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                conn = _conn(server)
                conn.connect()
                barrier.wait()
                _, data, _ = _post(conn, _chat_body(f"item-{i}: text"))
                results[i] = _content(data)
                conn.close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        assert not errors
        assert results == {i: f"answer-{i}" for i in range(n)}
        assert elapsed < n * latency / 2, elapsed  # serial would take 3.2 s
        assert server.max_in_flight >= 16
        assert server.request_count == n
        assert server.in_flight == 0


def test_64_concurrent_keep_alive_connections() -> None:
    n_conn, per_conn = 64, 5
    with FakeLLMServer(latency=0.02) as server:
        server.set_responder(lambda body: last_user_text(body))
        conns = [_conn(server) for _ in range(n_conn)]
        for c in conns:
            c.connect()
        errors: list[BaseException] = []
        barrier = threading.Barrier(n_conn)

        def worker(i: int) -> None:
            try:
                barrier.wait()
                for j in range(per_conn):
                    _, data, resp = _post(conns[i], _chat_body(f"{i}-{j}"))
                    assert _content(data) == f"{i}-{j}"
                    assert resp.headers["Connection"] == "keep-alive"
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_conn)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in conns:
            c.close()
        assert not errors, errors[:3]
        assert server.request_count == n_conn * per_conn
        assert server.max_in_flight >= 32


def test_connection_close_header_respected(srv: FakeLLMServer) -> None:
    conn = _conn(srv)
    _, _, resp = _post(conn, _chat_body(), headers={"Connection": "close"})
    assert resp.headers["Connection"] == "close"
    conn.close()


def test_keep_alive_has_no_nagle_stall(srv: FakeLLMServer) -> None:
    """Per-request overhead on one keep-alive connection at latency 0, loosely bounded (the numbers themselves
    are a benchmark's: bench/bench_runtime.py)."""
    conn = _conn(srv)
    conn.connect()
    body = json.dumps(_chat_body("measure me")).encode()
    headers = {"Content-Type": "application/json"}
    for _ in range(20):  # warm-up
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
        conn.getresponse().read()
    n = 500
    t0 = time.perf_counter()
    for _ in range(n):
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
        conn.getresponse().read()
    elapsed = time.perf_counter() - t0
    conn.close()
    # A Nagle/delayed-ACK stall would cap this at ~25 req/s; keep the bound loose for busy CI machines.
    assert n / elapsed > 100


def test_a_client_that_resets_its_connection_prints_nothing(
    srv: FakeLLMServer, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A client going away mid-request is routine in fault tests: no traceback on stderr (socketserver's
    default), and the server keeps serving. Any other handler error goes to the log instead."""
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # with SO_LINGER 0: a reset, while the handler waits for the request line
    deadline = time.monotonic() + 10
    while srv._connections and time.monotonic() < deadline:  # the handler thread has finished with it
        time.sleep(0.01)
    assert not srv._connections
    srv.add_response("still here")
    status, data, _ = _post(_conn(srv), _chat_body())
    assert status == 200 and _content(data) == "still here"
    httpd = srv._httpd
    assert httpd is not None
    try:
        raise ValueError("a handler bug")
    except ValueError:
        httpd.handle_error(None, ("127.0.0.1", 1))
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err
    assert [r.getMessage() for r in caplog.records if r.name == "dspydantic.testing"] == [
        "FakeLLMServer: error handling a request from ('127.0.0.1', 1)"
    ]
