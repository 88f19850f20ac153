"""What each lever of the embedded model costs and buys, measured in one run on held-out data.

Run (one llama.cpp process at a time: two slow each other down many times over)::

    L="flock /tmp/dspydantic-llama.lock env DSPYDANTIC_LOCAL_THREADS=2 .venv/bin/python"
    $L bench/bench_levers.py --dataset invoices
    $L bench/bench_levers.py --dataset weather

Rows, all on the same held-out test split (never given to ``optimize()``), the embedded model, greedy decoding:

* **default**: ``Prompter(Model, model_id="local")`` as a user gets it, zero-shot;
* **- <lever>**: the default with one lever off (the local grammar's ``every_key``, ``dates_as_text`` and
  ``numbers_as_text``; ``require_grounding=False`` for "absent is an answer"), to see what each one buys;
* **plain demos**: the default with the first ``--demos`` training examples as few-shot demos (the fair
  baseline ``optimize()`` compares against);
* **optimize(<name>)**: ``optimize(train, optimizer=<name>, fallback="baseline")`` with ``--max-lm-calls``,
  then what the prompter serves, scored on the test split; the LM calls and seconds of the row are the
  optimization's plus the scoring's (``--no-field-typing``: with ``field_typing=False``, that lever off).

The datasets are those of ``bench_optimize.py`` (the demo's invoices with the demo's split; SNIPS GetWeather:
40 training utterances from ``train_GetWeather.json``, 30 test from ``validate_GetWeather.json``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_optimize import invoices, snips
from dspydantic import Prompter
from dspydantic._render import Demo
from dspydantic.lm.local import LocalBackend

LEVERS = {"every_key": "every key written", "dates_as_text": "dates as written", "numbers_as_text": "numbers as text"}


def prompter(model: type, *, backend: dict[str, Any] | None = None, **kwargs: Any) -> Prompter:
    if backend:
        return Prompter(model, lm=LocalBackend(**backend), **kwargs)
    return Prompter(model, model_id="local", **kwargs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=["invoices", "weather"], default="invoices")
    ap.add_argument("--demos", type=int, default=4, help="plain demos (and the optimizers' demo budget)")
    ap.add_argument("--optimizers", default="hard_demos,bootstrap")
    ap.add_argument("--max-lm-calls", type=int, default=None, help="default: 60 (invoices), 120 (weather)")
    ap.add_argument("--only", default=None, help="comma-separated row names to run (default: all)")
    ap.add_argument("--no-field-typing", action="store_true", help="optimize(field_typing=False): the lever off")
    args = ap.parse_args()

    if args.dataset == "invoices":
        model, train, test, info = invoices(0)
        budget = args.max_lm_calls or 60
    else:
        model, train, test, info = snips("GetWeather", 40, 30, 0)
        budget = args.max_lm_calls or 120
    print(f"{args.dataset}: {len(train)} training examples, {len(test)} held out; {info}")

    rows: list[tuple[str, float, int, float, str]] = []

    def score(name: str, p: Prompter, extra_calls: int = 0, extra_s: float = 0.0, note: str = "") -> None:
        t = time.perf_counter()
        report = p.evaluate(test, num_threads=1)
        seconds = time.perf_counter() - t + extra_s
        rows.append((name, report.score, report.usage.calls + extra_calls, seconds, note))
        print(f"{name}: {report.score:.3f}  ({report.usage.calls + extra_calls} LM calls, {seconds:.0f} s) {note}",
              flush=True)
        p.close()

    wanted = None if args.only is None else {w.strip() for w in args.only.split(",")}

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    if want("default"):
        score("default", prompter(model))
    if want("absent"):
        score("- absent is an answer", prompter(model, require_grounding=False))
    for flag, label in LEVERS.items():
        if want(flag):
            score(f"- {label}", prompter(model, backend={flag: False}))
    if want("plain"):
        p = prompter(model)
        p.state = p.state.replace(demos=[Demo(input=str(e.text), output=e.expected_dict() or {})
                                         for e in train[: args.demos]])
        score(f"plain demos ({args.demos})", p)
    for name in [o.strip() for o in args.optimizers.split(",") if o.strip()]:
        if not want(name):
            continue
        p = prompter(model)
        t = time.perf_counter()
        result = p.optimize(train, optimizer=name, seed=0, num_threads=1, max_lm_calls=budget,
                            fallback="baseline", max_labeled_demos=args.demos, max_bootstrapped_demos=args.demos,
                            field_typing=not args.no_field_typing)
        served = "candidate" if result.accepted else (
            "fair baseline" if p.state == result.baseline_state else "original prompts")
        candidate = "n/a" if result.candidate_score is None else f"{result.candidate_score:.3f}"
        note = (f"validation {result.baseline_score:.3f} -> {candidate} "
                f"({result.n_train} train / {result.n_val} val); serves the {served}")
        label = f"optimize({name}{', field_typing=False' if args.no_field_typing else ''})"
        score(label, p, extra_calls=result.lm_calls, extra_s=time.perf_counter() - t, note=note)

    print("\n| configuration | test score | LM calls | wall s | note |\n| --- | --- | --- | --- | --- |")
    for name, value, calls, seconds, note in rows:
        print(f"| {name} | {value:.3f} | {calls} | {seconds:.0f} | {note} |")


if __name__ == "__main__":
    main()
