"""TLS against the raw-socket fault server: a certificate the client must refuse, the ``verify=`` option that
accepts its CA, and a port that accepts TCP but never speaks TLS. The CA and certificate are made here
(trustme); nothing leaves 127.0.0.1."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from dspydantic import LMError

from ._faultserver import FaultServer
from ._verbs import SINGLE, VERBS, Bill, describe, make, timed

trustme = pytest.importorskip("trustme", reason="the TLS cases need trustme (in the dev extra)")


@pytest.fixture(scope="module")
def ca_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server context with a certificate for 127.0.0.1/localhost signed by a fresh CA, and the CA's PEM."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ctx, path


@pytest.fixture()
def tls_server(ca_files: tuple[ssl.SSLContext, Path]) -> Iterator[FaultServer]:
    with FaultServer(tls=ca_files[0]) as server:
        yield server


@pytest.mark.parametrize("verb", SINGLE)
def test_unknown_ca_is_refused_with_a_typed_error(tls_server: FaultServer, verb: str) -> None:
    out, elapsed = timed(make(tls_server.base_url), verb)
    assert isinstance(out, LMError), describe(out)
    assert any(w in str(out).lower() for w in ("certificate", "verif", "ssl", "tls")), str(out)
    assert tls_server.request_count == 0, "no request may be sent over a connection that failed verification"
    assert elapsed < 3, elapsed


@pytest.mark.parametrize("verb", VERBS)
def test_verify_accepts_a_ca_bundle_path(
    tls_server: FaultServer, ca_files: tuple[ssl.SSLContext, Path], verb: str
) -> None:
    out, elapsed = timed(make(tls_server.base_url, verify=str(ca_files[1])), verb)
    assert isinstance(out, Bill), describe(out)
    assert tls_server.request_count == 1
    assert elapsed < 3, elapsed


@pytest.mark.parametrize("verb", SINGLE)
def test_verify_false_skips_verification(tls_server: FaultServer, verb: str) -> None:
    out, _ = timed(make(tls_server.base_url, verify=False), verb)
    assert isinstance(out, Bill), describe(out)
    assert tls_server.request_count == 1


@pytest.mark.parametrize("verb", SINGLE)
@pytest.mark.parametrize(("timeout", "connect_timeout", "bound"), [(2.0, None, 4.5), (30.0, 1.0, 3.0)])
def test_tls_handshake_that_never_comes_is_bounded(
    verb: str, timeout: float, connect_timeout: float | None, bound: float
) -> None:
    """TCP is accepted, the server never answers the ClientHello: ``timeout`` (or ``connect_timeout``,
    which covers connect + handshake) ends the call, not asyncio's 60 s handshake default."""
    with FaultServer(silent=True) as silent:
        kw = {} if connect_timeout is None else {"connect_timeout": connect_timeout}
        out, elapsed = timed(make(silent.base_url, timeout=timeout, lm_retries=0, **kw), verb, cap=20)
        assert silent.accepted >= 1
    assert isinstance(out, LMError), describe(out)
    assert elapsed < bound, elapsed
