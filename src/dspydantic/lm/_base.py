"""The small protocol every LM backend implements (sync + async call, usage, logprobs, headers)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import orjson

from ..errors import ConfigurationError
from .settings import DEFAULT_SETTINGS, ModelSettings


@dataclass(frozen=True, slots=True)
class LMRequest:
    """One chat completion request, provider-neutral.

    ``messages`` are OpenAI chat messages; ``content`` is a string or a list of OpenAI content parts
    (``{"type": "text", ...}``, ``{"type": "image_url", ...}``). ``json_schema`` is the JSON schema the
    answer must follow (``None``: free text). ``schema_name`` names it for providers that want a name.
    ``settings`` are the sampling settings (temperature, max_tokens, top_p, seed, ...).
    """

    messages: list[dict[str, Any]]
    json_schema: dict[str, Any] | None = None
    schema_name: str = "output"
    settings: ModelSettings = DEFAULT_SETTINGS
    logprobs: bool = False
    _wire: list[bytes] = field(default_factory=list, init=False, repr=False, compare=False)

    @property
    def temperature(self) -> float | None:
        return self.settings.temperature

    @property
    def max_tokens(self) -> int | None:
        return self.settings.max_tokens

    def with_settings(self, **changes: Any) -> LMRequest:
        return replace(self, settings=self.settings.replace(**changes))

    def messages_json(self) -> bytes:
        """The messages as compact JSON, encoded once per request (the body and the cache key share it).

        Text that is not valid Unicode (a lone surrogate such as ``"\\udcff"``) is a :class:`ConfigurationError`.
        """
        if not self._wire:
            try:
                # copied to its size: orjson's bytes keep their whole (>= 8 KB) write buffer, and a batch
                # holds one per request in flight
                self._wire.append(bytes(memoryview(orjson.dumps(self.messages))))
            except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
                raise ConfigurationError(_encode_problem(exc)) from None
        return self._wire[0]


def _encode_problem(exc: Exception) -> str:
    text = str(exc)
    if "surrogates" in text or "utf-8" in text.lower():
        return (
            "the request holds text that is not valid Unicode (a lone surrogate such as '\\udcff', typically from "
            "bytes decoded with errors='surrogateescape'); clean the input first, e.g. "
            "text.encode('utf-8', 'replace').decode('utf-8')"
        )
    return f"the request cannot be encoded as JSON: {text}"


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
    #: where the model decided each choice field (enum, boolean): field path -> JSON value -> its natural-log
    #: probability there, when the backend decodes with logits (the local one; see :mod:`dspydantic._choices`)
    choice_logprobs: dict[str, dict[str, float]] | None = None
    #: response headers of the HTTP call (lower-cased names), when there was one
    headers: dict[str, str] = field(default_factory=dict)
    #: served by the cache layer (no LM call was made)
    cached: bool = False
    #: set by the cache layer: stores this answer once the extraction plan has validated it
    on_valid: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def confirm(self) -> None:
        """The answer parsed and validated: layers may now keep it (the cache stores only such answers)."""
        hook, self.on_valid = self.on_valid, None
        if hook is not None:
            hook()


@runtime_checkable
class LMBackend(Protocol):
    """A backend. ``cache_id`` identifies endpoint + model + default settings (never a secret) for cache keys."""

    @property
    def cache_id(self) -> str: ...

    @property
    def context_window(self) -> int | None: ...

    def complete(self, request: LMRequest) -> LMResponse: ...

    async def acomplete(self, request: LMRequest) -> LMResponse: ...

    def close(self) -> None: ...


def chat_params(request: LMRequest, *, structured: str = "json_schema") -> dict[str, Any]:
    """The OpenAI chat-completions parameters of a request besides model, messages and ``extra_body``
    (every backend that speaks that dialect builds its call from this). ``structured``: ``"json_schema"``,
    ``"json_object"`` or ``"none"``."""
    params: dict[str, Any] = dict(request.settings.params)
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
