"""Proxies: ``HTTP(S)_PROXY``/``NO_PROXY`` from the environment (as the openai SDK honours them) and the
explicit ``proxy=`` option, checked by a forward/CONNECT proxy on 127.0.0.1 that records what it saw."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from dspydantic import LMError

from ._faultserver import FaultServer, closed_port
from ._proxy import ForwardProxy
from ._verbs import SINGLE, VERBS, Bill, describe, make, timed

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture()
def fs() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


@pytest.fixture()
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as p:
        yield p


def chat_url(server: FaultServer) -> str:
    return server.base_url + "/chat/completions"


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("var", ["HTTP_PROXY", "http_proxy"])
def test_http_proxy_from_the_environment(
    fs: FaultServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch, verb: str, var: str
) -> None:
    monkeypatch.setenv(var, proxy.url())
    out, _ = timed(make(fs.base_url), verb)
    assert isinstance(out, Bill), describe(out)
    assert [(s.method, s.target) for s in proxy.seen] == [("POST", chat_url(fs))]
    assert fs.request_count == 1


@pytest.mark.parametrize("verb", SINGLE)
def test_no_proxy_is_respected(
    fs: FaultServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch, verb: str
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url())
    monkeypatch.setenv("NO_PROXY", "example.com,127.0.0.1")
    out, _ = timed(make(fs.base_url), verb)
    assert isinstance(out, Bill), describe(out)
    assert proxy.seen == []
    assert fs.request_count == 1


@pytest.mark.parametrize("verb", VERBS)
def test_explicit_proxy_option(fs: FaultServer, proxy: ForwardProxy, verb: str) -> None:
    out, _ = timed(make(fs.base_url, proxy=proxy.url()), verb)
    assert isinstance(out, Bill), describe(out)
    assert [(s.method, s.target) for s in proxy.seen] == [("POST", chat_url(fs))]
    assert fs.request_count == 1


@pytest.mark.parametrize("verb", SINGLE)
def test_explicit_proxy_wins_over_the_environment(
    fs: FaultServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch, verb: str
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    out, _ = timed(make(fs.base_url, proxy=proxy.url()), verb)
    assert isinstance(out, Bill), describe(out)
    assert len(proxy.seen) == 1 and fs.request_count == 1


@pytest.mark.parametrize("verb", SINGLE)
def test_proxy_credentials_are_sent_to_the_proxy_and_never_shown(
    fs: FaultServer, proxy: ForwardProxy, verb: str
) -> None:
    out, _ = timed(make(fs.base_url, proxy=proxy.url("puser:ppass-S3CRET")), verb)
    assert isinstance(out, Bill), describe(out)
    expected = "Basic " + base64.b64encode(b"puser:ppass-S3CRET").decode()
    assert proxy.seen[0].headers.get("proxy-authorization") == expected
    assert "proxy-authorization" not in fs.requests[0].headers, "proxy credentials must not reach the server"
    dead = make(fs.base_url, proxy=f"http://puser:ppass-S3CRET@127.0.0.1:{closed_port()}", lm_retries=0)
    out, elapsed = timed(dead, verb)
    assert isinstance(out, LMError), describe(out)
    assert "ppass-S3CRET" not in str(out) and "ppass-S3CRET" not in repr(out)
    assert "ppass-S3CRET" not in repr(dead) and "ppass-S3CRET" not in repr(dead.backend)
    assert elapsed < 3, elapsed


@pytest.mark.parametrize("verb", SINGLE)
def test_unreachable_proxy_is_a_typed_error(fs: FaultServer, monkeypatch: pytest.MonkeyPatch, verb: str) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    out, elapsed = timed(make(fs.base_url), verb)
    assert isinstance(out, LMError), describe(out)
    assert fs.request_count == 0
    assert elapsed < 3, elapsed


# -- HTTPS through CONNECT ---------------------------------------------------------------------------------
trustme = pytest.importorskip("trustme", reason="the CONNECT cases need trustme (in the dev extra)")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    path = tmp_path_factory.mktemp("proxy-tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ctx, path


@pytest.mark.parametrize("verb", SINGLE)
@pytest.mark.parametrize("how", ["env", "option"])
def test_https_goes_through_connect(
    tls: tuple[ssl.SSLContext, Path], proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch, verb: str, how: str
) -> None:
    with FaultServer(tls=tls[0]) as secure:
        kw: dict[str, object] = {"verify": str(tls[1])}
        if how == "env":
            monkeypatch.setenv("HTTPS_PROXY", proxy.url())
        else:
            kw["proxy"] = proxy.url()
        out, _ = timed(make(secure.base_url, **kw), verb)
        assert isinstance(out, Bill), describe(out)
        assert [(s.method, s.target) for s in proxy.seen] == [("CONNECT", f"127.0.0.1:{secure.port}")]
        assert secure.request_count == 1
