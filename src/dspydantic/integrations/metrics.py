"""Prometheus metrics of extractions and of the HTTP service (``prometheus-client``, the ``[server]`` extra).

One :class:`ExtractionMetrics` owns its registry, so several apps (or tests) in one process never share
counters. Under ``dspydantic serve --workers N`` every worker writes to the directory named by
``PROMETHEUS_MULTIPROC_DIR`` (set by ``serve``) and ``/metrics`` sums the workers.
"""

from __future__ import annotations

import os
from typing import Any

from .._result import ExtractionResult
from ..errors import MissingExtraError

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise MissingExtraError("server", "prometheus-client") from None
    return prometheus_client


class ExtractionMetrics:
    """Counters and histograms: requests by route and status, request latency, extractions by outcome, LM
    calls, tokens, cost, cache hits, errors by type and the confidence of answers, labelled by prompter (and
    by variant, for A/B routers and fallback chains)."""

    def __init__(self, namespace: str = "dspydantic") -> None:
        pc = _prometheus()
        self._pc = pc
        self.registry = pc.CollectorRegistry(auto_describe=True)
        r, ns = self.registry, namespace
        self.requests = pc.Counter("http_requests", "HTTP requests", ["route", "status"], namespace=ns, registry=r)
        self.request_latency = pc.Histogram(
            "http_request_duration_seconds", "HTTP request latency", ["route"], namespace=ns, registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.extractions = pc.Counter(
            "extractions", "finished extractions", ["prompter", "variant", "outcome"], namespace=ns, registry=r
        )
        self.extraction_latency = pc.Histogram(
            "extraction_duration_seconds", "latency of one extraction", ["prompter"], namespace=ns, registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.lm_calls = pc.Counter("lm_calls", "LM calls made (cache hits excluded)", ["prompter"],
                                   namespace=ns, registry=r)
        self.cache_hits = pc.Counter("cache_hits", "LM answers served from the cache", ["prompter"],
                                     namespace=ns, registry=r)
        self.tokens = pc.Counter("tokens", "LM tokens", ["prompter", "kind"], namespace=ns, registry=r)
        self.cost = pc.Counter("cost_usd", "price of the LM tokens where known (USD)", ["prompter"],
                               namespace=ns, registry=r)
        self.errors = pc.Counter("errors", "failed extractions by error type", ["prompter", "type"],
                                 namespace=ns, registry=r)
        self.confidence = pc.Histogram(
            "confidence", "confidence of extracted answers", ["prompter", "variant"], namespace=ns, registry=r,
            buckets=CONFIDENCE_BUCKETS,
        )

    def observe_request(self, route: str, status: int, latency: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.request_latency.labels(route).observe(latency)

    def observe_result(self, prompter: str, result: ExtractionResult[Any], latency: float | None = None) -> None:
        variant = str(result.extra.get("variant") or result.extra.get("answered_by") or "")
        self.extractions.labels(prompter, variant, "ok").inc()
        if latency is not None:
            self.extraction_latency.labels(prompter).observe(latency)
        self._usage(prompter, result.usage)
        self.confidence.labels(prompter, variant).observe(result.confidence)

    def observe_error(self, prompter: str, error: BaseException, latency: float | None = None) -> None:
        variant = str(getattr(error, "variant", "") or "")
        self.extractions.labels(prompter, variant, "error").inc()
        self.errors.labels(prompter, type(error).__name__).inc()
        if latency is not None:
            self.extraction_latency.labels(prompter).observe(latency)
        usage = getattr(error, "usage", None)
        if usage is not None and hasattr(usage, "calls"):
            self._usage(prompter, usage)

    def observe_rejection(self, prompter: str, reason: str) -> None:
        """An answer that was extracted but refused (e.g. below ``min_confidence``)."""
        self.errors.labels(prompter, reason).inc()

    def _usage(self, prompter: str, usage: Any) -> None:
        self.lm_calls.labels(prompter).inc(usage.calls)
        self.cache_hits.labels(prompter).inc(usage.cache_hits)
        self.tokens.labels(prompter, "prompt").inc(usage.prompt_tokens)
        self.tokens.labels(prompter, "completion").inc(usage.completion_tokens)
        if usage.cost_usd:
            self.cost.labels(prompter).inc(usage.cost_usd)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type (every worker's values under multiprocess mode)."""
        pc = self._pc
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = pc.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return pc.generate_latest(registry), pc.CONTENT_TYPE_LATEST
