"""The one HTTP transport of dspydantic's own remote calls, sync and async, on aiohttp.

Why aiohttp, for both faces (measured with ``bench/bench_sync_transport.py``; numbers in docs/benchmarks.md):

* **async**: an aiohttp ``ClientSession`` per event loop. Of the maintained async clients it costs the least
  CPU per request (issue 9 measured aiohttp 125-140 µs, httpx ``AsyncClient`` 2.1 ms) and a batch over it
  reaches ~0.9 of the ideal at 200 docs x 32-way.
* **sync**: the *same* engine, run by the calling thread on a private event loop of its own
  (``loop.run_until_complete``), one connection pool per thread. Measured on the same body and server against
  ``httpx.Client``, ``urllib3`` and aiohttp driven on one shared loop thread, it used the least client CPU
  per request (httpx ~3x, urllib3 and the shared loop thread ~1.5x of it: the hand-off between threads costs
  more than it saves), and it is, with the shared loop thread, the only design whose ``timeout`` bounds the
  whole call: ``httpx`` and ``urllib3`` apply their timeouts per socket operation, so a server dripping a
  byte every 0.3 s held a ``timeout=1`` call for 6 s on both. One engine also gives both faces one behaviour
  for proxies, TLS, redirects, decompression, keep-alive and errors. Before each sync call the private loop
  turns twice, so a keep-alive connection the server closed while the loop was idle is seen (its FIN) and
  dropped rather than written to. A sync call made from inside a running event loop (sync code called from
  async code) runs on one shared daemon loop thread instead. A thread's loop and its connections are closed
  when the thread ends (a batch's worker threads), everything else at ``close()`` and at exit.

The contract (spec-transport.md, issue 9):

* ``timeout`` is the **total deadline** of one call (connect + TLS + send + receive, whatever the server
  does); ``connect_timeout`` bounds connect + TLS handshake of a new connection.
* A request already written is never re-sent here (aiohttp re-sends only idempotent methods, never a POST);
  re-sending is the retry layer's decision (:mod:`dspydantic.lm.layers`), counted in ``lm_retries``.
* Proxies: ``proxy=`` or ``HTTP(S)_PROXY`` / ``ALL_PROXY`` / ``NO_PROXY`` from the environment (read once,
  like the openai SDK); ``verify=`` ``True`` (system CAs + certifi), ``False`` or a CA bundle path.
* Redirects: 307/308 to the same origin are followed with method and body; any other redirect of the POST is
  an :class:`LMError` saying so (the key never follows a redirect to another host). gzip/deflate bodies are
  decoded. Every fault is an :class:`LMError` (``retryable`` where another attempt can help), never a raw
  ``OSError`` / ``aiohttp`` / ``ssl`` / ``asyncio`` exception.
* Sessions are per event loop; a user's loop's session is closed when the loop shuts its async generators
  down (``asyncio.run`` does): 50 ``asyncio.run`` in a row leave no socket open; a loop closed without that
  has its sockets closed when the next loop starts a session, or at ``close()``.
* Fork-aware: a forked child (a Celery prefork worker) makes fresh loops and connections, and never closes
  what it inherited (closing an inherited event loop would unregister the parent's descriptors from the epoll
  instance both share).

``aiohttp`` is imported on the first call, never at ``import dspydantic``. The event loops the sessions run on,
and how they end, are :mod:`dspydantic.lm._engine`'s.

Size: over 500 lines because it is one protocol client: request assembly, redirects, proxies and TLS,
the error mapping and the redaction of every message must stay in one place to behave the same on both faces.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import email.utils
import functools
import logging
import math
import os
import ssl
import time
import urllib.request
import weakref
from collections.abc import AsyncGenerator, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit, urlunsplit

from ..errors import ConfigurationError, LMError, redact
from ._engine import (
    Sessions,
    abandon,
    after_two_turns,
    close_sessions,
    closer,
    inherited,
    loop_thread,
    private_loops,
    thread_loop,
    transports,
)

log = logging.getLogger("dspydantic")

__all__ = ["FormField", "HTTPReply", "Transport", "parse_retry_after", "request_id", "sanitize_url"]

_T = TypeVar("_T")
_MAX_REDIRECTS = 5
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class HTTPReply:
    """A complete HTTP response: status, headers (lower-cased names) and the decoded body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class FormField:
    """One field of a ``multipart/form-data`` body (encoded by aiohttp): a file when it has a ``filename``."""

    name: str
    value: str | bytes
    filename: str | None = None
    content_type: str | None = None


