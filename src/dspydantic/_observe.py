"""What happens when an extraction finishes: its cost goes on the usage, one structured log record is
written, and registered hooks (metrics, tracing: leaves under ``dspydantic.integrations``) are told.

The Prompter's two drivers wrap each extraction in :class:`extraction` (``with extraction(p) as obs: ...
return obs.finish(result)``). With logging of ``dspydantic.extraction`` off and no hook registered, that
costs a ``perf_counter()`` and a price lookup from a per-process dict.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from ._cost import cost_usd
from ._result import ExtractionResult, Usage

log = logging.getLogger("dspydantic.extraction")


@dataclass(slots=True)
class ExtractionEvent:
    """One finished extraction (``result`` or ``error`` is set)."""

    prompter: Any
    name: str
    model_id: str | None
    latency: float
    result: ExtractionResult[Any] | None = None
    error: BaseException | None = None

    @property
    def usage(self) -> Usage | None:
        if self.result is not None:
            return self.result.usage
        usage = getattr(self.error, "usage", None)
        return usage if isinstance(usage, Usage) else None

    def fields(self) -> dict[str, Any]:
        """The structured fields of the log record."""
        out: dict[str, Any] = {
            "prompter": self.name,
            "model_id": self.model_id,
            "outcome": "ok" if self.error is None else "error",
            "latency_s": round(self.latency, 6),
        }
        if self.result is not None:
            out.update(confidence=self.result.confidence, attempts=self.result.attempts, cache_hit=self.result.cached)
        else:
            out.update(error_type=type(self.error).__name__, attempts=getattr(self.error, "attempts", None))
        usage = self.usage
        if usage is not None:
            out.update(
                lm_calls=usage.calls, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                cache_hits=usage.cache_hits, cost_usd=usage.cost_usd,
            )
        return out


class Hook(Protocol):
    """Told about every extraction: ``start`` when it begins (its return value is handed back to ``finish``)."""

    def start(self, prompter: Any) -> Any: ...

    def finish(self, token: Any, event: ExtractionEvent) -> None: ...


_hooks: tuple[Hook, ...] = ()


def add_hook(hook: Hook) -> None:
    global _hooks
    if hook not in _hooks:
        _hooks = (*_hooks, hook)


def remove_hook(hook: Hook) -> None:
    global _hooks
    _hooks = tuple(h for h in _hooks if h is not hook)


def prompter_name(prompter: Any) -> str:
    name = getattr(prompter, "name", None)
    return name if isinstance(name, str) and name else prompter.model.__name__


class extraction:
    """Brackets one extraction (see the module docs)."""

    __slots__ = ("_done", "_started", "_tokens", "prompter")

    def __init__(self, prompter: Any) -> None:
        self.prompter = prompter
        self._done = False
        self._tokens: list[tuple[Hook, Any]] = []

    def __enter__(self) -> extraction:
        self._started = time.perf_counter()
        for hook in _hooks:
            try:
                self._tokens.append((hook, hook.start(self.prompter)))
            except Exception as exc:  # an observer never breaks an extraction
                log.debug("extraction hook %r failed to start: %r", hook, exc)
        return self

    @property
    def observed(self) -> bool:
        """Whether anything will see this extraction's result (a hook, or the ``dspydantic.extraction``
        log at INFO): decided when it starts."""
        return bool(self._tokens) or log.isEnabledFor(logging.INFO)

    def finish(self, result: ExtractionResult[Any]) -> ExtractionResult[Any]:
        self._end(result, None)
        return result

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None and not self._done:
            self._end(None, exc)

    def _end(self, result: ExtractionResult[Any] | None, error: BaseException | None) -> None:
        self._done = True
        latency = time.perf_counter() - self._started
        prompter = self.prompter
        model_id = getattr(prompter, "model_id", None)
        usage = result.usage if result is not None else getattr(error, "usage", None)
        if isinstance(usage, Usage) and usage.cost_usd is None:
            usage.cost_usd = cost_usd(model_id, usage.prompt_tokens, usage.completion_tokens)
        logging_on = log.isEnabledFor(logging.INFO)
        if not logging_on and not self._tokens:
            return
        event = ExtractionEvent(prompter, prompter_name(prompter), model_id, latency, result, error)
        if logging_on:
            fields = event.fields()
            if error is None:
                log.info(
                    "extracted %s: confidence %.3f, %d LM call(s), %.1f ms", event.name, fields["confidence"],
                    fields.get("lm_calls", 0), latency * 1000, extra=fields,
                )
            else:
                log.warning(
                    "extraction with %s failed after %.1f ms: %s: %s", event.name, latency * 1000,
                    type(error).__name__, error, extra=fields,
                )
        for hook, token in self._tokens:
            try:
                hook.finish(token, event)
            except Exception as exc:
                log.debug("extraction hook %r failed: %r", hook, exc)
