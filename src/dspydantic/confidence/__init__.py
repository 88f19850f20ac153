"""Per-field confidence and source grounding.

* :mod:`.grounding` — where a string value occurs in the source (exact, normalized, fuzzy), in code points;
* :mod:`.signals` — the evidence per field and its documented combination (:func:`combine`);
* :mod:`.assess` / :mod:`.answer` — the confidence step of the extraction plan;
* :mod:`.calibration` / :mod:`.fit` — calibrators fitted on held-out labelled data, as JSON;
* :mod:`.metrics` — AUROC, expected calibration error, reliability diagram;
* :mod:`.review` — the HTML review page (``render_review_html``).
"""

from __future__ import annotations

from .calibration import Calibrator, fit_calibrator
from .fit import CalibrationReport
from .grounding import Grounding, ground
from .metrics import auroc, expected_calibration_error, reliability_diagram
from .review import render_review_html
from .signals import FieldSignals, combine

__all__ = [
    "CalibrationReport",
    "Calibrator",
    "FieldSignals",
    "Grounding",
    "auroc",
    "combine",
    "expected_calibration_error",
    "fit_calibrator",
    "ground",
    "reliability_diagram",
    "render_review_html",
]
