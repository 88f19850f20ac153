"""The budget door of an optimization: every LM request of a run goes through one budgeted :class:`Gateway`.

No DSPy import here: ``Prompter.evaluate()`` uses the gateway too (its judge goes through the Prompter's
cache and retries), and :mod:`.bridge` puts a ``dspy.LM`` face on it for the DSPy optimizers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._render import PromptState
from .._tokens import estimate_message_tokens, estimate_tokens
from ..errors import ConfigurationError
from ..lm._base import LMBackend, LMRequest, LMResponse
from ..lm.layers import Budget, BudgetedBackend, BudgetExhausted
from ..lm.settings import ModelSettings

if TYPE_CHECKING:
    from .._prompter import Prompter

__all__ = ["Budget", "BudgetExhausted", "Gateway", "budgeted_prompter", "external_target"]


class Gateway:
    """The one door to the LM during a run: a :class:`~dspydantic.lm.layers.BudgetedBackend` (``lm``) over the
    Prompter's own stack (cache + retries), or over another LM (``target``: a user's ``reflection_lm`` /
    ``prompt_model``, counted against the same budget but bypassing the Prompter's cache).

    ``vary=True`` (proposer prompts) gives the k-th identical request at temperature > 0 the sampling
    ``seed`` k, so that with the Prompter's cache on, n proposals are n different cached answers while a
    rerun still replays them in the same order.
    """

    def __init__(
        self,
        prompter: Prompter,
        budget: Budget,
        on_call: Callable[[dict[str, Any]], None] | None = None,
        target: Callable[[LMRequest], LMResponse] | None = None,
    ) -> None:
        self.prompter = prompter
        self.budget = budget
        self.on_call = on_call
        self.target = target
        inner: LMBackend = _TargetBackend(target) if target is not None else prompter._lm
        #: the budgeted backend: what a budgeted prompter's plan and the LLM judge call
        self.lm = BudgetedBackend(inner, budget, on_call=on_call)
        self._seen: dict[str, int] = {}
        self._seen_lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self.lm.closed

    def close(self, wait: float = 120.0) -> None:
        """Refuse every further request (raises :class:`BudgetExhausted` in whoever still calls) and wait
        up to ``wait`` seconds for the requests already sent (by worker threads an optimizer left running)."""
        self.lm.shut(wait)

    def call(self, request: LMRequest, *, vary: bool = False) -> LMResponse:
        if vary and self.prompter.cache is not None and (request.temperature or 0) > 0:
            key = hashlib.sha256(
                json.dumps([request.messages, request.temperature], sort_keys=True, default=str).encode()
            ).hexdigest()
            with self._seen_lock:
                k = self._seen.get(key, 0)
                self._seen[key] = k + 1
            if k:
                request = request.with_settings(seed=k)
        return self.lm.complete(request)

    def complete_text(
        self,
        messages: list[dict[str, Any]],
        *,
        temperature: float | None = None,
        json_schema: dict[str, Any] | None = None,
        max_tokens: int | None = None,
    ) -> str:
        """A completion for a reflection or proposer prompt: free text, or JSON following ``json_schema``
        (constrained decoding where the backend has it); ``max_tokens`` defaults to the Prompter's."""
        request = LMRequest(
            messages=messages,
            json_schema=json_schema,
            schema_name="proposal",
            settings=ModelSettings(
                temperature=temperature,
                max_tokens=max_tokens if max_tokens is not None else self.prompter.max_tokens,
            ),
        )
        response = self.call(request, vary=True)
        response.confirm()  # a proposal is free text: any answer is a usable one (the cache may keep it)
        return response.text


class _TargetBackend:
    """A proposal LM (a callable ``LMRequest -> LMResponse``) as a backend, for the budget layer."""

    cache_id = "external"
    context_window: int | None = None

    def __init__(self, fn: Callable[[LMRequest], LMResponse]) -> None:
        self.fn = fn

    def complete(self, request: LMRequest) -> LMResponse:
        return self.fn(request)

    async def acomplete(self, request: LMRequest) -> LMResponse:
        return await asyncio.to_thread(self.fn, request)

    def close(self) -> None:
        return None


def external_target(lm: Any) -> Callable[[LMRequest], LMResponse]:
    """A user's proposal LM as a gateway target: an :class:`~dspydantic.lm.LMBackend`, a ``dspy.LM``
    (called with the messages; usage read from its history when it reports it) or a plain callable
    ``str -> str`` (given the messages' text)."""
    if hasattr(lm, "complete") and hasattr(lm, "cache_id"):  # an LMBackend
        return lambda request: lm.complete(request)
    if hasattr(lm, "forward") or hasattr(lm, "kwargs"):  # a dspy.LM

        def call_dspy(request: LMRequest) -> LMResponse:
            kwargs: dict[str, Any] = {}
            if request.temperature is not None:
                kwargs["temperature"] = request.temperature
            if request.settings.seed is not None:
                kwargs["rollout_id"] = request.settings.seed
            out = lm(messages=request.messages, **kwargs)
            first = out[0] if isinstance(out, list) and out else out
            text = str(first.get("text", "") if isinstance(first, dict) else first)
            usage: Mapping[str, Any] = {}
            history = getattr(lm, "history", None)
            if isinstance(history, list) and history and isinstance(history[-1], Mapping):
                usage = history[-1].get("usage") or {}
            return LMResponse(
                text=text,
                prompt_tokens=int(usage.get("prompt_tokens") or estimate_message_tokens(request.messages)),
                completion_tokens=int(usage.get("completion_tokens") or estimate_tokens(text)),
            )

        return call_dspy
    if callable(lm):

        def call_plain(request: LMRequest) -> LMResponse:
            text = str(lm("\n\n".join(str(m.get("content", "")) for m in request.messages)))
            return LMResponse(
                text=text,
                prompt_tokens=estimate_message_tokens(request.messages),
                completion_tokens=estimate_tokens(text),
            )

        return call_plain
    raise ConfigurationError(f"reflection_lm / prompt_model must be a dspy.LM, an LMBackend or a callable, got {lm!r}")


def budgeted_prompter(prompter: Prompter, state: PromptState, gateway: Gateway) -> Prompter:
    """A copy of ``prompter`` serving ``state`` whose LM stack is the gateway's budgeted one.

    It runs the Prompter's own extraction plan (renderer, re-asks, validation): a candidate is scored
    exactly as it will be served.
    """
    return prompter._derive(state=state, lm=gateway.lm)
