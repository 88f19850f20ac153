"""A ready ``dspy.LM`` supplied by the user (``Prompter(lm=...)``), called through its own client."""

from __future__ import annotations

import warnings
from typing import Any

from ..errors import LMError
from ._base import LMRequest, LMResponse, chat_params, token_logprobs


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


class DSPyLMBackend:
    """Wraps a ``dspy.LM``: its provider routing, retries and (if enabled) its own cache apply."""

    def __init__(self, lm: Any, *, context_window: int | None = None) -> None:
        self.lm = lm
        kwargs = getattr(lm, "kwargs", {}) or {}
        base = kwargs.get("api_base") or kwargs.get("base_url") or ""
        self.cache_id = f"dspy:{base}:{getattr(lm, 'model', type(lm).__name__)}"
        self.context_window = context_window

    def __repr__(self) -> str:
        return f"DSPyLMBackend(model={getattr(self.lm, 'model', '?')!r})"

    @staticmethod
    def _response(resp: Any) -> LMResponse:
        choices = _get(resp, "choices") or []
        if not choices:
            raise LMError("the DSPy LM returned no choices")
        msg = _get(choices[0], "message")
        usage = _get(resp, "usage") or {}
        logprobs, texts = token_logprobs(_get(choices[0], "logprobs"))
        return LMResponse(
            text=(_get(msg, "content") if msg is not None else _get(choices[0], "text")) or "",
            prompt_tokens=int(_get(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(_get(usage, "completion_tokens", 0) or 0),
            finish_reason=_get(choices[0], "finish_reason"),
            token_logprobs=logprobs,
            token_texts=texts,
        )

    def complete(self, request: LMRequest) -> LMResponse:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                resp = self.lm.forward(messages=request.messages, **chat_params(request))
            except LMError:
                raise
            except Exception as exc:
                raise LMError(f"{self!r} failed: {type(exc).__name__}: {exc}", retryable=False) from None
        return self._response(resp)

    async def acomplete(self, request: LMRequest) -> LMResponse:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                resp = await self.lm.aforward(messages=request.messages, **chat_params(request))
            except Exception as exc:
                raise LMError(f"{self!r} failed: {type(exc).__name__}: {exc}", retryable=False) from None
        return self._response(resp)

    def close(self) -> None:
        return None
