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

    ``field_confidences`` maps each field path (``vendor``, ``address.city``, ``items[].name``; a list's
    items pooled under one path) to a confidence in [0, 1] built from that field's own evidence: the
    probabilities of the tokens of its value (with token log-probabilities), whether its string values occur
    in the source, the re-asks the answer needed, and — opt-in — agreement across extra samples. Without a
    calibrator that number is a documented combination (:func:`dspydantic.confidence.combine`); after
    ``Prompter.calibrate(...)`` or ``optimize()`` it is calibrated on held-out labelled data
    (``calibrated`` is True). ``confidence`` is the **lowest** field confidence.

    ``spans`` maps a field path to the ``(start, end)`` code-point offsets where its string values occur in
    the source text; ``ungrounded`` lists the fields with a string value the source does not contain (a
    likely hallucination). ``field_signals`` holds the raw evidence per field (what a calibrator is fitted
    on).
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
    ungrounded: list[str] = field(default_factory=list)
    #: path -> :class:`dspydantic.confidence.FieldSignals`
    field_signals: dict[str, Any] = field(default_factory=dict)
    calibrated: bool = False
