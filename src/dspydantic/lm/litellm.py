"""Every provider LiteLLM speaks (Anthropic, Gemini, Ollama, Bedrock, ...), imported only when used."""

from __future__ import annotations

from typing import Any

from ..errors import LMError, MissingExtraError, redact
from ._base import LMRequest, LMResponse, chat_params, token_logprobs


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
        **kwargs: Any,
    ) -> None:
        self.model_id = model_id
        self.cache_id = f"litellm:{api_base or ''}:{model_id}"
        self.context_window = context_window
        self._secret = api_key
        self._kwargs: dict[str, Any] = {"timeout": timeout, **kwargs}
        if api_key:
            self._kwargs["api_key"] = api_key
        if api_base:
            self._kwargs["api_base"] = api_base

    def __repr__(self) -> str:
        return f"LiteLLMBackend(model_id={self.model_id!r})"

    def _args(self, request: LMRequest) -> dict[str, Any]:
        args: dict[str, Any] = {
            "model": self.model_id,
            "messages": request.messages,
            **self._kwargs,
            **chat_params(request),
        }
        args.update(request.extra)
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
        retryable = status in (408, 429, 500, 502, 503, 504) or status is None
        return LMError(redact(f"{self.model_id}: {exc}", self._secret), status=status, retryable=retryable)

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
