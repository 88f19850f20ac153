"""Secrets on error paths: no API key, ``Authorization`` value or URL password in any error message, repr or
log record, whatever the server sends back (non-UTF-8 bytes, a key cut at any offset, 5 MB bodies), and error
messages stay small. A leak is any 8 characters of the key's random part, so a cut prefix counts too."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator

import pytest

from dspydantic import ExtractionError, LMError, Prompter

from ._faultserver import Answer, Error, FaultServer, closed_port
from ._verbs import KEY, SECRET, SINGLE, Bill, describe, make, timed

PASSWORD = "PW-" + SECRET[:12] + "-pass"
CAP = 4000  # the spec says e.g. 2,000 characters; allow room for the message's own words


def leaks(text: str, secret: str = SECRET) -> list[str]:
    """Every 8-character piece of ``secret`` found in ``text``."""
    return sorted({secret[i : i + 8] for i in range(len(secret) - 7) if secret[i : i + 8] in text})


def shown(err: BaseException) -> str:
    """Everything an error shows: its printed traceback (message and every chained exception), its repr and
    args, and the response headers it carries."""
    parts = ["".join(traceback.format_exception(err)), repr(err), *map(repr, err.args)]
    headers = getattr(err, "headers", None)
    if headers:
        parts.append(repr(headers))
    return "\n".join(parts)


@pytest.fixture()
def fs() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


@pytest.fixture()
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record of every logger at DEBUG; checked for the key and the password after the test."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    text = "\n".join(
        [caplog.text, *(r.getMessage() for r in caplog.records), *(repr(r.args) for r in caplog.records)]
    )
    assert not leaks(text), f"the key reached a log record: {leaks(text)}"
    assert PASSWORD not in text, "the URL password reached a log record"


def lm_error(out: object) -> LMError:
    assert isinstance(out, LMError), f"expected LMError, got {describe(out)}"
    return out


BODIES = {
    "raw-bytes": b"\xff\xfe\x00bad request \xc3\x28 you sent Authorization: Bearer " + KEY.encode() + b"\xff\r\n",
    "json-with-a-bad-byte": b'{"error": {"message": "Incorrect API key provided: \xff' + KEY.encode() + b'"}}',
    "latin-1": f"Cl\xe9 refus\xe9e: Authorization: Bearer {KEY} \xa7".encode("latin-1"),
    "utf-16": f"Authorization: Bearer {KEY}".encode("utf-16"),
}


@pytest.mark.parametrize("verb", SINGLE)
@pytest.mark.parametrize("status", [200, 401])
@pytest.mark.parametrize("body", list(BODIES), ids=list(BODIES))
def test_non_utf8_body_echoing_the_key(
    fs: FaultServer, logs: pytest.LogCaptureFixture, verb: str, status: int, body: str
) -> None:
    """A 200 whose body is not UTF-8 is a malformed completion; an error status quotes its body: neither
    may show the key (NUL characters removed before looking, as a terminal would hide them)."""
    fs.respond(Error(status, BODIES[body], {"Content-Type": "text/plain; charset=utf-8"}))
    out, _ = timed(make(fs.base_url, lm_retries=0), verb)
    err = lm_error(out)
    assert err.status in (status, None) and fs.request_count == 1
    text = shown(err).replace("\x00", "").replace("\\x00", "")
    assert not leaks(text), f"key in the error: {leaks(text)}"
    assert len(str(err)) <= CAP


@pytest.mark.parametrize("verb", SINGLE)
def test_key_cut_at_any_offset_is_never_shown(fs: FaultServer, logs: pytest.LogCaptureFixture, verb: str) -> None:
    """The key repeated at every offset of the first few KB: wherever a cut falls, no piece may show."""
    body = b"".join(b"." * k + b" Bearer " + KEY.encode() for k in range(1, 80))
    fs.respond(Error(400, body))
    out, _ = timed(make(fs.base_url), verb)
    err = lm_error(out)
    assert not leaks(shown(err)), f"key pieces in the error: {leaks(shown(err))}"
    assert len(str(err)) <= CAP


@pytest.mark.parametrize("verb", SINGLE)
@pytest.mark.parametrize("status", [200, 500])
@pytest.mark.parametrize("filler", [b"E", b"\xff"], ids=["ascii", "non-utf8"])
def test_five_megabyte_body_gives_a_small_message(
    fs: FaultServer, logs: pytest.LogCaptureFixture, verb: str, status: int, filler: bytes
) -> None:
    fs.respond(Error(status, filler * 5_000_000 + KEY.encode()))
    out, elapsed = timed(make(fs.base_url, lm_retries=0), verb)
    err = lm_error(out)
    assert len(str(err)) <= CAP and len(repr(err)) <= CAP + 200, len(str(err))
    assert not leaks(shown(err))
    assert len(logs.text) < 100_000, "a log record carried the whole body"
    assert elapsed < 5, elapsed


@pytest.mark.parametrize("verb", SINGLE)
def test_huge_json_error_message_is_capped(fs: FaultServer, verb: str) -> None:
    fs.respond(Error(400, {"error": {"message": "x" * 1_000_000, "type": "invalid_request_error"}}))
    out, _ = timed(make(fs.base_url), verb)
    err = lm_error(out)
    assert err.status == 400 and len(str(err)) <= CAP


@pytest.mark.parametrize("verb", SINGLE)
def test_url_credentials_are_never_shown(fs: FaultServer, logs: pytest.LogCaptureFixture, verb: str) -> None:
    p = make(f"http://user:{PASSWORD}@127.0.0.1:{fs.port}/v1")
    assert PASSWORD not in repr(p) and PASSWORD not in repr(p.backend)
    out, _ = timed(p, verb)
    assert isinstance(out, Bill), describe(out)
    assert fs.request_count == 1
    fs.respond(Error(503, f"upstream failed for user:{PASSWORD}"))
    err = lm_error(timed(p, verb)[0])
    assert PASSWORD not in shown(err)
    dead = make(f"http://user:{PASSWORD}@127.0.0.1:{closed_port()}/v1", lm_retries=0)
    err = lm_error(timed(dead, verb)[0])
    assert PASSWORD not in shown(err)


@pytest.mark.parametrize("verb", SINGLE)
def test_key_echoed_in_a_500_that_is_retried(fs: FaultServer, logs: pytest.LogCaptureFixture, verb: str) -> None:
    """Retries log what went wrong; neither those records nor the final error show the key."""
    fs.respond(Error(500, {"error": {"message": f"upstream saw Authorization: Bearer {KEY}"}}))
    out, _ = timed(make(fs.base_url), verb)
    err = lm_error(out)
    assert err.retryable and fs.request_count == 3
    assert not leaks(shown(err))


@pytest.mark.parametrize("verb", SINGLE)
def test_extraction_error_message_is_redacted(fs: FaultServer, logs: pytest.LogCaptureFixture, verb: str) -> None:
    """An answer that fails validation is quoted in the ExtractionError's message: redacted there too."""
    fs.respond(Answer({"vendor": KEY}))  # no total: does not validate, and the input value holds the key
    out, _ = timed(make(fs.base_url, max_retries=0), verb)
    assert isinstance(out, ExtractionError), describe(out)
    assert not leaks(str(out)) and not leaks(repr(out))


@pytest.mark.parametrize("verb", SINGLE)
def test_dspy_lm_errors_are_typed_and_redacted(fs: FaultServer, logs: pytest.LogCaptureFixture, verb: str) -> None:
    dspy = pytest.importorskip("dspy")
    message = f"Incorrect API key provided: {KEY}"
    fs.respond(Error(401, {"error": {"message": message, "type": "invalid_request_error"}}))
    lm = dspy.LM("openai/fake-model", api_base=fs.base_url, api_key=KEY, cache=False, num_retries=0)
    out, _ = timed(Prompter(Bill, lm=lm, lm_retries=0), verb)
    err = lm_error(out)
    assert not leaks(shown(err)), f"key pieces in the error: {leaks(shown(err))}"
    dead = dspy.LM("openai/fake-model", api_base=f"http://127.0.0.1:{closed_port()}/v1", api_key=KEY,
                   cache=False, num_retries=0)
    err = lm_error(timed(Prompter(Bill, lm=dead, lm_retries=0), verb)[0])
    assert not leaks(shown(err))
