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


def signal_for(path: str, signals: Mapping[str, Any]) -> tuple[str, FieldSignals] | None:
    """(path, signals) of ``path`` or, when the answer did not reach it (``address.city`` under a null
    ``address``), of its nearest ancestor that it did."""
    p = path
    while p:
        s = signals.get(p)
        if isinstance(s, FieldSignals):
            return p, s
        if isinstance(s, dict):
            return p, FieldSignals.from_json(s)
        cut = max(p.rfind("."), p.rfind("["), p.rfind("{"))
        if cut <= 0:
            return None
        p = p[:cut]
    return None


@dataclass
class CalibrationData:
    """One point per scored field: its signals, its field path, and whether it was right (1.0) or not."""

    signals: list[FieldSignals] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    skipped: int = 0


def calibration_pairs(outcomes: Sequence[Any]) -> CalibrationData:
    """The calibration points of scored outcomes (:class:`dspydantic.optimize.report.ExampleOutcome` with
    their ``result``); ``skipped`` counts the examples without per-field signals."""
    out = CalibrationData()
    for o in outcomes:
        result = getattr(o, "result", None)
        if result is None or not result.field_signals:
            out.skipped += 1
            continue
        for path, score in o.score.fields.items():
            found = signal_for(path, result.field_signals)
            if found is not None:
                out.paths.append(found[0])
                out.signals.append(found[1])
                out.labels.append(1.0 if score >= 1.0 - 1e-9 else 0.0)
    return out


def fit_from_outcomes(outcomes: Sequence[Any], method: str = "auto") -> CalibrationReport:
    data = calibration_pairs(outcomes)
    cal = fit_calibrator(data.signals, data.labels, method, paths=data.paths)  # type: ignore[arg-type]
    before = [s.raw for s in data.signals]
    after = [cal.predict(s, p) for s, p in zip(data.signals, data.paths, strict=True)]
    return CalibrationReport(
        calibrator=cal,
        n_examples=len(outcomes) - data.skipped,
        n_fields=len(data.signals),
        positives=cal.positives,
        auroc=auroc(after, data.labels),
        ece_before=expected_calibration_error(before, data.labels),
        ece_after=expected_calibration_error(after, data.labels),
        skipped=data.skipped,
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