# ------------------------------------------------------------------------------------------ helpers


def sanitize_url(url: str) -> str:
    """``url`` without ``user:password@``, query string and fragment (they may carry credentials)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<a malformed URL>"
    if parts.username is None and parts.password is None and not parts.query and not parts.fragment:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def request_id(headers: Mapping[str, str]) -> str | None:
    return headers.get("x-request-id") or headers.get("request-id") or None


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` as seconds or an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            seconds = float(ms) / 1000.0
            if math.isfinite(seconds):
                return max(0.0, seconds)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _origin(url: str) -> tuple[str, str, int]:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:  # a malformed port: no origin matches it
        return "", "", -1


def _positive(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or value == float("inf"):
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _env_proxy(url: str) -> str | None:
    """The proxy the environment asks for ``url`` (``HTTP(S)_PROXY``, ``ALL_PROXY``, ``NO_PROXY``)."""
    proxies = urllib.request.getproxies_environment()
    if not proxies:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if proxies.get("no") and bypass(host, proxies):
        return None
    return proxies.get(parts.scheme) or proxies.get("all") or None


@functools.cache
def _ssl_context(verify: bool | str) -> ssl.SSLContext | bool:
    if verify is False:
        return False
    if isinstance(verify, str):
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    ctx = ssl.create_default_context()
    try:
        import certifi

        ctx.load_verify_locations(cafile=certifi.where())
    except (ImportError, OSError):  # pragma: no cover - certifi comes with httpx
        pass
    return ctx


# --------------------------------------------------------------------------------------- transport


class Transport:
    """POSTs JSON to one HTTP(S) endpoint, sync (:meth:`post`) and async (:meth:`apost`); any other call of
    that endpoint's API (a GET, a multipart upload) goes through :meth:`request` / :meth:`arequest`.

    ``base_url`` must not carry credentials (pass them in ``headers``); ``secrets`` are removed from every
    message this transport raises (and from any text passed to :meth:`redact`).
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 120.0,
        connect_timeout: float | None = None,
        verify: bool | str = True,
        proxy: str | None = None,
        max_connections: int = 100,
        secrets: tuple[str | None, ...] = (),
    ) -> None:
        try:
            parts = urlsplit(base_url)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise ConfigurationError(f"the endpoint is not a valid URL: {sanitize_url(base_url)!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"the endpoint must be an http(s) URL, got {sanitize_url(base_url)!r}")
        if parts.username is not None or parts.password is not None:
            raise ConfigurationError("the endpoint URL must not carry credentials: pass them as headers")
        self._secrets = secrets
        self.timeout: float = _positive("timeout", timeout) or 0.0
        connect = _positive("connect_timeout", connect_timeout, allow_none=True)
        self.connect_timeout = connect if connect is not None else min(10.0, self.timeout)
        if not isinstance(verify, bool | str) or (isinstance(verify, str) and not os.path.exists(verify)):
            raise ConfigurationError(f"verify must be True, False or the path of a CA bundle, got {verify!r}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ConfigurationError(f"max_connections must be a positive int, got {max_connections!r}")
        #: the endpoint as shown in messages (no query string: it may carry a key)
        self.base_url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self._query = f"?{parts.query}" if parts.query else ""
        if parts.query:
            self._secrets = (*self._secrets, parts.query)
        self.verify = verify
        self.max_connections = max_connections
        self._headers = {
            "User-Agent": "dspydantic",
            "Content-Type": "application/json",
            "Accept": "application/json",
            **dict(headers or {}),
        }
        self._proxy, proxy_auth, self.proxy_shown = self._resolve_proxy(proxy)
        self._proxy_headers: dict[str, str] | None = None
        if proxy_auth is not None:
            token = base64.b64encode(f"{proxy_auth[0]}:{proxy_auth[1]}".encode()).decode()
            self._proxy_headers = {"Proxy-Authorization": f"Basic {token}"}
            self._secrets = (*self._secrets, token)
        self._sessions: Sessions[asyncio.AbstractEventLoop, tuple[Any, AsyncGenerator[None, None] | None]] = {}
        self._pid = os.getpid()
        # a Transport dropped without close(): its sessions are closed on their loops, not left to warn
        self._finalizer = weakref.finalize(self, close_sessions, self._sessions, 0.0, run_idle=False)
        self._finalizer.atexit = False  # _shutdown() closes the live ones
        transports.add(self)

    def __repr__(self) -> str:
        return f"Transport({self.base_url!r}, timeout={self.timeout}, proxy={self.proxy_shown!r})"

    def _resolve_proxy(self, proxy: str | None) -> tuple[str | None, Any, str | None]:
        if proxy is not None and not isinstance(proxy, str):
            raise ConfigurationError(f"proxy must be a URL string, got {type(proxy).__name__}")
        where = "proxy"
        if proxy is None:
            proxy = _env_proxy(self.base_url)
            where = "the proxy from the environment (HTTP_PROXY/HTTPS_PROXY/ALL_PROXY)"
        if not proxy:
            return None, None, None
        if "://" not in proxy and where != "proxy":  # HTTP_PROXY=host:3128 is common in environments
            proxy = "http://" + proxy
        try:
            parts = urlsplit(proxy)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            parts = urlsplit("")
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in proxy):
            raise ConfigurationError(
                f"{where} must be an http:// or https:// URL, got {sanitize_url(proxy)!r} "
                "(SOCKS proxies are not supported)"
            )
        auth = None
        if parts.username is not None:
            from urllib.parse import unquote

            auth = (unquote(parts.username), unquote(parts.password or ""))
            self._secrets = (*self._secrets, parts.password)
        return sanitize_url(proxy), auth, sanitize_url(proxy)

    # -- sessions -------------------------------------------------------------------------------------
    async def _session(self) -> Any:
        if self._pid != os.getpid():  # a forked child: never touch the parent's connections
            inherited.append(dict(self._sessions))
            self._sessions.clear()
            self._pid = os.getpid()
        loop = asyncio.get_running_loop()
        entry = self._sessions.get(loop)
        if entry is not None and not entry[0].closed:
            return entry[0]
        import aiohttp

        for old in [lp for lp in self._sessions if lp.is_closed()]:  # loops closed without shutdown
            stale = self._sessions.pop(old, None)
            if stale is not None:
                abandon(stale[0])
        https = self.base_url.startswith("https:") or (self._proxy or "").startswith("https:")
        connector = aiohttp.TCPConnector(
            limit=self.max_connections,
            limit_per_host=0,
            ssl=_ssl_context(self.verify) if https else True,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            # no default headers: aiohttp copies a session's headers, Authorization included, into the
            # CONNECT request it sends a proxy (as Proxy-Authorization); ours travel with each request only
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
            auto_decompress=True,
            trust_env=False,
        )
        if loop in private_loops:  # our own loops: their sessions are closed with the thread or at exit
            self._sessions[loop] = (session, None)
            return session
        gen = closer(self._sessions, loop, session)
        self._sessions[loop] = (session, gen)
        await gen.__anext__()
        return session

    # -- calls ----------------------------------------------------------------------------------------
    async def apost(self, path: str, body: bytes, *, timeout: float | None = None) -> HTTPReply:
        """POST ``body`` to ``base_url + path`` within ``timeout`` (default: the transport's) seconds."""
        return await self.arequest("POST", path, body, timeout=timeout)

    async def arequest(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        form: tuple[FormField, ...] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> HTTPReply:
        """``method`` ``base_url + path`` with a JSON ``body``, a multipart ``form`` or nothing (a GET), within
        ``timeout`` seconds; ``headers`` add to (or replace) the transport's. Same deadline, proxies, TLS,
        redirect rules (a GET also follows 301/302/303 to the same origin) and typed errors as :meth:`apost`."""
        deadline = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(deadline):
                return await self._exchange(method, self.base_url + path + self._query, body, form, headers)
        except LMError:
            raise
        except TimeoutError as exc:
            if _is_connect_timeout(exc):
                raise self.error(
                    f"could not connect to {self.base_url} within connect_timeout={self.connect_timeout:g} s",
                    retryable=True,
                ) from None
            raise self.error(f"no complete answer from {self.base_url} within timeout={deadline:g} s",
                             retryable=True) from None
        except Exception as exc:
            raise self._map(exc) from None

    def post(self, path: str, body: bytes, *, timeout: float | None = None) -> HTTPReply:
        """The sync face: the same call, on this thread's private event loop (or, from inside a running
        loop, on the shared loop thread)."""
        return self.request("POST", path, body, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        form: tuple[FormField, ...] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> HTTPReply:
        """The sync face of :meth:`arequest`."""
        deadline: float = self.timeout if timeout is None else timeout
        try:
            return self.run_sync(
                self.arequest(method, path, body, form=form, headers=headers, timeout=deadline),
                backstop=deadline + 5.0,
            )
        except concurrent.futures.TimeoutError:
            raise self.error(f"no complete answer from {self.base_url} within timeout={deadline:g} s",
                             retryable=True) from None

    def run_sync(self, coro: Coroutine[Any, Any, _T], *, backstop: float | None = None) -> _T:
        """Run ``coro`` (calls of this transport) to completion from sync code: on this thread's private loop,
        or on the shared loop thread when this thread is inside a running loop (then ``backstop`` bounds the
        wait). A ``KeyboardInterrupt`` while waiting cancels it."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._run_here(coro)
        return self._run_elsewhere(coro, backstop)

    @staticmethod
    def _run_here(coro: Coroutine[Any, Any, _T]) -> _T:
        loop = thread_loop()
        task = loop.create_task(after_two_turns(coro))
        try:
            return loop.run_until_complete(task)
        except BaseException:  # KeyboardInterrupt while waiting: never leave the call running
            if not task.done():
                task.cancel()
                try:
                    loop.run_until_complete(task)
                except BaseException:
                    pass
            raise

    @staticmethod
    def _run_elsewhere(coro: Coroutine[Any, Any, _T], backstop: float | None) -> _T:
        runner = loop_thread()
        future = asyncio.run_coroutine_threadsafe(coro, runner.loop)
        try:
            return future.result(backstop)
        except BaseException:
            future.cancel()
            raise

    async def _exchange(
        self, method: str, url: str, body: bytes | None, form: tuple[FormField, ...] | None,
        extra: Mapping[str, str] | None,
    ) -> HTTPReply:
        session = await self._session()
        for _ in range(_MAX_REDIRECTS + 1):
            sent = self._request_headers(url)
            if body is None:  # a GET, or a form (aiohttp sets its multipart Content-Type): no JSON type
                sent = {k: v for k, v in sent.items() if k != "Content-Type"}
            sent = {**sent, **extra} if extra else sent
            async with session.request(
                method,
                url,
                data=_form_data(form) if form is not None else body,  # a form is rebuilt for each send
                allow_redirects=False,
                proxy=self._proxy,
                headers=sent,
                proxy_headers=self._proxy_headers,
            ) as resp:
                data = await resp.read()
                headers = {k.lower(): v for k, v in resp.headers.items()}
                status = resp.status
            if status not in (301, 302, 303, 307, 308):
                return HTTPReply(status, headers, data)
            location = headers.get("location")
            target = urljoin(url, location) if location else None
            resend = status in (307, 308) or method == "GET"  # a GET has no body to lose
            if resend and target and _origin(target) == _origin(url):
                url = target
                continue
            where = sanitize_url(target) if target else "nowhere (no Location header)"
            why = (
                "it points to another origin (the API key is never sent there)"
                if target and resend
                else f"a {method} is only re-sent for a 307/308 redirect to the same origin"
            )
            raise self.error(
                f"{self.base_url} redirected (HTTP {status}) to {where}; not followed: {why}. "
                "Set api_base to the final URL.",
                status=status,
                headers=headers,
            )
        raise self.error(f"{self.base_url} redirected more than {_MAX_REDIRECTS} times", status=status)

    def _request_headers(self, url: str) -> dict[str, str]:
        # a plain-HTTP request goes to the proxy itself, so the proxy's credentials travel with it; an HTTPS
        # one goes through a CONNECT tunnel, and they travel with the CONNECT only (aiohttp's proxy_headers)
        if self._proxy_headers is not None and not url.startswith("https:"):
            return {**self._headers, **self._proxy_headers}
        return self._headers

    def redact(self, text: str) -> str:
        """``text`` without this transport's secrets (key, URL and proxy credentials), for a message."""
        return redact(text, *self._secrets)

    def error(
        self, message: str, *, retryable: bool = False, status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> LMError:
        """An :class:`LMError` about this endpoint, redacted with its secrets (``request_id`` and ``retry_after``
        from ``headers``): for callers that read an :class:`HTTPReply` themselves."""
        return LMError(
            message,
            status=status,
            retryable=retryable,
            headers=headers,
            request_id=request_id(headers or {}),
            retry_after=parse_retry_after(headers or {}),
            secrets=self._secrets,
        )

    def _map(self, exc: Exception) -> LMError:
        """A transport fault as a typed :class:`LMError`."""
        import aiohttp

        base = self.base_url
        detail = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, aiohttp.ClientConnectorCertificateError | ssl.SSLCertVerificationError):
            return self.error(
                f"TLS certificate verification failed for {base} ({detail}); pass verify='/path/to/ca-bundle.pem' "
                "for a private CA (or verify=False)"
            )
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return self.error(f"cannot resolve the host of {base} ({detail})")
        if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
            return self.error(f"TLS handshake with {base} failed ({detail})")
        if isinstance(exc, aiohttp.ClientProxyConnectionError):
            return self.error(f"cannot connect to the proxy {self.proxy_shown} ({detail})", retryable=True)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return self.error(f"cannot connect to {base} ({detail})", retryable=True)
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return self.error(f"{base} closed the connection before answering ({detail})", retryable=True)
        if isinstance(exc, aiohttp.ClientPayloadError):
            return self.error(f"the answer from {base} was cut off ({detail})", retryable=True)
        if isinstance(exc, aiohttp.ClientResponseError):
            return self.error(f"{base} sent a malformed HTTP response ({detail})", retryable=True)
        if isinstance(exc, aiohttp.ClientError | OSError | ValueError | aiohttp.http_exceptions.HttpProcessingError):
            return self.error(f"the call to {base} failed ({detail})", retryable=True)
        return self.error(f"the call to {base} failed ({detail})")

    # -- closing --------------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the current loop's session, then every other (see :meth:`close`)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover
            loop = None
        entry = self._sessions.pop(loop, None) if loop is not None else None
        if entry is not None:
            await entry[0].close()
        self.close()

    def close(self) -> None:
        """Close every session of this transport: on the private loop thread, and on other loops that are
        still open (a loop running in another thread closes it soon after; a closed loop's connections are
        gone with it)."""
        if self._pid != os.getpid():
            inherited.append(dict(self._sessions))
            self._sessions.clear()
            return
        close_sessions(self._sessions)


def _form_data(form: tuple[FormField, ...]) -> Any:
    import aiohttp

    data = aiohttp.FormData()
    for f in form:
        data.add_field(f.name, f.value, filename=f.filename, content_type=f.content_type)
    return data


def _is_connect_timeout(exc: BaseException) -> bool:
    try:
        import aiohttp
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, aiohttp.ConnectionTimeoutError)
