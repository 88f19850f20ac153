"""A ready ``dspy.LM`` supplied by the user (``Prompter(lm=...)``), called through its own client."""

from __future__ import annotations

import warnings
from typing import Any

from ..errors import LMError
from ._base import LMRequest, LMResponse, chat_params, token_logprobs
from .settings import DEFAULT_SETTINGS, ModelSettings, settings_from
from .transport import sanitize_url


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


class DSPyLMBackend:
    """Wraps a ``dspy.LM``: its provider routing, retries and (if enabled) its own cache apply."""

    def __init__(
        self, lm: Any, *, context_window: int | None = None, settings: ModelSettings | None = None,
        **setting_kwargs: Any,
    ) -> None:
        self.lm = lm
        kwargs = getattr(lm, "kwargs", {}) or {}
        base = kwargs.get("api_base") or kwargs.get("base_url") or ""
        self.settings = settings_from(settings, setting_kwargs)
        self.cache_id = f"dspy:{sanitize_url(str(base)) if base else ''}:{getattr(lm, 'model', type(lm).__name__)}" + (
            f":{self.settings.fingerprint}" if self.settings != DEFAULT_SETTINGS else ""
        )
        self.context_window = context_window
        # the LM's own credentials: removed from every message we raise (URL credentials by pattern)
        self._secrets = tuple(
            str(v) for k, v in kwargs.items()
            if isinstance(v, str) and v and any(w in k.lower() for w in ("key", "token", "secret", "password"))
        )

    def __repr__(self) -> str:
        return f"DSPyLMBackend(model={getattr(self.lm, 'model', '?')!r})"

    def _params(self, request: LMRequest) -> dict[str, Any]:
        settings = request.settings.over(self.settings)
        if settings is not request.settings:
            from dataclasses import replace

            request = replace(request, settings=settings)
        params = chat_params(request)
        if settings.extra_body:
            params["extra_body"] = dict(settings.extra_body)
        return params

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

    def _error(self, exc: Exception) -> LMError:
        status = getattr(exc, "status_code", None)
        return LMError(
            f"{self!r} failed: {type(exc).__name__}: {exc}",
            status=status if isinstance(status, int) else None,
            retryable=False,  # the dspy.LM retried already (its num_retries)
            secrets=self._secrets,
        )

    def complete(self, request: LMRequest) -> LMResponse:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                resp = self.lm.forward(messages=request.messages, **self._params(request))
            except LMError:
                raise
            except Exception as exc:
                raise self._error(exc) from None
        return self._response(resp)

    async def acomplete(self, request: LMRequest) -> LMResponse:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                resp = await self.lm.aforward(messages=request.messages, **self._params(request))
            except LMError:
                raise
            except Exception as exc:
                raise self._error(exc) from None
        return self._response(resp)

    def close(self) -> None:
        return None
