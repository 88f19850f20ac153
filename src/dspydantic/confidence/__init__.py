"""Per-field confidence and source grounding.

* :mod:`.grounding` — where a string value occurs in the source (exact, normalized, fuzzy), in code points;
* :mod:`.signals` — the evidence per field and its documented combination (:func:`combine`);
* :mod:`.assess` / :mod:`.answer` — the confidence step of the extraction plan;
* :mod:`.calibration` / :mod:`.fit` — calibrators fitted on held-out labelled data, as JSON;
* :mod:`.metrics` — AUROC, expected calibration error, reliability diagram;
* :mod:`.review` — the HTML review page (``render_review_html``).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "CalibrationReport": ".fit",
    "Calibrator": ".calibration",
    "fit_calibrator": ".calibration",
    "FieldSignals": ".signals",
    "combine": ".signals",
    "Grounding": ".grounding",
    "absent_fields": ".assess",
    "ground": ".grounding",
    "auroc": ".metrics",
    "expected_calibration_error": ".metrics",
    "reliability_diagram": ".metrics",
    "render_review_html": ".review",
}

__all__ = [
    "CalibrationReport",
    "Calibrator",
    "FieldSignals",
    "Grounding",
    "absent_fields",
    "auroc",
    "combine",
    "expected_calibration_error",
    "fit_calibrator",
    "ground",
    "reliability_diagram",
    "render_review_html",
]


def __getattr__(name: str) -> Any:
    # lazily: the extraction plan imports only what it needs (``import dspydantic`` stays fast)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dspydantic.confidence' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)
