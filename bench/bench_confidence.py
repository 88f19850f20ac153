"""Per-field confidence on held-out data: does it separate right from wrong fields (AUROC), and is it
calibrated (expected calibration error before and after a calibrator fitted on a disjoint split)?

    flock /tmp/dspydantic-llama.lock .venv/bin/python bench/bench_confidence.py            # local model
    .venv/bin/python bench/bench_confidence.py --datasets weather --n-cal 40 --n-test 30  # a smaller run
    .venv/bin/python bench/bench_confidence.py --analyse /tmp/confidence-fields.json     # re-analyse only

Data (``../shared/data``, see its README), three disjoint parts per dataset, printed below:

* SNIPS ``GetWeather`` and ``BookRestaurant`` (every slot an optional string): 4 demos and the calibration
  split from ``train_<Intent>.json`` (shuffled with ``--seed``: demos first, then calibration), the test
  split from ``validate_<Intent>.json``;
* E2E restaurants (name/near free strings, the closed slots as enums): split **by record** (several texts
  share one record): demos, calibration and test records are different records.

Each dataset gets one Prompter (the embedded model, 4 plain demos from its demo split, cache on). It is run
on the calibration split and on the test split with ``Prompter.evaluate`` (the ``exact`` evaluator says
which fields are right; a field counts as right when its score is 1.0); every scored field is one point:
its signals (value-token log-probabilities, grounding, null, re-asks) and right/wrong. Calibrators are
fitted on the calibration split only and measured on the test split. Printed: fields and accuracy, AUROC of
several confidences (the old one-number-per-document confidence, value-token probabilities, the documented
uncalibrated combination, each calibrator), ECE before/after, and the reliability diagram PNG.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, create_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dspydantic import Example, Prompter  # noqa: E402
from dspydantic._render import Demo  # noqa: E402
from dspydantic.confidence.calibration import fit_calibrator  # noqa: E402
from dspydantic.confidence.fit import calibration_pairs  # noqa: E402
from dspydantic.confidence.metrics import (  # noqa: E402
    auroc,
    brier,
    expected_calibration_error,
    reliability_diagram,
)
from dspydantic.confidence.signals import FieldSignals  # noqa: E402

_candidates = [ROOT.parent / "shared" / "data", ROOT.parents[1] / "shared" / "data", Path("/work/shared/data")]
DATA = Path(os.environ.get("DSPYDANTIC_DATA") or next((p for p in _candidates if p.is_dir()), _candidates[0]))
SNIPS = DATA / "snips" / "2017-06-custom-intent-engines"
E2E = DATA / "e2e-cleaned-dev" / "devel-fixed.no-ol.csv"
N_DEMOS = 4

Split = tuple[type[BaseModel], list[Example], list[Example], list[Example], str]


# -- data ------------------------------------------------------------------------------------------


def _snips_records(path: Path, intent: str) -> list[tuple[str, dict[str, str]]]:
    raw = json.loads(path.read_bytes().decode("latin-1"))
    out = []
    for item in raw[intent]:
        text = "".join(part["text"] for part in item["data"]).strip()
        slots: dict[str, str] = {}
        repeated = False
        for part in item["data"]:
            if "entity" in part:
                repeated = repeated or part["entity"] in slots
                slots[part["entity"]] = part["text"].strip()
        if not repeated:
            out.append((text, slots))
    return out


def snips(intent: str, n_cal: int, n_test: int, seed: int) -> Split:
    train = _snips_records(SNIPS / intent / f"train_{intent}.json", intent)
    test = _snips_records(SNIPS / intent / f"validate_{intent}.json", intent)
    names = sorted({k for _, s in train + test for k in s})
    model = create_model(intent, **{n: (str | None, None) for n in names})  # type: ignore[call-overload]
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(test)

    def ex(text: str, slots: dict[str, str]) -> Example:
        return Example(text=text, expected_output={n: slots.get(n) for n in names})

    demos = [ex(*r) for r in train[:N_DEMOS]]
    cal = [ex(*r) for r in train[N_DEMOS : N_DEMOS + n_cal]]
    info = (f"demos + calibration: train_{intent}.json shuffled (seed {seed}), test: validate_{intent}.json; "
            f"{len(names)} slots")
    return model, demos, cal, [ex(*r) for r in test[:n_test]], info


_E2E_KEYS = {
    "name": "name", "eatType": "eat_type", "food": "food", "priceRange": "price_range",
    "customer rating": "customer_rating", "area": "area", "familyFriendly": "family_friendly", "near": "near",
}


def e2e(n_cal: int, n_test: int, seed: int) -> Split:
    with E2E.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    records: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        records[r["mr"]].append(r["ref"])
    parsed = {mr: {_E2E_KEYS[k.strip()]: v for k, v in re.findall(r"([a-zA-Z ]+)\[([^\]]*)\]", mr)} for mr in records}
    closed: dict[str, set[str]] = defaultdict(set)
    for slots in parsed.values():
        for k, v in slots.items():
            closed[k].add(v)
    fields: dict[str, Any] = {}
    for key in _E2E_KEYS.values():
        if key in ("name", "near"):
            fields[key] = (str | None, None)
        else:
            fields[key] = (Literal[tuple(sorted(closed[key]))] | None, None)
    model = create_model("Restaurant", **fields)
    mrs = sorted(records)
    rng = random.Random(seed)
    rng.shuffle(mrs)

    def ex(mr: str) -> Example:
        text = records[mr][rng.randrange(len(records[mr]))]
        return Example(text=text, expected_output={k: parsed[mr].get(k) for k in _E2E_KEYS.values()})

    demos = [ex(mr) for mr in mrs[:N_DEMOS]]
    cal = [ex(mr) for mr in mrs[N_DEMOS : N_DEMOS + n_cal]]
    test = [ex(mr) for mr in mrs[N_DEMOS + n_cal : N_DEMOS + n_cal + n_test]]
    info = f"records shuffled (seed {seed}): demos, calibration and test are different records; one text each"
    return model, demos, cal, test, info


# -- measuring -------------------------------------------------------------------------------------


def collect(name: str, split: Split, args: argparse.Namespace) -> dict[str, Any]:
    model, demos, cal, test, info = split
    texts = [json.dumps(e.text) for e in (*demos, *cal)]
    assert not set(texts) & {json.dumps(e.text) for e in test}, "a test text is in the demos or calibration split"
    print(f"{name}: {len(demos)} demos, {len(cal)} calibration, {len(test)} test examples; {info}", flush=True)
    extra: dict[str, Any] = {"n_threads": args.threads} if args.threads and args.model.startswith("local") else {}
    prompter = Prompter(
        model, model_id=args.model, cache=args.cache_dir, **extra,
        demos=[Demo(input=str(e.text), output=dict(e.expected_output or {})) for e in demos],  # type: ignore[arg-type]
    )
    out: dict[str, Any] = {}
    for part, examples in (("cal", cal), ("test", test)):
        t = time.perf_counter()
        def progress(event: dict[str, Any], t: float = t, part: str = part) -> None:
            if event.get("done", 0) % 20 == 0:
                print(f"    {part} {event['done']}/{event['total']} ({time.perf_counter() - t:.0f} s)", flush=True)

        report = prompter.evaluate(examples, num_threads=1, on_progress=progress)
        pairs = calibration_pairs(report.outcomes)
        labels = pairs.labels
        out[part] = {"signals": [s.to_json() for s in pairs.signals], "labels": labels, "paths": pairs.paths}
        print(f"  {part}: score {report.score:.3f}, {len(labels)} fields ({sum(labels):.0f} right), "
              f"{pairs.skipped} failed extractions, {report.usage.calls} LM calls, {time.perf_counter() - t:.0f} s",
              flush=True)
    prompter.close()
    return out


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def analyse(data: dict[str, Any], png: Path | None) -> None:
    def load(part: str, names: Sequence[str]) -> tuple[list[FieldSignals], list[float]]:
        sig: list[FieldSignals] = []
        lab: list[float] = []
        for n in names:
            sig += [FieldSignals.from_json(s) for s in data[n][part]["signals"]]
            lab += data[n][part]["labels"]
        return sig, lab

    def paths(part: str, name: str) -> list[str] | None:
        return data[name][part].get("paths")

    names = list(data)
    scores: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    rows = []
    for group in [*[[n] for n in names], names] if len(names) > 1 else [names]:
        label = "+".join(group) if len(group) > 1 else group[0]
        test_sig, test_lab = load("test", group)
        series: dict[str, list[float]] = {
            "document (old: answer token mean x re-asks)": [
                _exp(s.answer_logprob) * max(0.0, 1 - 0.25 * (s.attempts - 1)) for s in test_sig
            ],
            "value tokens, mean prob": [
                _exp(s.logprob if s.logprob is not None else s.answer_logprob) for s in test_sig
            ],
            "value tokens, min prob": [_exp(s.min_logprob if s.min_logprob is not None else s.answer_logprob)
                                       for s in test_sig],
            "uncalibrated (combine)": [s.raw for s in test_sig],
        }
        # calibrators: fitted per dataset on its calibration split, applied to its own test split
        for method in ("auto", "isotonic", "platt", "logistic"):
            preds: list[float] = []
            for n in group:
                cal_sig, cal_lab = load("cal", [n])
                t_sig, _ = load("test", [n])
                cal = fit_calibrator(cal_sig, cal_lab, method, paths=paths("cal", n))
                if method == "auto" and len(group) == 1:
                    print(f"   {n}: auto picked {cal.meta.get('chosen')} by 5-fold CV on the calibration split "
                          f"({', '.join(f'{k[12:]} {v}' for k, v in cal.meta.items() if k.startswith('cv_'))})")
                found = paths("test", n)
                t_paths: list[str | None] = list(found) if found is not None else [None] * len(t_sig)
                preds += [cal.predict(s, p) for s, p in zip(t_sig, t_paths, strict=True)]
            series[f"calibrated: {method}"] = preds
        scores[label] = {k: (v, test_lab) for k, v in series.items()}
        acc = sum(test_lab) / len(test_lab) if test_lab else float("nan")
        print(f"\n== {label}: {len(test_lab)} test fields, {acc:.3f} right")
        print(f"   {'confidence':<46} {'AUROC':>6} {'ECE':>6} {'Brier':>6}")
        for k, v in series.items():
            a, e, b = auroc(v, test_lab), expected_calibration_error(v, test_lab), brier(v, test_lab)
            print(f"   {k:<46} {_fmt(a):>6} {_fmt(e):>6} {_fmt(b):>6}")
            rows.append((label, k, a, e, b))
    if png is not None:
        everything = "+".join(names) if len(names) > 1 else names[0]
        best = "calibrated: auto"
        reliability_diagram(
            png,
            {"uncalibrated": scores[everything]["uncalibrated (combine)"], best: scores[everything][best]},
            title=f"Field confidence on held-out test fields ({everything}, local model)",
        )
        print(f"\nreliability diagram: {png}")


def _exp(x: float | None) -> float:
    import math

    return math.exp(x) if x is not None else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="weather,restaurant,e2e")
    ap.add_argument("--model", default="local")
    ap.add_argument("--n-cal", type=int, default=100)
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: every core)")
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "dspydantic-bench-confidence"))
    ap.add_argument("--fields-out", default="/tmp/confidence-fields.json", help="where the field points go")
    ap.add_argument("--analyse", default=None, help="only analyse a --fields-out file of an earlier run")
    ap.add_argument("--png", default=str(ROOT / "docs" / "confidence_reliability.png"))
    args = ap.parse_args()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"load at start: {load}", flush=True)
    if args.analyse:
        analyse(json.loads(Path(args.analyse).read_text()), Path(args.png) if args.png else None)
        return
    t0 = time.perf_counter()
    data: dict[str, Any] = {}
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        if name == "weather":
            split = snips("GetWeather", args.n_cal, args.n_test, args.seed)
        elif name == "restaurant":
            split = snips("BookRestaurant", args.n_cal, args.n_test, args.seed)
        elif name == "e2e":
            split = e2e(args.n_cal, args.n_test, args.seed)
        else:
            raise SystemExit(f"unknown dataset {name!r}")
        data[name] = collect(name, split, args)
        Path(args.fields_out).write_text(json.dumps(data))
    print(f"\nextraction wall time {time.perf_counter() - t0:.0f} s; load at end: "
          f"{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    analyse(data, Path(args.png) if args.png else None)


if __name__ == "__main__":
    main()
