"""Every provider LiteLLM speaks (Anthropic, Gemini, Ollama, Bedrock, ...), imported only when used.

LiteLLM makes the HTTP calls through its own client (retries off: ours apply, as a layer). Provider-specific
options go in ``litellm_kwargs={...}`` (e.g. ``{"vertex_project": "..."}``).
"""

from __future__ import annotations

from typing import Any

from .._options import count, seconds
from ..errors import ConfigurationError, LMError, MissingExtraError
from ._base import LMRequest, LMResponse, chat_params, token_logprobs
from .settings import DEFAULT_SETTINGS, ModelSettings, settings_from
from .transport import parse_retry_after, request_id, sanitize_url


def _litellm() -> Any:
    try:
        import litellm
    except ImportError:  # pragma: no cover - litellm comes with dspy
        raise MissingExtraError("litellm", "litellm") from None
    return litellm


class LiteLLMBackend:
    """Backend over ``litellm.completion`` / ``litellm.acompletion``."""

    def __init__(
        self,
        model_id: str,
        *,
        api_key: str | None = None,
        api_base: str | None = None,
        timeout: float = 120.0,
        context_window: int | None = None,
        litellm_kwargs: dict[str, Any] | None = None,
        settings: ModelSettings | None = None,
        **setting_kwargs: Any,
    ) -> None:
        if litellm_kwargs is not None and not isinstance(litellm_kwargs, dict):
            raise ConfigurationError(f"litellm_kwargs must be a dict, got {type(litellm_kwargs).__name__}")
        seconds("timeout", timeout)
        if context_window is not None:
            count("context_window", context_window, low=256)
        self.model_id = model_id
        self.settings = settings_from(settings, setting_kwargs)
        shown_base = sanitize_url(api_base) if api_base else ""
        self.cache_id = f"litellm:{shown_base}:{model_id}" + (
            f":{self.settings.fingerprint}" if self.settings != DEFAULT_SETTINGS else ""
        )
        self.context_window = context_window
        self.timeout = timeout
        self._secrets: tuple[str, ...] = tuple(s for s in (api_key,) if s)
        self._kwargs: dict[str, Any] = {"timeout": timeout, "num_retries": 0, **(litellm_kwargs or {})}
        if api_key:
            self._kwargs["api_key"] = api_key
        if api_base:
            self._kwargs["api_base"] = api_base

    def __repr__(self) -> str:
        return f"LiteLLMBackend(model_id={self.model_id!r})"

    def _args(self, request: LMRequest) -> dict[str, Any]:
        settings = request.settings.over(self.settings)
        params = chat_params(request if settings is request.settings else _with(request, settings))
        args: dict[str, Any] = {"model": self.model_id, "messages": request.messages, **self._kwargs, **params}
        if settings.extra_body:
            args["extra_body"] = dict(settings.extra_body)
        return args

    @staticmethod
    def _response(resp: Any) -> LMResponse:
        choice = resp.choices[0]
        usage = getattr(resp, "usage", None)
        logprobs, texts = token_logprobs(getattr(choice, "logprobs", None))
        return LMResponse(
            text=choice.message.content or "",
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            finish_reason=getattr(choice, "finish_reason", None),
            token_logprobs=logprobs,
            token_texts=texts,
        )

    def _error(self, exc: Exception) -> LMError:
        status = getattr(exc, "status_code", None)
        status = status if isinstance(status, int) else None
        headers: dict[str, str] = {}
        raw_headers = getattr(getattr(exc, "response", None), "headers", None)
        if raw_headers is not None:
            try:
                headers = {str(k).lower(): str(v) for k, v in raw_headers.items()}
            except Exception:
                headers = {}
        retryable = status is None or status in (408, 409, 425, 429) or status >= 500
        return LMError(
            f"{self.model_id}: {type(exc).__name__}: {exc}",
            status=status,
            retryable=retryable,
            headers=headers,
            request_id=request_id(headers),
            retry_after=parse_retry_after(headers),
            secrets=self._secrets,
        )

    def complete(self, request: LMRequest) -> LMResponse:
        litellm = _litellm()
        try:
            return self._response(litellm.completion(**self._args(request)))
        except Exception as exc:
            raise self._error(exc) from None

    async def acomplete(self, request: LMRequest) -> LMResponse:
        litellm = _litellm()
        try:
            return self._response(await litellm.acompletion(**self._args(request)))
        except Exception as exc:
            raise self._error(exc) from None

    def close(self) -> None:
        return None


def _with(request: LMRequest, settings: ModelSettings) -> LMRequest:
    from dataclasses import replace

    return replace(request, settings=settings)
