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


@runtime_checkable
class LMBackend(Protocol):
    """A backend. ``cache_id`` identifies endpoint + model (never a secret) for cache keys."""

    cache_id: str
    context_window: int | None

    def complete(self, request: LMRequest) -> LMResponse: ...

    async def acomplete(self, request: LMRequest) -> LMResponse: ...

    def close(self) -> None: ...
