"""What ``Prompter.optimize()`` returns: :class:`OptimizationResult` (scores, states, usage, the decision)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._render import Demo, PromptState
from ..persist.state import ImageFiles, state_from_json, state_to_json

if TYPE_CHECKING:
    from .report import EvaluationReport

__all__ = ["OptimizationResult"]


@dataclass
class OptimizationResult:
    """What :meth:`Prompter.optimize` returns (and stores as ``prompter.optimization_result``).

    Scores are measured on the held-out validation split, which no optimizer ever saw: ``baseline_*``
    for the prompts the Prompter had, given the same number of few-shot demos the candidate may use
    (plain labelled training examples; see ``baseline_state``), ``candidate_*`` for the best candidate
    the optimizer found, rendered exactly as it is served. ``accepted`` says whether the candidate beat
    the baseline and was adopted; if not the Prompter keeps its original prompts (``state``), or, with
    ``fallback="baseline"``, serves the baseline exactly as it was scored.

    Usage counts this run only: ``lm_calls`` are real LM calls (cache hits in ``cache_hits``),
    ``requests`` is both (what ``max_lm_calls`` limits), tokens are those of real calls and
    ``estimated_cost_usd`` their price where the model's price is known (``None`` otherwise).

    ``validated`` is False when nothing could be scored on held-out examples (``optimize()`` got a single
    example and no ``valset``): the scores are then NaN, never made up, and ``message`` says so.
    """

    baseline_score: float
    optimized_score: float
    accepted: bool
    message: str
    optimizer: str
    optimizer_reason: str
    state: PromptState
    baseline_state: PromptState
    candidate_state: PromptState | None
    candidate_score: float | None
    baseline_per_field: dict[str, float]
    candidate_per_field: dict[str, float]
    n_train: int
    n_val: int
    n_examples: int
    lm_calls: int
    requests: int
    cache_hits: int
    prompt_tokens: int
    completion_tokens: int
    estimated_cost_usd: float | None
    wall_time_s: float
    budget_exhausted: bool = False
    seed: int = 0
    stages: list[str] = field(default_factory=list)
    demo_budget: int = 0
    field_descriptions_before: dict[str, str] = field(default_factory=dict)
    baseline_report: EvaluationReport | None = field(default=None, repr=False)
    candidate_report: EvaluationReport | None = field(default=None, repr=False)
    #: the original prompts as they were, scored on the same validation split when the baseline had demos
    #: they lack (``compare_original=True``); ``None`` when baseline and original are the same prompts
    original_score: float | None = None
    original_per_field: dict[str, float] = field(default_factory=dict)
    original_report: EvaluationReport | None = field(default=None, repr=False)
    #: False when there was no held-out validation at all (one example, no valset): scores are NaN
    validated: bool = True
    #: the field-confidence calibrator fitted on the validation outcomes of the served prompts
    #: (a :class:`dspydantic.confidence.CalibrationReport`), and a line saying what was done
    calibration: Any = field(default=None, repr=False)
    calibration_note: str | None = None
    #: the candidate against the baseline, validation example by example (a :class:`~dspydantic.optimize.
    #: decision.Paired`: mean difference, its standard error, higher/lower counts); ``None`` when the candidate
    #: was not scored or is the baseline or the original prompts themselves
    difference: Any = field(default=None, repr=False)

    # -- the adopted prompts (dspydantic 0.1 names) --------------------------------------------------
    @property
    def optimized_descriptions(self) -> dict[str, str]:
        """Every field path's description in the adopted prompts."""
        return dict(self._descriptions(self.state))

    @property
    def optimized_system_prompt(self) -> str | None:
        return self.state.system_prompt

    @property
    def optimized_instruction_prompt(self) -> str | None:
        return self.state.instruction_prompt

    @property
    def optimized_demos(self) -> list[dict[str, Any]]:
        """The adopted demos: ours (``input``/``output``) and 0.1's keys (``input_data``/``expected_output``)."""
        from .._compat import legacy_demo_json

        return [{**d.to_json(), **legacy_demo_json(d)} for d in self.state.demos]

    @property
    def demos(self) -> tuple[Demo, ...]:
        return self.state.demos

    @property
    def per_field_before(self) -> dict[str, float]:
        return dict(self.baseline_per_field)

    @property
    def per_field_after(self) -> dict[str, float]:
        """Per-field scores of what the prompter serves now (the baseline's when that was not scored)."""
        if self.accepted:
            return dict(self.candidate_per_field)
        if self.state != self.baseline_state and self.original_per_field:
            return dict(self.original_per_field)
        return dict(self.baseline_per_field)

    @property
    def improvement(self) -> float:
        return self.optimized_score - self.baseline_score

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def api_calls(self) -> int:
        """dspydantic 0.1's name for :attr:`lm_calls` (the LM calls this run made; cache hits excluded)."""
        return self.lm_calls

    @property
    def metrics(self) -> dict[str, Any]:
        """A flat dict of the numbers (dspydantic 0.1 had ``metrics``; its keys are here too)."""
        base = self.baseline_score
        return {
            "average_score": self.optimized_score,
            "improvement_percent": self.improvement / base * 100 if base == base and base > 0 else 0.0,
            "validation_size": self.n_val,
            "training_size": self.n_train,
            "validated": self.validated,
            "baseline_score": self.baseline_score,
            "optimized_score": self.optimized_score,
            "candidate_score": self.candidate_score,
            "original_score": self.original_score,
            "improvement": self.improvement,
            "accepted": self.accepted,
            "optimizer": self.optimizer,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "lm_calls": self.lm_calls,
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "estimated_cost_usd": self.estimated_cost_usd,
            "wall_time_s": self.wall_time_s,
            "budget_exhausted": self.budget_exhausted,
        }

    # -- persistence (``Prompter.save`` stores ``to_json()`` as report.json) ------------------------------
    FORMAT = "dspydantic.optimization_result/1"

    def to_json(self, images: ImageFiles | None = None) -> dict[str, Any]:
        """A JSON-safe dict of everything but the per-example reports (prompt states by the one codec of
        :mod:`dspydantic.persist.state`; with ``images``, demo images become files there)."""
        out: dict[str, Any] = {"format": self.FORMAT}
        for name in (
            "baseline_score", "optimized_score", "accepted", "message", "optimizer", "optimizer_reason",
            "candidate_score", "baseline_per_field", "candidate_per_field", "n_train", "n_val", "n_examples",
            "lm_calls", "requests", "cache_hits", "prompt_tokens", "completion_tokens", "estimated_cost_usd",
            "wall_time_s", "budget_exhausted", "seed", "stages", "demo_budget", "field_descriptions_before",
            "original_score", "original_per_field", "validated",
        ):
            value = getattr(self, name)
            if isinstance(value, float) and value != value:  # NaN is not JSON
                value = None
            out[name] = value
        for name in ("state", "baseline_state", "candidate_state"):
            st = getattr(self, name)
            out[name] = state_to_json(st, images, name) if st is not None else None
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], images: Mapping[str, bytes] | None = None) -> OptimizationResult:
        """Rebuild from :meth:`to_json` output (raises ``ValueError`` on anything else); demo image files
        are taken from ``images`` (relative path -> bytes)."""
        if not isinstance(data, Mapping) or data.get("format") != cls.FORMAT:
            raise ValueError("not a dspydantic optimization result")
        kw = {k: v for k, v in data.items() if k != "format"}
        for name in ("baseline_score", "optimized_score"):
            if kw.get(name) is None:
                kw[name] = float("nan")
        for name in ("state", "baseline_state", "candidate_state"):
            kw[name] = state_from_json(kw[name], images) if kw.get(name) is not None else None
        if kw.get("state") is None or kw.get("baseline_state") is None:
            raise ValueError("an optimization result needs its state and baseline_state")
        return cls(**kw)

    def _descriptions(self, state: PromptState) -> Mapping[str, str]:
        return {**self.field_descriptions_before, **dict(state.field_descriptions)}

    def summary(self) -> str:
        verdict = "accepted" if self.accepted else "not accepted"
        if not self.validated:
            return f"{self.optimizer}: not validated (no held-out example); {self.message}"
        lines = [
            f"{self.optimizer}: baseline {self.baseline_score:.3f} -> candidate "
            + (f"{self.candidate_score:.3f}" if self.candidate_score is not None else "n/a")
            + (f", original prompts {self.original_score:.3f}" if self.original_score is not None else "")
            + f" ({verdict}); train {self.n_train}, validation {self.n_val}",
            f"{self.lm_calls} LM calls ({self.cache_hits} cache hits), {self.prompt_tokens} prompt + "
            f"{self.completion_tokens} completion tokens"
            + (f", ~${self.estimated_cost_usd:.4f}" if self.estimated_cost_usd is not None else "")
            + f", {self.wall_time_s:.1f} s" + (" (budget exhausted)" if self.budget_exhausted else ""),
            self.message,
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
