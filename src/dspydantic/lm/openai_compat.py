"""Any OpenAI-compatible chat-completions server: OpenAI itself, vLLM, llama.cpp server, LM Studio, a fake.

Calls go through the one HTTP transport (:mod:`dspydantic.lm.transport`, aiohttp, sync and async faces).
Structured output uses ``response_format={"type": "json_schema", ...}``; a server that rejects it is retried
once with JSON mode and remembered. The static part of the body (model, settings, response format with its
schema) is serialized once per schema and settings, not on every call.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import orjson

from ..errors import ConfigurationError, LMError, decode_body
from ._base import LMRequest, LMResponse, chat_params, token_logprobs
from .settings import DEFAULT_SETTINGS, SETTING_NAMES, ModelSettings, settings_from
from .transport import HTTPReply, Transport, parse_retry_after, request_id, sanitize_url

_T = TypeVar("_T")
OPENAI_BASE = "https://api.openai.com/v1"
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
#: keyword arguments of this backend besides the transport's and the model settings
OPTIONS = ("structured_output", "headers")
TRANSPORT_OPTIONS = ("timeout", "connect_timeout", "verify", "proxy", "max_connections")
_MAX_HEADS = 64


def env_api_base() -> str | None:
    return os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_BASE")


def retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def http_error(
    status: int, message: str, headers: dict[str, str], source: str, *, secrets: tuple[str, ...] = ()
) -> LMError:
    """The :class:`LMError` of an error answer (``status`` >= 400) from ``source``: retryable for
    408/409/425/429/5xx, with the request id and ``Retry-After`` from the (lower-cased) ``headers``."""
    return LMError(
        f"{source} answered HTTP {status}: {message}",
        status=status,
        retryable=retryable_status(status),
        headers=headers,
        request_id=request_id(headers),
        retry_after=parse_retry_after(headers),
        secrets=secrets,
    )


class OpenAICompatBackend:
    """Backend for ``/chat/completions`` of an OpenAI-compatible server."""

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        connect_timeout: float | None = None,
        verify: bool | str = True,
        proxy: str | None = None,
        max_connections: int = 100,
        context_window: int | None = None,
        structured_output: str = "json_schema",
        headers: dict[str, str] | None = None,
        settings: ModelSettings | None = None,
        **setting_kwargs: Any,
    ) -> None:
        unknown = sorted(set(setting_kwargs) - set(SETTING_NAMES))
        if unknown:
            accepted = sorted({*OPTIONS, *TRANSPORT_OPTIONS, *SETTING_NAMES, "api_base", "api_key", "context_window"})
            raise ConfigurationError(
                f"unknown argument(s) {unknown} for an OpenAI-compatible model; accepted: {accepted}"
            )
        if structured_output not in ("json_schema", "json_object", "none"):
            raise ConfigurationError(
                f"structured_output must be 'json_schema', 'json_object' or 'none', got {structured_output!r}"
            )
        if headers is not None and not (
            isinstance(headers, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            raise ConfigurationError("headers must be a dict of str to str")
        base = (api_base or env_api_base() or OPENAI_BASE).rstrip("/")
        if not isinstance(base, str):
            raise ConfigurationError(f"api_base must be a URL string, got {type(api_base).__name__}")
        try:
            parts = urlsplit(base)
            port = parts.port
        except ValueError:
            raise ConfigurationError(f"api_base is not a valid URL: {sanitize_url(base)!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"api_base must be an http(s) URL, got {sanitize_url(base)!r}")
        if api_key is not None and not isinstance(api_key, str):
            raise ConfigurationError(f"api_key must be a string, got {type(api_key).__name__}")
        secrets: list[str | None] = []
        auth: str | None = None
        if parts.username is not None or parts.password is not None:  # credentials in the URL: Basic auth
            user, password = unquote(parts.username or ""), unquote(parts.password or "")
            secrets += [parts.password, password, f"{parts.username}:{parts.password}"]
            if api_key is None:
                token = base64.b64encode(f"{user}:{password}".encode()).decode()
                auth = f"Basic {token}"
                secrets.append(token)
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            netloc = host + (f":{port}" if port else "")
            base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, ""))
        key = api_key if api_key is not None else (None if auth else os.environ.get("OPENAI_API_KEY"))
        if not key and not auth and parts.hostname == "api.openai.com":
            raise ConfigurationError(
                "No API key for OpenAI: pass api_key=... or set the OPENAI_API_KEY environment variable "
                "(or use model_id='local' for the embedded offline model)"
            )
        if key:
            auth = f"Bearer {key}"
            secrets.append(key)
        self.model = model
        #: the endpoint as shown (no credentials, no query string)
        self.base_url = sanitize_url(base).rstrip("/")
        self.settings = settings_from(settings, setting_kwargs)
        query = urlsplit(base).query
        self.cache_id = f"openai-compat:{self.base_url}:{model}" + (
            f"?{hashlib.sha256(query.encode()).hexdigest()[:16]}" if query else ""
        ) + (f":{self.settings.fingerprint}" if self.settings != DEFAULT_SETTINGS else "")
        self.context_window = context_window
        self.structured_output = structured_output
        self._secrets = tuple(s for s in secrets if s)
        send = dict(headers or {})
        if auth:
            send["Authorization"] = auth
        self.transport = Transport(
            base,
            headers=send,
            timeout=timeout,
            connect_timeout=connect_timeout,
            verify=verify,
            proxy=proxy,
            max_connections=max_connections,
            secrets=self._secrets,
        )
        self.timeout = self.transport.timeout
        self._heads: dict[tuple[Any, ...], tuple[Any, bytes]] = {}
        self._heads_lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key or URL credentials
        return f"OpenAICompatBackend(model={self.model!r}, api_base={self.base_url!r})"

    # -- request/response bodies -------------------------------------------------------------------
    def _settings(self, request: LMRequest) -> ModelSettings:
        return request.settings.over(self.settings) if self.settings is not DEFAULT_SETTINGS else request.settings

    def body(self, request: LMRequest) -> dict[str, Any]:
        """The JSON body of the request, without sending it (provider batch jobs use this too)."""
        return orjson.loads(self.encode(request))

    def encode(self, request: LMRequest) -> bytes:
        """The request body as bytes: the static head (model, settings, response format and its schema)
        is serialized once per (schema, settings, mode); only the messages are encoded per call."""
        mode = self.structured_output
        key = (id(request.json_schema), request.schema_name, request.settings, request.logprobs, mode)
        hit = self._heads.get(key)
        if hit is None or hit[0] is not request.json_schema:
            settings = self._settings(request)
            static: dict[str, Any] = {"model": self.model}
            static.update(chat_params(request if settings is request.settings else _with(request, settings),
                                      structured=mode))
            static.update(settings.extra_body or {})
            static.pop("messages", None)
            hit = (request.json_schema, orjson.dumps(static)[:-1] + b',"messages":')
            with self._heads_lock:
                if len(self._heads) >= _MAX_HEADS:
                    self._heads.clear()
                self._heads[key] = hit
        return hit[1] + request.messages_json() + b"}"

    def _parse(self, reply: HTTPReply) -> LMResponse:
        status, raw, headers = reply.status, reply.body, reply.headers
        if status >= 400:
            message = decode_body(raw, *self._secrets)
            if len(raw) < (1 << 20):
                try:
                    err = orjson.loads(raw)
                    if isinstance(err, dict) and isinstance(err.get("error"), dict):
                        message = str(err["error"].get("message", message))
                    elif isinstance(err, dict) and isinstance(err.get("error"), str):
                        message = err["error"]
                except orjson.JSONDecodeError:
                    pass
            raise http_error(status, message, headers, f"{self.model} at {self.base_url}", secrets=self._secrets)
        try:
            data = orjson.loads(raw)
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            if not isinstance(text, str):
                raise TypeError(f"content is {type(text).__name__}")
            usage = data.get("usage") or {}
            logprobs, texts = token_logprobs(choice.get("logprobs"))
            return LMResponse(
                text=text,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                finish_reason=choice.get("finish_reason"),
                token_logprobs=logprobs,
                token_texts=texts,
                headers=headers,
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            snippet = decode_body(raw, *self._secrets, limit=300)
            raise LMError(
                f"{self.model} at {self.base_url} sent a malformed completion ({type(exc).__name__}: {exc}): "
                f"{snippet!r}",
                status=status,
                retryable=True,
                headers=headers,
                request_id=request_id(headers),
                secrets=self._secrets,
            ) from None

    def _downgrade(self, exc: LMError) -> bool:
        """A server that rejects ``json_schema`` gets JSON mode from now on (returns True to retry)."""
        if exc.status == 400 and self.structured_output == "json_schema" and "response_format" in str(exc):
            self.structured_output = "json_object"
            return True
        return False

    # -- calls ---------------------------------------------------------------------------------------
    def complete(self, request: LMRequest) -> LMResponse:
        reply = self.transport.post("/chat/completions", self.encode(request))
        try:
            return self._parse(reply)
        except LMError as exc:
            if self._downgrade(exc):
                return self.complete(request)
            raise

    async def acomplete(self, request: LMRequest) -> LMResponse:
        reply = await self.transport.apost("/chat/completions", self.encode(request))
        try:
            return self._parse(reply)
        except LMError as exc:
            if self._downgrade(exc):
                return await self.acomplete(request)
            raise

    def run_sync(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run a coroutine of calls to this backend from sync code on the transport's engine (a sync batch
        runs as one async batch there: no thread per item)."""
        return self.transport.run_sync(coro)

    def close(self) -> None:
        self.transport.close()

    async def aclose(self) -> None:
        await self.transport.aclose()


def _with(request: LMRequest, settings: ModelSettings) -> LMRequest:
    from dataclasses import replace

    return replace(request, settings=settings)
