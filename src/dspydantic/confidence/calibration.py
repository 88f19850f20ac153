"""Calibrators: map a field's signals to the probability that its value is right.

Fitted on held-out labelled data (pairs of :class:`~.signals.FieldSignals` and "the field was right"), so
that fields reported at 0.8 are right about 80% of the time on data like it. Three kinds, all plain data
and pure Python (no numpy needed for a few thousand fields):

* ``"isotonic"``: a non-decreasing map of the uncalibrated confidence (:func:`~.signals.combine`), fitted by
  pool-adjacent-violators and interpolated linearly between the pooled blocks;
* ``"platt"``: a logistic curve over the logit of the uncalibrated confidence (two parameters);
* ``"logistic"``: a logistic regression over the individual signals (value-token log-probabilities,
  grounding, null, re-asks, agreement) and, per field path seen in the fit, an offset for its values and
  one for its nulls (some fields are harder than others), L2-regularized — it learns how much each signal
  is worth, so it also *ranks* fields better than the fixed combination.

A calibrator serializes to JSON (:meth:`Calibrator.to_json`) and is checked strictly when read back
(:meth:`Calibrator.from_json` raises ``ValueError`` on anything it did not write): a saved prompter
directory may be hostile.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigurationError
from .signals import MIN_LOGPROB, FieldSignals

__all__ = ["FEATURES", "Calibrator", "features", "fit_calibrator"]

Kind = Literal["isotonic", "platt", "logistic"]
FORMAT = "dspydantic.calibrator"
FORMAT_VERSION = 1
_EPS = 1e-6

#: the signals the ``logistic`` calibrator weighs (in this order)
FEATURES = (
    "logprob",  # mean log-probability of the value tokens (else of the whole answer; 0 without any)
    "min_logprob",  # minimum log-probability of the value tokens
    "null_min_logprob",  # min_logprob of a null value (0 for a value): how sure the model was it is absent
    "first_logprob",  # log-probability of the value's first token (value or null: the decision)
    "grounded",  # a string value found in the source: 1 exactly or normalized, the fuzzy ratio, else 0
    "ungrounded",  # 1: a string value not found in the source
    "shared_span",  # 1: the value sits where another field's value does
    "null",  # 1: the value is null / empty
    "reasks",  # attempts - 1
    "agreement",  # agreement rate with the extra samples (0.5 when not sampled)
    "no_logprobs",  # 1: no token log-probabilities were available
)


def features(s: FieldSignals) -> list[float]:
    """The feature vector of :data:`FEATURES` for one field."""
    lp = s.logprob if s.logprob is not None else s.answer_logprob
    mn = s.min_logprob if s.min_logprob is not None else lp
    mn_value = max(MIN_LOGPROB, mn) if mn is not None else 0.0
    first = s.first_logprob if s.first_logprob is not None else mn
    return [
        max(MIN_LOGPROB, lp) if lp is not None else 0.0,
        mn_value,
        mn_value if s.null else 0.0,
        max(MIN_LOGPROB, first) if first is not None else 0.0,
        float(s.grounding) if s.grounding is not None and s.grounding > 0 else 0.0,
        1.0 if s.ungrounded else 0.0,
        1.0 if s.shared_span else 0.0,
        1.0 if s.null else 0.0,
        float(max(0, s.attempts - 1)),
        float(s.agreement) if s.agreement is not None else 0.5,
        1.0 if lp is None else 0.0,
    ]


def _logit(p: float) -> float:
    p = min(1 - _EPS, max(_EPS, p))
    return math.log(p / (1 - p))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True)
class Calibrator:
    """A fitted map from a field's signals to a calibrated probability (see the module docs)."""

    kind: Kind
    params: dict[str, Any]
    n: int = 0
    positives: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def predict(self, s: FieldSignals, path: str | None = None) -> float:
        """The calibrated confidence of one field (``path``: its field path), in [0, 1]."""
        if self.kind == "isotonic":
            return round(_interp(s.raw, self.params["x"], self.params["y"]), 6)
        if self.kind == "platt":
            return round(_sigmoid(self.params["a"] * _logit(s.raw) + self.params["b"]), 6)
        z = self.params["bias"] + sum(
            w * (x - m) / sd
            for w, x, m, sd in zip(
                self.params["weights"], features(s), self.params["mean"], self.params["scale"], strict=True
            )
        )
        offsets = self.params.get("paths", {}).get(path) if path is not None else None
        if offsets is not None:
            z += offsets[1] if s.null else offsets[0]
        return round(_sigmoid(z), 6)

    # -- JSON ----------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "params": self.params,
            "n": self.n,
            "positives": self.positives,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: Any) -> Calibrator:
        """Read a calibrator written by :meth:`to_json`; ``ValueError`` for anything else."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a dspydantic calibrator")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported calibrator format_version {data.get('format_version')!r}")
        kind = data.get("kind")
        params = data.get("params")
        if not isinstance(params, dict):
            raise ValueError("calibrator params must be an object")
        if kind == "isotonic":
            x, y = _floats(params.get("x"), "x"), _floats(params.get("y"), "y")
            if not x or len(x) != len(y) or any(b < a for a, b in itertools.pairwise(x)):
                raise ValueError("isotonic x must be non-empty, sorted and as long as y")
            if any(not 0.0 <= v <= 1.0 for v in y) or any(b < a for a, b in itertools.pairwise(y)):
                raise ValueError("isotonic y must be non-decreasing probabilities")
            clean: dict[str, Any] = {"x": x, "y": y}
        elif kind == "platt":
            clean = {"a": _float(params.get("a"), "a"), "b": _float(params.get("b"), "b")}
        elif kind == "logistic":
            clean = {
                "bias": _float(params.get("bias"), "bias"),
                "weights": _floats(params.get("weights"), "weights"),
                "mean": _floats(params.get("mean"), "mean"),
                "scale": _floats(params.get("scale"), "scale"),
            }
            if params.get("features", list(FEATURES)) != list(FEATURES):
                raise ValueError("calibrator features differ from this version's")
            if any(len(clean[k]) != len(FEATURES) for k in ("weights", "mean", "scale")):
                raise ValueError(f"logistic weights, mean and scale need {len(FEATURES)} values each")
            if any(v <= 0 for v in clean["scale"]):
                raise ValueError("logistic scale values must be positive")
            clean["features"] = list(FEATURES)
            paths = params.get("paths", {})
            if not isinstance(paths, dict) or len(paths) > 10_000:
                raise ValueError("logistic paths must be an object of field path -> [offset, null offset]")
            clean["paths"] = {}
            for key, pair in paths.items():
                offsets = _floats(pair, "path offsets")
                if not isinstance(key, str) or len(offsets) != 2:
                    raise ValueError("logistic paths must map a field path to [offset, null offset]")
                clean["paths"][key] = offsets
        else:
            raise ValueError(f"unknown calibrator kind {kind!r}")
        meta = data.get("meta")
        meta = {str(k): v for k, v in meta.items() if isinstance(v, (int, float, str, bool))} if isinstance(
            meta, dict
        ) else {}
        return cls(kind=kind, params=clean, n=_int(data.get("n", 0)), positives=_int(data.get("positives", 0)),
                   meta=meta)


def _float(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"calibrator {what} must be a finite number")
    return float(v)


def _floats(v: Any, what: str) -> list[float]:
    if not isinstance(v, list) or len(v) > 100_000:
        raise ValueError(f"calibrator {what} must be a list of numbers")
    return [_float(x, what) for x in v]


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError("calibrator counts must be non-negative integers")
    return v


def _interp(x: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    lo, hi = 0, len(xs) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if xs[mid] <= x:
            lo = mid
        else:
            hi = mid
    if xs[hi] == xs[lo]:
        return ys[hi]
    t = (x - xs[lo]) / (xs[hi] - xs[lo])
    return ys[lo] + t * (ys[hi] - ys[lo])


# -- fitting ------------------------------------------------------------------------------------------


def _isotonic(xs: Sequence[float], ys: Sequence[float]) -> dict[str, Any]:
    """Pool adjacent violators; returns block centres (mean x) and block means (y)."""
    pairs = sorted(zip(xs, ys, strict=True))
    blocks: list[list[float]] = []  # [sum_x, sum_y, count]
    for x, y in pairs:
        blocks.append([x, y, 1.0])
        # equal x values belong to one block
        while len(blocks) > 1 and (
            blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]
            or blocks[-2][0] / blocks[-2][2] == blocks[-1][0] / blocks[-1][2]
        ):
            sx, sy, c = blocks.pop()
            blocks[-1][0] += sx
            blocks[-1][1] += sy
            blocks[-1][2] += c
    cx = [round(b[0] / b[2], 9) for b in blocks]
    cy = [round(b[1] / b[2], 9) for b in blocks]
    return {"x": cx, "y": cy}


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (small, well-conditioned systems)."""
    n = len(b)
    m = [[*row[:], b[i]] for i, row in enumerate(a)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[p] = m[p], m[c]
        if abs(m[c][c]) < 1e-12:
            continue
        for r in range(n):
            if r != c and m[r][c] != 0.0:
                f = m[r][c] / m[c][c]
                for k in range(c, n + 1):
                    m[r][k] -= f * m[c][k]
    return [m[i][n] / m[i][i] if abs(m[i][i]) >= 1e-12 else 0.0 for i in range(n)]


def _logreg(
    rows: Sequence[Sequence[tuple[int, float]]], ys: Sequence[float], d: int, l2: float, iters: int = 50
) -> list[float]:
    """Weights (index 0: the bias, never penalized) of an L2-regularized logistic regression by Newton's
    method; ``rows`` are sparse: (feature index >= 1, value) pairs."""
    w = [0.0] * d
    xs = [[(0, 1.0), *r] for r in rows]
    for _ in range(iters):
        grad = [0.0] * d
        hess = [[0.0] * d for _ in range(d)]
        for x, y in zip(xs, ys, strict=True):
            p = _sigmoid(sum(w[i] * v for i, v in x))
            g = p - y
            h = max(p * (1 - p), 1e-9)
            for a, (i, vi) in enumerate(x):
                grad[i] += g * vi
                for j, vj in x[a:]:
                    hess[i][j] += h * vi * vj
        for i in range(d):
            for j in range(i):
                hess[i][j] = hess[j][i] = hess[i][j] + hess[j][i]
            if i > 0:
                grad[i] += l2 * w[i]
                hess[i][i] += l2
        step = _solve(hess, grad)
        w = [wi - si for wi, si in zip(w, step, strict=True)]
        if max(abs(s) for s in step) < 1e-8:
            break
    return w


def fit_calibrator(
    signals: Sequence[FieldSignals],
    correct: Sequence[float | bool],
    method: Kind | Literal["auto"] = "auto",
    *,
    paths: Sequence[str] | None = None,
    l2: float = 1.0,
) -> Calibrator:
    """Fit a calibrator on fields with known outcomes (``correct``: 1/True right, 0/False wrong; a partial
    score in between counts as that fraction of right). ``paths`` (one field path per point) lets the
    ``logistic`` calibrator learn an offset per field.

    ``method="auto"`` picks by 5-fold cross-validation on these points (contiguous folds, so the fields of
    one example stay together) the calibrator with the lowest log-loss among the logistic one with and
    without per-field offsets, isotonic and Platt; the choice and the cross-validated losses are in
    ``calibrator.meta``. Every method needs both right and wrong fields.
    """
    if paths is not None and len(paths) != len(signals):
        raise ConfigurationError(f"got {len(signals)} fields but {len(paths)} paths")
    if len(signals) != len(correct):
        raise ConfigurationError(f"got {len(signals)} fields but {len(correct)} outcomes")
    ys = [min(1.0, max(0.0, float(c))) for c in correct]
    n = len(ys)
    positives = sum(1 for y in ys if y >= 0.5)
    if n < 2 or positives in (0, n):
        raise ConfigurationError(
            f"calibration needs right and wrong fields on held-out data; got {n} field(s), {positives} right. "
            "Give more (or harder) labelled examples."
        )
    if method == "auto":
        return _auto(signals, ys, paths, l2)
    kind: Kind = method
    meta: dict[str, Any] = {}
    if kind == "isotonic":
        params = _isotonic([s.raw for s in signals], ys)
    elif kind == "platt":
        w = _logreg([[(1, _logit(s.raw))] for s in signals], ys, d=2, l2=1e-3)
        a, b = w[1], w[0]
        params = {"a": a, "b": b}
    elif kind == "logistic":
        rows = [features(s) for s in signals]
        d = len(FEATURES)
        mean = [sum(r[j] for r in rows) / n for j in range(d)]
        scale = []
        for j in range(d):
            var = sum((r[j] - mean[j]) ** 2 for r in rows) / n
            scale.append(math.sqrt(var) if var > 1e-12 else 1.0)
        names = sorted(set(paths or ()))
        column = {p: 1 + d + 2 * k for k, p in enumerate(names)}  # two offsets per path: value, null
        sparse = []
        for i, r in enumerate(rows):
            x = [(1 + j, (r[j] - mean[j]) / scale[j]) for j in range(d)]
            if paths is not None:
                x.append((column[paths[i]] + (1 if signals[i].null else 0), 1.0))
            sparse.append(x)
        w = _logreg(sparse, ys, d=1 + d + 2 * len(names), l2=l2)
        params = {
            "bias": w[0], "weights": w[1 : 1 + d], "mean": mean, "scale": scale, "features": list(FEATURES),
            "paths": {p: [w[column[p]], w[column[p] + 1]] for p in names},
        }
    else:
        raise ConfigurationError(f"method must be 'auto', 'isotonic', 'platt' or 'logistic', got {method!r}")
    return Calibrator(kind=kind, params=params, n=n, positives=positives, meta=meta)


def _log_loss(p: float, y: float) -> float:
    p = min(1 - _EPS, max(_EPS, p))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def _auto(signals: Sequence[FieldSignals], ys: Sequence[float], paths: Sequence[str] | None, l2: float) -> Calibrator:
    candidates: list[tuple[str, Kind, bool]] = [
        ("logistic+paths", "logistic", True), ("logistic", "logistic", False), ("isotonic", "isotonic", False),
        ("platt", "platt", False),
    ]
    if paths is None:
        candidates = [c for c in candidates if not c[2]]
    n, k = len(ys), 5
    losses: dict[str, float] = {}
    for name, kind, with_paths in candidates:
        total, count = 0.0, 0
        for fold in range(k):
            test = [i for i in range(n) if (i * k) // n == fold]
            train = [i for i in range(n) if (i * k) // n != fold]
            train_y = [ys[i] for i in train]
            if not test or min(train_y) == max(train_y):
                continue
            cal = fit_calibrator(
                [signals[i] for i in train], train_y, kind,
                paths=[paths[i] for i in train] if with_paths and paths is not None else None, l2=l2,
            )
            for i in test:
                total += _log_loss(cal.predict(signals[i], paths[i] if paths is not None else None), ys[i])
                count += 1
        losses[name] = total / count if count else math.inf
    best = min(candidates, key=lambda c: losses[c[0]])
    chosen = fit_calibrator(signals, ys, best[1], paths=paths if best[2] else None, l2=l2)
    meta = {"method": "auto", "chosen": best[0], **{f"cv_log_loss_{k}": round(v, 5) for k, v in losses.items()}}
    return Calibrator(kind=chosen.kind, params=chosen.params, n=chosen.n, positives=chosen.positives, meta=meta)
