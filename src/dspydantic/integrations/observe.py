"""Tracing with OpenTelemetry (the ``[otel]`` extra): one span per extraction and one per LM call.

    from dspydantic.integrations.observe import enable_tracing, instrument
    enable_tracing()          # every extraction of every Prompter in this process gets a span
    instrument(prompter)      # and each LM call of this prompter a child span

Spans go to the tracer provider you configured (``opentelemetry.trace.set_tracer_provider``), or to the one
passed. Without ``opentelemetry-api`` installed both are no-ops (said once in the log). Span attributes
follow the GenAI semantic conventions where they exist (``gen_ai.request.model``, ``gen_ai.usage.*``).

Structured logging needs nothing from here: every extraction writes one record to the
``dspydantic.extraction`` logger (INFO; WARNING for a failure) with the fields prompter, model_id, outcome,
confidence, latency_s, lm_calls, prompt_tokens, completion_tokens, cache_hits, cost_usd, attempts,
cache_hit (error_type on failures) as ``extra``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .. import _observe
from .._observe import ExtractionEvent

log = logging.getLogger("dspydantic")

__all__ = ["TracingBackend", "disable_tracing", "enable_tracing", "instrument"]

_SCOPE = "dspydantic"
_hook: _TracingHook | None = None


def _otel_trace() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace


class _TracingHook:
    def __init__(self, trace: Any, tracer_provider: Any = None) -> None:
        from opentelemetry import context

        self._trace = trace
        self._context = context
        self._tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)

    def start(self, prompter: Any) -> Any:
        span = self._tracer.start_span(
            "dspydantic.extract",
            attributes={
                "dspydantic.prompter": _observe.prompter_name(prompter),
                "gen_ai.request.model": str(getattr(prompter, "model_id", None) or ""),
            },
        )
        token = self._context.attach(self._trace.set_span_in_context(span))
        return span, token

    def finish(self, token: Any, event: ExtractionEvent) -> None:
        span, ctx_token = token
        try:
            for key, value in event.fields().items():
                if value is not None and key not in ("prompter", "model_id"):
                    span.set_attribute(f"dspydantic.{key}", value)
            usage = event.usage
            if usage is not None:
                span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
            if event.error is not None:
                span.record_exception(event.error)
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, type(event.error).__name__))
        finally:
            span.end()
            self._context.detach(ctx_token)


def enable_tracing(tracer_provider: Any = None) -> bool:
    """Give every extraction in this process a span; returns False (and does nothing) without OpenTelemetry."""
    global _hook
    trace = _otel_trace()
    if trace is None:
        log.info("opentelemetry-api is not installed: tracing is off (pip install 'dspydantic[otel]')")
        return False
    disable_tracing()
    _hook = _TracingHook(trace, tracer_provider)
    _observe.add_hook(_hook)
    return True


def disable_tracing() -> None:
    global _hook
    if _hook is not None:
        _observe.remove_hook(_hook)
        _hook = None


class TracingBackend:
    """An LM backend wrapper: one span per LM call (a child of the extraction's span), with the model, the
    token counts and the finish reason; the call itself is the wrapped backend's.

    :func:`instrument` makes it the Prompter's ``backend``, the bottom of its layer stack
    (``CachingBackend(RetryingBackend(TracingBackend(backend)))``): each attempt a retry makes is a span of its
    own (a failed one with its exception), an answer served by the cache is none."""

    def __init__(self, backend: Any, tracer_provider: Any = None) -> None:
        trace = _otel_trace()
        self.inner = backend
        self.cache_id = backend.cache_id  # the same answers: the cache is shared with the unwrapped backend
        self.context_window = getattr(backend, "context_window", None)
        self._trace = trace
        self._tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider) if trace is not None else None

    def __getattr__(self, name: str) -> Any:  # cheap_logprobs, body(), stats... of the wrapped backend
        if name == "inner":  # not set yet (e.g. while copying): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"TracingBackend({self.inner!r})"

    def _span(self) -> Any:
        assert self._tracer is not None
        return self._tracer.start_as_current_span(
            "dspydantic.lm_call",
            attributes={"gen_ai.system": type(self.inner).__name__, "dspydantic.backend": self.cache_id},
            record_exception=True,
        )

    @staticmethod
    def _finish(span: Any, response: Any, started: float) -> None:
        span.set_attribute("gen_ai.usage.input_tokens", response.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", response.completion_tokens)
        if response.finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [str(response.finish_reason)])
        span.set_attribute("dspydantic.latency_s", time.perf_counter() - started)

    def complete(self, request: Any) -> Any:
        if self._tracer is None:
            return self.inner.complete(request)
        with self._span() as span:
            started = time.perf_counter()
            response = self.inner.complete(request)
            self._finish(span, response, started)
            return response

    async def acomplete(self, request: Any) -> Any:
        if self._tracer is None:
            return await self.inner.acomplete(request)
        with self._span() as span:
            started = time.perf_counter()
            response = await self.inner.acomplete(request)
            self._finish(span, response, started)
            return response

    def close(self) -> None:
        self.inner.close()


def instrument(prompter: Any, tracer_provider: Any = None) -> Any:
    """Wrap ``prompter``'s backend in a :class:`TracingBackend` (once; the Prompter rebuilds its retry and cache
    layers around it); returns the prompter."""
    if not isinstance(prompter.backend, TracingBackend):
        prompter.backend = TracingBackend(prompter.backend, tracer_provider)
    return prompter
