"""Typed results of an extraction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)


@dataclass(slots=True)
class Usage:
    """LM usage of one extraction, summed over re-asks (or of a whole run).

    ``cost_usd`` is the price of the tokens from LiteLLM's bundled price table (``dspydantic._cost``), set
    when an extraction finishes; ``None`` when the model's price is unknown. Summed by :meth:`add` over the
    parts whose price is known (``None`` only when no part's is).
    """

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0
    cost_usd: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cache_hits += other.cache_hits
        if other.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + other.cost_usd


@dataclass(slots=True)
class ExtractionResult(Generic[T]):
    """What ``predict_with_confidence`` returns.

    ``confidence`` is in [0, 1]. Without token log-probabilities it is derived from how the answer was
    obtained: 1.0 when the first answer validated, lowered by 0.25 per re-ask that was needed. With
    log-probabilities (local model, or a provider that returns them) it is the geometric mean probability of
    the generated tokens, multiplied by the same re-ask factor.
    """

    data: T
    confidence: float
    raw_output: str
    usage: Usage = field(default_factory=Usage)
    attempts: int = 1
    cached: bool = False
    confidence_source: str = "attempts"
    field_confidences: dict[str, float] = field(default_factory=dict)
    spans: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
