"""``Transport.request`` / ``arequest``: the calls besides the chat POST (a GET, a multipart form), against the
raw-socket fault server: what goes on the wire, the redirect rules, typed and redacted errors."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
from collections.abc import Iterator

import pytest

from dspydantic import LMError
from dspydantic.lm.transport import FormField, Transport

from ._faultserver import Error, FaultServer, Redirect

KEY = "sk-request-SECRET-9876543210"


@pytest.fixture()
def fs() -> Iterator[FaultServer]:
    with FaultServer() as server:
        server.respond(Error(200, {"ok": True}))
        yield server


def transport(base_url: str) -> Transport:
    return Transport(base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=5, secrets=(KEY,))


def form_fields(content_type: str, body: bytes) -> dict[str, tuple[str | None, str | None, bytes]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    assert message.is_multipart()
    out: dict[str, tuple[str | None, str | None, bytes]] = {}
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        out[str(part.get_param("name", header="content-disposition"))] = (
            part.get_filename(), part.get_content_type(), payload
        )
    return out


def test_a_get_carries_the_key_no_body_and_no_json_content_type(fs: FaultServer) -> None:
    t = transport(fs.base_url)
    try:
        reply = t.request("GET", "/batches/b1", headers={"Accept": "application/binary"})
    finally:
        t.close()
    assert (reply.status, reply.body) == (200, b'{"ok": true}')
    (req,) = fs.requests
    assert (req.method, req.path, req.body) == ("GET", "/v1/batches/b1", b"")
    assert req.headers["authorization"] == f"Bearer {KEY}" and req.headers["accept"] == "application/binary"
    assert "content-type" not in req.headers


def test_a_form_is_multipart_and_is_sent_again_whole_after_a_same_origin_307(fs: FaultServer) -> None:
    fs.add(Redirect(307, "/v2/files"))
    data = b'{"custom_id": "a"}\n' * 1000
    form = (
        FormField("purpose", "batch"),
        FormField("file", data, filename="in.jsonl", content_type="application/jsonl"),
    )
    t = transport(fs.base_url)
    try:
        reply = asyncio.run(t.arequest("POST", "/files", form=form))
    finally:
        t.close()
    assert reply.status == 200
    first, second = fs.requests
    assert (first.path, second.path) == ("/v1/files", "/v2/files")
    for req in (first, second):
        assert req.headers["content-type"].startswith("multipart/form-data; boundary=")
        assert int(req.headers["content-length"]) == len(req.body)  # a sized body, not chunked
        fields = form_fields(req.headers["content-type"], req.body)
        assert fields == {"purpose": (None, "text/plain", b"batch"), "file": ("in.jsonl", "application/jsonl", data)}
        assert req.headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("status", [301, 302, 303])
def test_a_get_follows_a_same_origin_redirect_but_a_post_does_not(fs: FaultServer, status: int) -> None:
    fs.add(Redirect(status, "/v1/elsewhere"), Error(200, {"ok": True}), Redirect(status, "/v1/elsewhere"))
    t = transport(fs.base_url)
    try:
        assert t.request("GET", "/files/f1/content").status == 200
        with pytest.raises(LMError, match="redirect") as info:
            t.request("POST", "/batches", b"{}")
    finally:
        t.close()
    assert not info.value.retryable
    assert [(r.method, r.path) for r in fs.requests] == [
        ("GET", "/v1/files/f1/content"), ("GET", "/v1/elsewhere"), ("POST", "/v1/batches")
    ]


def test_a_get_never_follows_a_redirect_to_another_origin(fs: FaultServer) -> None:
    with FaultServer() as other:
        fs.respond(Redirect(302, other.base_url + "/files/f1/content"))
        t = transport(fs.base_url)
        try:
            with pytest.raises(LMError, match="another origin"):
                t.request("GET", "/files/f1/content")
        finally:
            t.close()
        assert other.request_count == 0 and other.accepted == 0


def test_errors_and_redact_never_show_the_key(fs: FaultServer) -> None:
    t = transport(fs.base_url)
    try:
        assert KEY not in t.redact(f"the server echoed {KEY} back")
        err = t.error(f"echo: Bearer {KEY}", status=500, retryable=True, headers={"x-request-id": "req_1"})
    finally:
        t.close()
    assert KEY not in str(err) and err.status == 500 and err.retryable and err.request_id == "req_1"
