"""Fitting a prompter's calibrator on held-out labelled examples (``Prompter.calibrate`` and the end of
``optimize()``).

Each scored field of each example is one data point: its signals (from the extraction, as served) and
whether it was right (its score under the evaluator is 1.0; a partly right list counts as wrong). Examples
whose extraction failed have no confidence to calibrate and are skipped, as are results merged from
chunks of a long document (their per-field signals are not kept).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from .calibration import Calibrator, fit_calibrator
from .metrics import auroc, expected_calibration_error
from .signals import FieldSignals

if TYPE_CHECKING:
    from .._example import Example
    from .._prompter import Prompter

__all__ = ["CalibrationReport", "calibrate_prompter", "calibration_pairs", "fit_from_outcomes"]


@dataclass
class CalibrationReport:
    """What a calibration fit saw. ``auroc``/``ece_before``/``ece_after`` are measured on the same fields
    the calibrator was fitted on (in-sample: a held-out check needs another split, see
    ``bench/bench_confidence.py``)."""

    calibrator: Calibrator
    n_examples: int
    n_fields: int
    positives: int
    auroc: float
    ece_before: float
    ece_after: float
    skipped: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.calibrator.kind} calibrator on {self.n_fields} fields of {self.n_examples} examples "
            f"({self.positives} right); AUROC {self.auroc:.3f}, ECE {self.ece_before:.3f} -> {self.ece_after:.3f}"
        )


def signal_for(path: str, signals: Mapping[str, Any]) -> FieldSignals | None:
    """The signals of ``path`` or, when the answer did not reach it (``address.city`` under a null
    ``address``), of its nearest ancestor that it did."""
    p = path
    while p:
        s = signals.get(p)
        if isinstance(s, FieldSignals):
            return s
        if isinstance(s, dict):
            return FieldSignals.from_json(s)
        cut = max(p.rfind("."), p.rfind("["), p.rfind("{"))
        if cut <= 0:
            return None
        p = p[:cut]
    return None


def calibration_pairs(outcomes: Sequence[Any]) -> tuple[list[FieldSignals], list[float], int]:
    """(signals, right 1.0 / wrong 0.0, examples skipped) over scored outcomes
    (:class:`dspydantic.optimize.report.ExampleOutcome` with their ``result``)."""
    signals: list[FieldSignals] = []
    labels: list[float] = []
    skipped = 0
    for o in outcomes:
        result = getattr(o, "result", None)
        if result is None or not result.field_signals:
            skipped += 1
            continue
        for path, score in o.score.fields.items():
            s = signal_for(path, result.field_signals)
            if s is not None:
                signals.append(s)
                labels.append(1.0 if score >= 1.0 - 1e-9 else 0.0)
    return signals, labels, skipped


def fit_from_outcomes(outcomes: Sequence[Any], method: str = "auto") -> CalibrationReport:
    signals, labels, skipped = calibration_pairs(outcomes)
    cal = fit_calibrator(signals, labels, method)  # type: ignore[arg-type]
    before = [s.raw for s in signals]
    after = [cal.predict(s) for s in signals]
    return CalibrationReport(
        calibrator=cal,
        n_examples=len(outcomes) - skipped,
        n_fields=len(signals),
        positives=cal.positives,
        auroc=auroc(after, labels),
        ece_before=expected_calibration_error(before, labels),
        ece_after=expected_calibration_error(after, labels),
        skipped=skipped,
    )


def calibrate_prompter(
    prompter: Prompter,
    examples: Sequence[Example],
    *,
    method: str = "auto",
    evaluator: Any = None,
    num_threads: int = 4,
    include_fields: Sequence[str] | None = None,
    exclude_fields: Sequence[str] | None = None,
) -> CalibrationReport:
    """Run ``prompter`` on labelled ``examples``, fit a calibrator on its fields, and install it."""
    from ..optimize.report import evaluate_prompter

    if any(getattr(ex, "expected_output", None) is None for ex in examples):
        raise ConfigurationError("calibrate() needs labelled examples (expected_output) to know which fields are right")
    report = evaluate_prompter(
        prompter, examples, evaluator, num_threads=num_threads, include_fields=include_fields,
        exclude_fields=exclude_fields,
    )
    out = fit_from_outcomes(report.outcomes, method)
    prompter.calibrator = out.calibrator
    return out
