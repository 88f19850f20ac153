"""The small protocol every LM backend implements (sync + async call, usage, logprobs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class LMRequest:
    """One chat completion request, provider-neutral.

    ``messages`` are OpenAI chat messages; ``content`` is a string or a list of OpenAI content parts
    (``{"type": "text", ...}``, ``{"type": "image_url", ...}``). ``json_schema`` is the JSON schema the
    answer must follow (``None``: free text). ``schema_name`` names it for providers that want a name.
    """

    messages: list[dict[str, Any]]
    json_schema: dict[str, Any] | None = None
    schema_name: str = "output"
    temperature: float | None = None
    max_tokens: int | None = None
    logprobs: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class LMResponse:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    #: natural-log probabilities of the generated tokens, when the backend has them
    token_logprobs: list[float] | None = None
    #: the text of each generated token (same length as ``token_logprobs``; their concatenation spells
    #: ``text`` where the backend knows the exact pieces): aligns the probabilities to the answer's fields
    token_texts: list[str] | None = None


@runtime_checkable
class LMBackend(Protocol):
    """A backend. ``cache_id`` identifies endpoint + model (never a secret) for cache keys."""

    cache_id: str
    context_window: int | None

    def complete(self, request: LMRequest) -> LMResponse: ...

    async def acomplete(self, request: LMRequest) -> LMResponse: ...

    def close(self) -> None: ...


def chat_params(request: LMRequest, *, structured: str = "json_schema") -> dict[str, Any]:
    """The OpenAI chat-completions parameters of a request besides model and messages (every backend that
    speaks that dialect builds its call from this). ``structured``: ``"json_schema"``, ``"json_object"``
    or ``"none"``."""
    params: dict[str, Any] = {}
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.max_tokens is not None:
        params["max_tokens"] = request.max_tokens
    if request.json_schema is not None and structured == "json_schema":
        params["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": request.schema_name, "schema": request.json_schema, "strict": False},
        }
    elif request.json_schema is not None and structured == "json_object":
        params["response_format"] = {"type": "json_object"}
    if request.logprobs:
        params["logprobs"] = True
    return params


def token_logprobs(logprobs: Any) -> tuple[list[float] | None, list[str] | None]:
    """(log-probabilities, token texts) from an OpenAI-style ``choice.logprobs`` (a dict or an object with
    ``content``: entries with ``logprob`` and ``token``); texts are None when any entry lacks its token."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else getattr(logprobs, "content", None)
    if not isinstance(content, list) or not content:
        return None, None
    values: list[float] = []
    texts: list[str] | None = []
    for entry in content:
        get = entry.get if isinstance(entry, dict) else lambda k, e=entry: getattr(e, k, None)
        lp = get("logprob")
        if lp is None:
            continue
        values.append(float(lp))
        token = get("token")
        if texts is not None:
            if isinstance(token, str):
                texts.append(token)
            else:
                texts = None
    return (values or None), (texts if values and texts is not None else None)
