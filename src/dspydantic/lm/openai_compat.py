"""Any OpenAI-compatible chat-completions server: OpenAI itself, vLLM, llama.cpp server, LM Studio, a fake.

Both paths are lean keep-alive HTTP/1.1 clients on the standard library: a shared pool of ``http.client``
connections for sync calls (any thread), an asyncio connection pool per event loop for async calls (native
async, no threads). Structured output uses ``response_format={"type": "json_schema", ...}``; a server that
rejects it is retried once with JSON mode and remembered.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import weakref
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigurationError, LMError, redact
from ._base import LMRequest, LMResponse, chat_params, token_logprobs

OPENAI_BASE = "https://api.openai.com/v1"
_RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}


def env_api_base() -> str | None:
    return os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_BASE")


class OpenAICompatBackend:
    """Backend for ``/chat/completions`` of an OpenAI-compatible server."""

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        context_window: int | None = None,
        structured_output: str = "json_schema",
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        base = (api_base or env_api_base() or OPENAI_BASE).rstrip("/")
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"api_base must be an http(s) URL, got {base!r}")
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if not key and parts.hostname == "api.openai.com":
            raise ConfigurationError(
                "No API key for OpenAI: pass api_key=... or set the OPENAI_API_KEY environment variable "
                "(or use model_id='local' for the embedded offline model)"
            )
        self.model = model
        self.base_url = base
        self.cache_id = f"openai-compat:{base}:{model}"
        self.context_window = context_window
        self.timeout = timeout
        self.structured_output = structured_output
        self.extra_body = dict(extra_body or {})
        self._secret = key or None
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path or "") + "/chat/completions"
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        # idle keep-alive connections shared by every thread (LIFO: the warmest first)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        weakref.finalize(self, _close_all, self._idle)
        self._apool: Any = None

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAICompatBackend(model={self.model!r}, api_base={self.base_url!r})"

    # -- request/response bodies -------------------------------------------------------------------
    def body(self, request: LMRequest) -> dict[str, Any]:
        """The JSON body of the request, without sending it (provider batch jobs use this too)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            **chat_params(request, structured=self.structured_output),
        }
        body.update(self.extra_body)
        body.update(request.extra)
        return body

    def _parse(self, status: int, raw: bytes) -> LMResponse:
        if status >= 400:
            message = raw[:500].decode("utf-8", "replace")
            try:
                err = json.loads(raw)
                if isinstance(err, dict) and isinstance(err.get("error"), dict):
                    message = str(err["error"].get("message", message))
            except ValueError:
                pass
            raise LMError(
                redact(f"{self.model} at {self.base_url} answered HTTP {status}: {message}", self._secret),
                status=status,
                retryable=status in _RETRYABLE,
            )
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise LMError(f"{self.model} at {self.base_url} sent a malformed completion: {exc!r}") from None
        usage = data.get("usage") or {}
        logprobs, texts = token_logprobs(choice.get("logprobs"))
        return LMResponse(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=choice.get("finish_reason"),
            token_logprobs=logprobs,
            token_texts=texts,
        )

    def _downgrade(self, exc: LMError) -> bool:
        """A server that rejects ``json_schema`` gets JSON mode from now on (returns True to retry)."""
        if exc.status == 400 and self.structured_output == "json_schema" and "response_format" in str(exc):
            self.structured_output = "json_object"
            return True
        return False

    # -- sync --------------------------------------------------------------------------------------
    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self.timeout), False

    def _post(self, payload: bytes) -> tuple[int, bytes]:
        for attempt in (0, 1):
            conn, reused = self._connection()
            try:
                conn.request("POST", self._path, body=payload, headers=self._headers)
                resp = conn.getresponse()
                status, data = resp.status, resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if reused and attempt == 0:  # a keep-alive connection the server had closed
                    continue
                raise LMError(f"connection to {self.base_url} failed: {exc!r}", retryable=True) from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise LMError(f"connection to {self.base_url} failed: {exc!r}", retryable=True) from None
            if resp.will_close:
                conn.close()
            else:
                with self._lock:
                    self._idle.append(conn)
            return status, data
        raise AssertionError("unreachable")

    def complete(self, request: LMRequest) -> LMResponse:
        try:
            return self._parse(*self._post(json.dumps(self.body(request)).encode()))
        except LMError as exc:
            if self._downgrade(exc):
                return self.complete(request)
            raise

    # -- async -------------------------------------------------------------------------------------
    async def acomplete(self, request: LMRequest) -> LMResponse:
        from ._aiohttp11 import AsyncHTTPError, AsyncPool

        if self._apool is None:
            self._apool = AsyncPool(self._host, self._port, self._https, self.timeout)
        try:
            status, raw = await self._apool.post(
                self._path, json.dumps(self.body(request)).encode(), self._headers
            )
        except (AsyncHTTPError, TimeoutError) as exc:
            raise LMError(
                redact(f"connection to {self.base_url} failed: {exc!r}", self._secret), retryable=True
            ) from None
        try:
            return self._parse(status, raw)
        except LMError as exc:
            if self._downgrade(exc):
                return await self.acomplete(request)
            raise

    def close(self) -> None:
        with self._lock:
            _close_all(self._idle)
        if self._apool is not None:
            self._apool.close()


def _close_all(conns: list[http.client.HTTPConnection]) -> None:
    while conns:
        conns.pop().close()
