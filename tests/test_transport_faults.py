"""Transport faults against a raw-socket server on 127.0.0.1 (tests/_faultserver.py), through every verb.

Each case asserts the outcome (a result, or a typed ``LMError``/``ExtractionError`` with its attributes), the
number of requests the server received (so silent re-sends and missing retries both show), and a wall-time
bound: loose enough for a loaded 2-core machine, tight enough that a hang or a per-read timeout fails.
With ``lm_retries=2`` a retryable fault is tried 3 times; ``retry_backoff=0.01`` keeps the sleeps short.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest

from dspydantic import ExtractionError, LMError

from ._faultserver import (
    Answer,
    BadJSON,
    Blackhole,
    Close,
    Drip,
    Error,
    FaultServer,
    Hang,
    Raw,
    Redirect,
    Reset,
    Truncate,
    closed_port,
)
from ._verbs import SINGLE, VERBS, Bill, call, describe, make, timed

RETRIES = 2


@pytest.fixture()
def fs() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


def lm_error(out: object) -> LMError:
    assert isinstance(out, LMError), f"expected LMError, got {describe(out)}"
    return out


def ok(out: object) -> Bill:
    assert isinstance(out, Bill), f"expected a Bill, got {describe(out)}"
    return out


def attempts(err: LMError) -> int:
    """Requests the retry policy makes for this error with ``lm_retries=RETRIES``."""
    return RETRIES + 1 if err.retryable else 1


# -- connecting ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", VERBS)
def test_connection_refused(verb: str) -> None:
    p = make(f"http://127.0.0.1:{closed_port()}/v1")
    out, elapsed = timed(p, verb)
    err = lm_error(out)
    assert err.status is None
    assert elapsed < 3, elapsed


@pytest.mark.parametrize("verb", SINGLE)
def test_dns_failure(verb: str) -> None:
    p = make("http://dspydantic-fault-suite.invalid/v1")
    out, elapsed = timed(p, verb)
    err = lm_error(out)
    assert err.status is None
    assert elapsed < 5, elapsed


@pytest.mark.parametrize("verb", SINGLE)
@pytest.mark.parametrize(("timeout", "connect_timeout", "bound"), [(2.0, None, 4.5), (30.0, 1.0, 3.0)])
def test_connect_that_never_completes_is_bounded(
    verb: str, timeout: float, connect_timeout: float | None, bound: float
) -> None:
    """A full accept queue: no SYN-ACK ever comes. ``timeout`` (or ``connect_timeout``) bounds it."""
    with Blackhole() as hole:
        kw = {} if connect_timeout is None else {"connect_timeout": connect_timeout}
        p = make(hole.base_url, timeout=timeout, lm_retries=0, **kw)
        out, elapsed = timed(p, verb, cap=15)
    lm_error(out)
    assert elapsed < bound, elapsed


# -- the answer goes wrong -------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", VERBS)
def test_reset_mid_response_is_retried_then_reported(fs: FaultServer, verb: str) -> None:
    fs.respond(Reset())
    out, elapsed = timed(make(fs.base_url), verb)
    err = lm_error(out)
    assert err.retryable and err.status is None
    assert fs.request_count == RETRIES + 1
    assert elapsed < 3, elapsed


@pytest.mark.parametrize("verb", VERBS)
def test_reset_once_then_success(fs: FaultServer, verb: str) -> None:
    fs.add(Reset())
    out, elapsed = timed(make(fs.base_url), verb)
    assert ok(out).vendor == "Acme"
    assert fs.request_count == 2
    assert elapsed < 3, elapsed


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("lm_retries", [0, 2])
def test_close_without_answer_is_resent_only_by_the_retry_policy(fs: FaultServer, verb: str, lm_retries: int) -> None:
    """A request already written is re-sent only through ``lm_retries``: with 0 the server sees it once."""
    fs.respond(Close())
    out, elapsed = timed(make(fs.base_url, lm_retries=lm_retries), verb)
    err = lm_error(out)
    assert err.retryable
    assert fs.request_count == lm_retries + 1
    assert elapsed < 3, elapsed


@pytest.mark.parametrize("verb", VERBS)
def test_garbage_status_line(fs: FaultServer, verb: str) -> None:
    fs.respond(Raw(b"HTTZ/9.9 banana split\r\nwhat: ever\r\n\r\n"))
    out, elapsed = timed(make(fs.base_url), verb)
    err = lm_error(out)
    assert fs.request_count == attempts(err)
    assert elapsed < 3, elapsed


@pytest.mark.parametrize("verb", SINGLE)
@pytest.mark.parametrize("skip_head", [False, True], ids=["drip-headers", "drip-body"])
def test_timeout_is_a_total_deadline_against_a_dripping_server(fs: FaultServer, verb: str, skip_head: bool) -> None:
    """A byte every 0.5 s never trips a per-read timeout; ``timeout=2`` must still end the call near 2 s."""
    fs.respond(Drip(interval=0.5, skip_head=skip_head))
    out, elapsed = timed(make(fs.base_url, timeout=2, lm_retries=0), verb, cap=25)
    lm_error(out)
    assert fs.request_count == 1
    assert 1.5 <= elapsed < 4.5, elapsed


@pytest.mark.parametrize("verb", SINGLE)
def test_server_that_never_answers_is_bounded_by_timeout(fs: FaultServer, verb: str) -> None:
    fs.respond(Hang())
    out, elapsed = timed(make(fs.base_url, timeout=2, lm_retries=0), verb, cap=25)
    err = lm_error(out)
    assert err.status is None
    assert fs.request_count == 1
    assert 1.5 <= elapsed < 4.5, elapsed


@pytest.mark.parametrize("verb", SINGLE)
def test_timeout_on_a_reused_connection_is_not_silently_resent(fs: FaultServer, verb: str) -> None:
    """The second call goes out on the pooled connection of the first and times out: sent exactly once."""
    fs.add(Answer({"vendor": "First", "total": 1.0}))
    fs.respond(Hang())
    p = make(fs.base_url, timeout=1.5, lm_retries=0)

    async def both() -> tuple[object, object]:
        first = await p.apredict("one")
        try:
            second: object = await p.apredict("two")
        except Exception as exc:
            second = exc
        return first, second

    start = time.monotonic()
    if verb == "run":
        first: object = call(p, "run", "one")
        second = call(p, "run", "two")
    else:
        first, second = asyncio.run(both())
    elapsed = time.monotonic() - start
    assert ok(first).vendor == "First"
    lm_error(second)
    assert fs.request_count == 2, "the timed-out request was sent again"
    assert fs.accepted == 1, "the scenario needs the second call on the first call's keep-alive connection"
    assert elapsed < 4.5, elapsed


# -- redirects -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize(("status", "absolute"), [(307, True), (308, False)])
def test_same_origin_307_308_is_followed_with_method_body_and_key(
    fs: FaultServer, verb: str, status: int, absolute: bool
) -> None:
    target = (fs.origin if absolute else "") + "/v2/chat/completions"
    fs.add(Redirect(status, target))
    out, elapsed = timed(make(fs.base_url), verb)
    assert ok(out).vendor == "Acme"
    first, second = fs.requests
    assert (first.path, second.path) == ("/v1/chat/completions", "/v2/chat/completions")
    assert second.method == "POST" and second.body == first.body
    assert second.headers.get("authorization") == first.headers.get("authorization")
    assert elapsed < 3, elapsed


@pytest.mark.parametrize("verb", VERBS)
def test_cross_origin_redirect_is_refused_and_the_key_stays_home(fs: FaultServer, verb: str) -> None:
    with FaultServer() as other:
        fs.respond(Redirect(307, other.base_url + "/chat/completions"))
        out, elapsed = timed(make(fs.base_url), verb)
        err = lm_error(out)
        assert "redirect" in str(err).lower()
        assert not err.retryable
        assert other.request_count == 0 and other.accepted == 0
    assert fs.request_count == 1
    assert elapsed < 3, elapsed


@pytest.mark.parametrize("verb", SINGLE)
@pytest.mark.parametrize("status", [301, 302, 303])
def test_redirect_that_would_turn_a_post_into_a_get_is_refused(fs: FaultServer, verb: str, status: int) -> None:
    fs.respond(Redirect(status, "/v2/chat/completions"))
    out, elapsed = timed(make(fs.base_url), verb)
    err = lm_error(out)
    assert "redirect" in str(err).lower()
    assert not err.retryable
    assert [(r.method, r.path) for r in fs.requests] == [("POST", "/v1/chat/completions")]
    assert elapsed < 3, elapsed


# -- framing and encoding --------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", VERBS)
def test_gzip_body_is_decoded(fs: FaultServer, verb: str) -> None:
    fs.respond(Answer({"vendor": "Zipped", "total": 2.0}, encoding="gzip"))
    out, _ = timed(make(fs.base_url), verb)
    assert ok(out).vendor == "Zipped"
    assert fs.request_count == 1


@pytest.mark.parametrize("verb", SINGLE)
def test_deflate_body_is_decoded(fs: FaultServer, verb: str) -> None:
    fs.respond(Answer({"vendor": "Deflated", "total": 2.0}, encoding="deflate"))
    out, _ = timed(make(fs.base_url), verb)
    assert ok(out).vendor == "Deflated"
    assert fs.request_count == 1


@pytest.mark.parametrize("verb", VERBS)
def test_100_continue_before_the_real_response(fs: FaultServer, verb: str) -> None:
    fs.respond(Answer({"vendor": "Continued", "total": 3.0}, continue_first=True))
    out, elapsed = timed(make(fs.base_url), verb)
    assert ok(out).vendor == "Continued"
    assert fs.request_count == 1
    assert elapsed < 3, elapsed


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("always", [True, False], ids=["always", "once"])
def test_body_cut_short_of_its_content_length(fs: FaultServer, verb: str, always: bool) -> None:
    """The connection closes half way through the body Content-Length promised: retryable."""
    if always:
        fs.respond(Truncate())
    else:
        fs.add(Truncate())
    out, elapsed = timed(make(fs.base_url), verb)
    if always:
        assert lm_error(out).retryable
        assert fs.request_count == RETRIES + 1
    else:
        assert ok(out).vendor == "Acme"
        assert fs.request_count == 2
    assert elapsed < 3, elapsed


@pytest.mark.parametrize("verb", SINGLE)
def test_complete_body_with_truncated_json(fs: FaultServer, verb: str) -> None:
    fs.respond(BadJSON())
    out, elapsed = timed(make(fs.base_url), verb)
    err = lm_error(out)
    assert fs.request_count == attempts(err)
    assert elapsed < 3, elapsed


# -- statuses, Retry-After and the retry policy -----------------------------------------------------------
@pytest.mark.parametrize("verb", VERBS)
def test_503_then_200(fs: FaultServer, verb: str) -> None:
    fs.add(Error(503))
    out, elapsed = timed(make(fs.base_url), verb)
    assert ok(out).vendor == "Acme"
    assert fs.request_count == 2
    assert elapsed < 2, elapsed


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503, 504])
def test_retryable_statuses(fs: FaultServer, status: int) -> None:
    fs.respond(Error(status))
    out, elapsed = timed(make(fs.base_url), "run")
    err = lm_error(out)
    assert err.status == status and err.retryable
    assert fs.request_count == RETRIES + 1
    assert elapsed < 3, elapsed


@pytest.mark.parametrize("verb", SINGLE)
@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_fail_at_once(fs: FaultServer, verb: str, status: int) -> None:
    fs.respond(Error(status))
    out, elapsed = timed(make(fs.base_url), verb)
    err = lm_error(out)
    assert err.status == status and not err.retryable
    assert fs.request_count == 1
    assert elapsed < 2, elapsed


@pytest.mark.parametrize("verb", SINGLE)
def test_429_retry_after_is_honoured(fs: FaultServer, verb: str) -> None:
    fs.add(Error(429, headers={"Retry-After": "1"}))
    out, elapsed = timed(make(fs.base_url, retry_backoff=0.01), verb)
    assert ok(out).vendor == "Acme"
    assert fs.request_count == 2
    gap = fs.requests[1].received_at - fs.requests[0].received_at
    assert gap >= 0.9, f"retried after {gap:.2f} s despite Retry-After: 1"
    assert elapsed < 4, elapsed


def _http_date(seconds_ahead: float) -> str:
    return formatdate(time.time() + seconds_ahead, usegmt=True)


@pytest.mark.parametrize("verb", SINGLE)
@pytest.mark.parametrize(
    ("header", "value", "expected", "tolerance"),
    [
        ("Retry-After", "7", 7.0, 0.01),
        ("retry-after-ms", "1500", 1.5, 0.01),
        ("Retry-After", "DATE+30", 30.0, 3.0),
    ],
    ids=["seconds", "ms", "http-date"],
)
def test_lm_error_carries_status_headers_request_id_and_retry_after(
    fs: FaultServer, verb: str, header: str, value: str, expected: float, tolerance: float
) -> None:
    value = _http_date(30) if value == "DATE+30" else value
    fs.respond(Error(429, headers={header: value, "x-request-id": "req-fault-42", "X-RateLimit-Remaining": "0"}))
    out, elapsed = timed(make(fs.base_url, lm_retries=0), verb)
    err = lm_error(out)
    assert err.status == 429 and err.retryable
    assert err.request_id == "req-fault-42"
    assert err.retry_after == pytest.approx(expected, abs=tolerance)
    headers = {k.lower(): v for k, v in err.headers.items()}
    assert headers.get("x-ratelimit-remaining") == "0" and headers.get(header.lower()) == value
    assert "authorization" not in headers, "LMError.headers are response headers, never the request's"
    assert fs.request_count == 1
    assert elapsed < 2, elapsed


@pytest.mark.parametrize("verb", SINGLE)
def test_retry_after_longer_than_retry_max_time_does_not_block(fs: FaultServer, verb: str) -> None:
    fs.respond(Error(429, headers={"Retry-After": "30"}))
    out, elapsed = timed(make(fs.base_url, retry_max_time=1.0), verb)
    err = lm_error(out)
    assert err.status == 429
    assert 1 <= fs.request_count <= RETRIES + 1
    assert elapsed < 4, elapsed


def test_backoff_has_jitter(fs: FaultServer) -> None:
    """Full jitter: the gaps before the retries of identical calls are not all the same."""
    fs.respond(Error(503))
    p = make(fs.base_url, lm_retries=1, retry_backoff=0.2)
    gaps = []
    for _ in range(6):
        fs_before = fs.request_count
        out, _ = timed(p, "run")
        lm_error(out)
        first, second = fs.requests[fs_before : fs_before + 2]
        gaps.append(second.received_at - first.received_at)
    assert all(g <= 0.2 + 0.5 for g in gaps), gaps  # never more than retry_backoff * 2**0 (+ slack for a busy machine)
    assert max(gaps) - min(gaps) > 0.03, f"identical backoffs {gaps}: no jitter"


# -- output cut by the token limit -----------------------------------------------------------------------
CUT = '{"vendor": "Ac'


@pytest.mark.parametrize("verb", VERBS)
def test_finish_reason_length_retries_once_with_more_tokens_then_says_truncated(fs: FaultServer, verb: str) -> None:
    fs.respond(Answer(CUT, finish_reason="length"))
    out, elapsed = timed(make(fs.base_url, max_tokens=100, max_retries=2), verb)
    assert isinstance(out, ExtractionError), describe(out)
    assert out.truncated is True
    assert any(w in str(out).lower() for w in ("token limit", "max_tokens", "truncat")), str(out)
    assert out.raw_output == CUT
    assert out.usage is not None and out.usage.calls == 2
    assert [r.json["max_tokens"] for r in fs.requests] == [100, 200]
    assert elapsed < 3, elapsed


@pytest.mark.parametrize("verb", SINGLE)
def test_finish_reason_length_then_the_larger_limit_fits(fs: FaultServer, verb: str) -> None:
    fs.add(Answer(CUT, finish_reason="length"))
    fs.respond(Answer({"vendor": "Acme", "total": 5.0}))
    out, _ = timed(make(fs.base_url, max_tokens=64), verb)
    assert ok(out).total == 5.0
    assert [r.json["max_tokens"] for r in fs.requests] == [64, 128]


@pytest.mark.parametrize("verb", SINGLE)
def test_finish_reason_length_without_a_known_limit_is_reported_truncated(fs: FaultServer, verb: str) -> None:
    """No max_tokens and no context window: nothing to enlarge for sure; still reported as truncated."""
    fs.respond(Answer(CUT, finish_reason="length"))
    out, _ = timed(make(fs.base_url), verb)
    assert isinstance(out, ExtractionError), describe(out)
    assert out.truncated is True
    assert fs.request_count in (1, 2)


@pytest.mark.parametrize("verb", SINGLE)
def test_invalid_answer_is_not_reported_as_truncated(fs: FaultServer, verb: str) -> None:
    fs.respond(Answer("no JSON here"))
    out, _ = timed(make(fs.base_url, max_retries=1), verb)
    assert isinstance(out, ExtractionError), describe(out)
    assert out.truncated is False
    assert out.raw_output == "no JSON here" and out.usage.calls == 2
    assert fs.request_count == 2


def test_fault_server_counts_what_it_parsed(fs: FaultServer) -> None:
    """The fault server itself: a request it answers with Close() is counted, once, on one connection."""
    fs.respond(Close())
    with socket.create_connection(("127.0.0.1", fs.port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        assert s.recv(10) == b""
    assert fs.request_count == 1 and fs.accepted == 1
    assert fs.requests[0].body == b"{}" and fs.requests[0].path == "/v1/chat/completions"
