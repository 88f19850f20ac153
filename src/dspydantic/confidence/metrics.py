"""How good a confidence is: AUROC (does it rank right fields above wrong ones?), expected calibration error
(is a field at 0.8 right 80% of the time?), the reliability bins behind it, and a reliability diagram.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import ConfigurationError, MissingExtraError

__all__ = ["Bin", "auroc", "brier", "expected_calibration_error", "reliability_bins", "reliability_diagram"]


def _check(scores: Sequence[float], labels: Sequence[float | bool]) -> list[tuple[float, float]]:
    if len(scores) != len(labels):
        raise ConfigurationError(f"got {len(scores)} scores but {len(labels)} labels")
    return [(float(s), 1.0 if float(y) >= 0.5 else 0.0) for s, y in zip(scores, labels, strict=True)]


def auroc(scores: Sequence[float], labels: Sequence[float | bool]) -> float:
    """Area under the ROC curve: the probability that a random right field scores above a random wrong one
    (ties count half). Labels >= 0.5 are "right". NaN when either class is missing."""
    pairs = _check(scores, labels)
    pos = sum(1 for _, y in pairs if y)
    neg = len(pairs) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    ordered = sorted(pairs)
    rank_sum = 0.0
    i = 0
    while i < len(ordered):  # average ranks over ties (Mann-Whitney U)
        j = i
        while j + 1 < len(ordered) and ordered[j + 1][0] == ordered[i][0]:
            j += 1
        avg_rank = (i + j) / 2 + 1
        rank_sum += avg_rank * sum(1 for k in range(i, j + 1) if ordered[k][1])
        i = j + 1
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


@dataclass(frozen=True, slots=True)
class Bin:
    lo: float
    hi: float
    count: int
    confidence: float  # mean confidence in the bin
    accuracy: float  # fraction right in the bin


def reliability_bins(scores: Sequence[float], labels: Sequence[float | bool], n_bins: int = 10) -> list[Bin]:
    """Equal-width confidence bins over [0, 1] (empty bins included, with count 0)."""
    if n_bins < 1:
        raise ConfigurationError("n_bins must be >= 1")
    pairs = _check(scores, labels)
    sums = [[0.0, 0.0, 0] for _ in range(n_bins)]
    for s, y in pairs:
        k = min(n_bins - 1, max(0, int(s * n_bins)))
        sums[k][0] += s
        sums[k][1] += y
        sums[k][2] += 1
    out = []
    for k, (cs, ys, c) in enumerate(sums):
        c = int(c)
        out.append(Bin(k / n_bins, (k + 1) / n_bins, c, cs / c if c else 0.0, ys / c if c else 0.0))
    return out


def expected_calibration_error(scores: Sequence[float], labels: Sequence[float | bool], n_bins: int = 10) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width bins."""
    bins = reliability_bins(scores, labels, n_bins)
    n = sum(b.count for b in bins)
    return sum(b.count * abs(b.accuracy - b.confidence) for b in bins) / n if n else float("nan")


def brier(scores: Sequence[float], labels: Sequence[float | bool]) -> float:
    """Mean squared error of the confidence against right (1) / wrong (0)."""
    pairs = _check(scores, labels)
    return sum((s - y) ** 2 for s, y in pairs) / len(pairs) if pairs else float("nan")


_COLOURS = ((214, 39, 40), (31, 119, 180), (44, 160, 44), (255, 127, 14))


def reliability_diagram(
    path: str | os.PathLike[str],
    series: Mapping[str, tuple[Sequence[float], Sequence[float | bool]]],
    *,
    n_bins: int = 10,
    title: str = "Reliability of field confidence",
    size: int = 560,
) -> None:
    """Write a reliability diagram PNG: for each named series of (confidences, right/wrong), the fraction
    right per confidence bin (dot area ~ count) against the diagonal of perfect calibration, with the ECE
    in the legend. Drawn with Pillow (``pip install 'dspydantic[plots]'``)."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as exc:
        raise MissingExtraError("plots", "pillow") from exc
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, top, right, bottom = 60, 40, size - 20, size - 60
    w, h = right - left, bottom - top

    def xy(conf: float, acc: float) -> tuple[float, float]:
        return left + conf * w, bottom - acc * h

    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    for k in range(11):
        t = k / 10
        x, y = xy(t, t)
        draw.line((x, bottom, x, bottom + 4), fill=(0, 0, 0))
        draw.line((left - 4, y, left, y), fill=(0, 0, 0))
        draw.text((x - 8, bottom + 8), f"{t:.1f}", fill=(0, 0, 0), font=font)
        draw.text((left - 34, y - 6), f"{t:.1f}", fill=(0, 0, 0), font=font)
        if 0 < k < 10:
            draw.line((x, top, x, bottom), fill=(235, 235, 235))
            draw.line((left, y, right, y), fill=(235, 235, 235))
    draw.line((*xy(0, 0), *xy(1, 1)), fill=(150, 150, 150), width=1)
    draw.text((left + w // 2 - 40, bottom + 28), "confidence", fill=(0, 0, 0), font=font)
    draw.text((8, top - 24), "fraction right", fill=(0, 0, 0), font=font)
    draw.text((left, 8), title, fill=(0, 0, 0), font=font)
    for i, (name, (scores, labels)) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        bins = [b for b in reliability_bins(scores, labels, n_bins) if b.count]
        total = sum(b.count for b in bins) or 1
        points = [xy(b.confidence, b.accuracy) for b in bins]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for b, (x, y) in zip(bins, points, strict=True):
            r = 3 + 12 * (b.count / total) ** 0.5
            draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=2)
        ece = expected_calibration_error(scores, labels, n_bins)
        ly = top + 10 + 16 * i
        draw.line((left + 10, ly + 6, left + 30, ly + 6), fill=colour, width=3)
        draw.text((left + 36, ly), f"{name}  (ECE {ece:.3f}, n={len(scores)})", fill=(0, 0, 0), font=font)
    img.save(os.fspath(path), format="PNG")
