"""Benchmark of ``Prompter.optimize()`` on real data with the real local model (or any model).

Run::

    .venv/bin/python bench/bench_optimize.py --quick                       # SNIPS GetWeather, small budgets
    .venv/bin/python bench/bench_optimize.py --dataset facility --optimizers auto,gepa
    .venv/bin/python bench/bench_optimize.py --model openai/gpt-4o-mini    # any model_id the Prompter takes

Data (``../shared/data``, see its README): SNIPS ``GetWeather`` / ``BookRestaurant`` slot filling and the
Facility Support emails. Splits are honest and printed: for SNIPS the examples given to ``optimize()``
(its own train/validation split, demos, candidate generation) come from ``train_<Intent>.json`` only and the
test set is ``validate_<Intent>.json``; for Facility the 200 emails are shuffled with ``--seed`` and the last
68 (the size of the published test split) are the test set. The script asserts that no test text is in the
training examples. Utterances that repeat a slot are skipped (they need a list-valued slot).

For each optimizer it prints: what ``auto`` picked, the validation-split scores ``optimize()`` compared
(baseline -> candidate, accepted or not), the test score before and after (``evaluate()``), LM calls,
tokens and wall time. Facility is scored like the published DSPy/GEPA result: the mean of urgency accuracy,
sentiment accuracy and category-vector accuracy.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dspydantic import Example, Prompter
from dspydantic.optimize.scoring import whole_output

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SNIPS = DATA / "snips" / "2017-06-custom-intent-engines"
FACILITY = DATA / "facility-support"
CATEGORIES = [
    "emergency_repair_services",
    "routine_maintenance_requests",
    "quality_and_safety_concerns",
    "specialized_cleaning_services",
    "general_inquiries",
    "sustainability_and_environmental_practices",
    "training_and_support_requests",
    "cleaning_services_scheduling",
    "customer_feedback_and_complaints",
    "facility_management_issues",
]


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


def _snips_records(path: Path, intent: str) -> list[tuple[str, dict[str, str]]]:
    raw = json.loads(path.read_bytes().decode("latin-1"))
    out = []
    for item in raw[intent]:
        text = "".join(part["text"] for part in item["data"]).strip()
        slots: dict[str, str] = {}
        repeated = False
        for part in item["data"]:
            if "entity" in part:
                if part["entity"] in slots:
                    repeated = True
                slots[part["entity"]] = part["text"].strip()
        if not repeated:
            out.append((text, slots))
    return out


Dataset = tuple[type[BaseModel], list[Example], list[Example], dict[str, Any]]


def snips(intent: str, n_train: int, n_test: int, seed: int) -> Dataset:
    train = _snips_records(SNIPS / intent / f"train_{intent}.json", intent)
    test = _snips_records(SNIPS / intent / f"validate_{intent}.json", intent)
    names = sorted({k for _, s in train + test for k in s})
    model = create_model(intent, **{n: (str | None, None) for n in names})  # type: ignore[call-overload]
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(test)

    def ex(text: str, slots: dict[str, str]) -> Example:
        return Example(text=text, expected_output={n: slots.get(n) for n in names})

    info = {"train_file": f"train_{intent}.json", "test_file": f"validate_{intent}.json", "slots": len(names)}
    return model, [ex(*r) for r in train[:n_train]], [ex(*r) for r in test[:n_test]], info


class Categories(BaseModel):
    emergency_repair_services: bool = False
    routine_maintenance_requests: bool = False
    quality_and_safety_concerns: bool = False
    specialized_cleaning_services: bool = False
    general_inquiries: bool = False
    sustainability_and_environmental_practices: bool = False
    training_and_support_requests: bool = False
    cleaning_services_scheduling: bool = False
    customer_feedback_and_complaints: bool = False
    facility_management_issues: bool = False


class SupportEmail(BaseModel):
    urgency: Literal["low", "medium", "high"]
    sentiment: Literal["negative", "neutral", "positive"]
    categories: Categories = Field(default_factory=Categories)


def facility(n_train: int, n_test: int, seed: int) -> Dataset:
    rows = json.loads((FACILITY / "dataset.json").read_text())
    items = [(r["fields"]["input"], json.loads(r["answer"])) for r in rows]
    rng = random.Random(seed)
    rng.shuffle(items)
    test_rows, train_rows = items[-68:], items[:-68]
    exs = [Example(text=t, expected_output=a) for t, a in train_rows[:n_train]]
    tests = [Example(text=t, expected_output=a) for t, a in test_rows[:n_test]]
    info = {"train": f"first {len(train_rows)} of 200 shuffled (seed {seed})", "test": "last 68"}
    return SupportEmail, exs, tests, info


def facility_metric(expected: Any, predicted: Any) -> float:
    """The published score: mean of urgency, sentiment and whole-category-vector accuracy."""
    if not isinstance(predicted, dict):
        return 0.0
    cats_e = {k: bool((expected.get("categories") or {}).get(k)) for k in CATEGORIES}
    cats_p = {k: bool((predicted.get("categories") or {}).get(k)) for k in CATEGORIES}
    parts = [
        expected.get("urgency") == predicted.get("urgency"),
        expected.get("sentiment") == predicted.get("sentiment"),
        cats_e == cats_p,
    ]
    return sum(parts) / 3


# --------------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------------


def invoices(seed: int) -> Dataset:
    """The demo's bundled invoices with the demo's own split (``dspydantic demo``: 18 train / 12 test)."""
    from dspydantic.demo import Invoice, load_records, sizes, split_records

    size = sizes(False)
    train, test = split_records(load_records(), seed, size.n_train, size.n_test)
    info = {"split": f"the demo's: seed {seed}, {size.n_train} train / {size.n_test} test"}
    return Invoice, [r.example() for r in train], [r.example() for r in test], info


def make_prompter(args: argparse.Namespace, model: type[BaseModel], system_prompt: str | None) -> Prompter:
    kwargs: dict[str, Any] = {"cache": args.cache, "system_prompt": system_prompt}
    if args.absent:
        from dspydantic.confidence import absent_fields

        kwargs["require_grounding"] = absent_fields(model)
    if args.instruction:
        kwargs["instruction_prompt"] = args.instruction
    if args.numbers_as_json and args.model.startswith("local"):  # the grammar before issue 14
        from dspydantic.lm.local import LocalBackend

        return Prompter(model, lm=LocalBackend(numbers_as_text=False), **kwargs)
    if args.api_base:
        kwargs.update(api_base=args.api_base, api_key=args.api_key or "none")
    try:
        return Prompter(model, model_id=args.model, **kwargs)
    except TypeError as exc:  # the local backend's constructor while it is being changed
        if not args.model.startswith("local"):
            raise
        from dspydantic.lm.local import LocalBackend

        print(f"note: model_id={args.model!r} failed ({exc}); using LocalBackend() directly")
        return Prompter(model, lm=LocalBackend(), **kwargs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=["weather", "restaurant", "facility", "invoices"], default="weather")
    ap.add_argument("--optimizers", default="auto,miprov2,gepa", help="comma-separated optimizer names")
    ap.add_argument("--model", default="local", help="model_id (default: the embedded local model)")
    ap.add_argument("--api-base", default=None)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--quick", action="store_true", help="small sets and budgets (a smoke run)")
    ap.add_argument("--n-train", type=int, default=None, help="examples given to optimize()")
    ap.add_argument("--n-test", type=int, default=None, help="held-out test examples")
    ap.add_argument("--max-lm-calls", type=int, default=None, help="budget per optimize() run")
    ap.add_argument("--train-split", type=float, default=0.8,
                    help="optimize()'s train_split (the rest of its examples is its validation split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache", action="store_true", help="use the Prompter cache (reruns are then free)")
    ap.add_argument("--fallback", choices=["original", "baseline"], default="original",
                    help="what the Prompter serves when the candidate does not beat the baseline")
    ap.add_argument("--absent", action="store_true",
                    help="lever: values not found in the document become null in optional string fields")
    ap.add_argument("--instruction", default=None, help="lever: another instruction prompt")
    ap.add_argument("--plain-demos", type=int, default=0,
                    help="score the prompter with this many plain training examples as demos (no optimizer)")
    ap.add_argument("--numbers-as-json", action="store_true",
                    help="local model: JSON numbers in the grammar (before issue 14) instead of numbers as text")
    args = ap.parse_args()

    n_train = args.n_train or (10 if args.quick else 40)
    n_test = args.n_test or (8 if args.quick else 50)
    budget = args.max_lm_calls or (40 if args.quick else 300)
    local = args.model.startswith("local")
    threads = args.threads or (1 if local else 4)

    system_prompt = None
    evaluator: Any = None
    if args.dataset == "invoices":
        model, train, test, info = invoices(args.seed)
    elif args.dataset == "facility":
        model, train, test, info = facility(n_train, n_test, args.seed)
        system_prompt = (FACILITY / "facility_prompt_sys.txt").read_text().strip()
        evaluator = whole_output(facility_metric)
    else:
        intent = "GetWeather" if args.dataset == "weather" else "BookRestaurant"
        model, train, test, info = snips(intent, n_train, n_test, args.seed)
    overlap = {json.dumps(e.text) for e in train} & {json.dumps(e.text) for e in test}
    assert not overlap, f"{len(overlap)} test texts are in the training examples"
    print(f"dataset {args.dataset}: {len(train)} examples for optimize(), {len(test)} test; {info}")
    print(f"model {args.model}; budget max_lm_calls={budget} per run; threads {threads}; seed {args.seed}; "
          f"train_split {args.train_split}\n")

    t0 = time.perf_counter()
    scored = make_prompter(args, model, system_prompt)
    if args.plain_demos:
        from dspydantic._render import Demo

        demos = [Demo(input=str(e.text), output=e.expected_dict() or {}) for e in train[: args.plain_demos]]
        scored.state = scored.state.replace(demos=demos)
        print(f"scored with {len(demos)} plain training demos (the first of the training split)")
    before = scored.evaluate(test, evaluator=evaluator, num_threads=threads)
    print("per field: " + ", ".join(f"{k} {v:.3f}" for k, v in before.per_field.items()))
    print(f"test score before optimization: {before.score:.3f}  (P {before.precision:.3f} R {before.recall:.3f}"
          f" F1 {before.f1:.3f}; {before.usage.calls} calls, {time.perf_counter() - t0:.0f} s)\n")

    rows = []
    fair_cache: dict[str, float] = {}
    for name in [o.strip() for o in args.optimizers.split(",") if o.strip()]:
        prompter = make_prompter(args, model, system_prompt)
        kwargs: dict[str, Any] = {}
        if name == "gepa" or name == "auto":
            kwargs["max_metric_calls"] = max(12, budget // 2)
        t = time.perf_counter()
        try:
            result = prompter.optimize(
                train, optimizer=name, evaluator=evaluator, seed=args.seed, num_threads=threads,
                train_split=args.train_split,
                max_lm_calls=budget, verbose=True, fallback=args.fallback, **kwargs,
            )
        except Exception as exc:  # report and go on with the next optimizer
            print(f"{name}: FAILED {type(exc).__name__}: {exc}\n")
            rows.append((name, "-", "failed", "-", "-", "-", "-", f"{time.perf_counter() - t:.0f}"))
            continue
        opt_s = time.perf_counter() - t
        after = prompter.evaluate(test, evaluator=evaluator, num_threads=threads)
        # the fair comparison on the test split: the same prompts with the candidate's demo budget as plain demos
        key = repr(result.baseline_state)
        if key not in fair_cache:
            fair = make_prompter(args, model, system_prompt)
            fair.state = result.baseline_state
            fair_cache[key] = fair.evaluate(test, evaluator=evaluator, num_threads=threads).score
        print(result.summary())
        print(f"test: {before.score:.3f} (as configured) / {fair_cache[key]:.3f} (fair baseline: "
              f"{len(result.baseline_state.demos)} plain demos) -> {after.score:.3f}\n")
        cand = f"{result.candidate_score:.3f}" if result.candidate_score is not None else "n/a"
        orig = f" (orig {result.original_score:.3f})" if result.original_score is not None else ""
        rows.append((
            name, result.optimizer, f"{result.baseline_score:.3f}->{cand}{orig}", "yes" if result.accepted else "no",
            f"{before.score:.3f} / {fair_cache[key]:.3f} -> {after.score:.3f}", str(result.lm_calls),
            str(result.prompt_tokens + result.completion_tokens), f"{opt_s:.0f}",
        ))

    header = ("optimizer", "picked", "val base->cand", "accepted", "test zero-shot / fair baseline -> after",
              "LM calls", "tokens", "s")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
