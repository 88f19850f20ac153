"""Cross-validated comparison of two demo-choosing procedures on the embedded model, then a held-out check.

Run (one llama.cpp process at a time)::

    L="flock /tmp/dspydantic-llama.lock env PYTHONPATH=src DSPYDANTIC_LOCAL_THREADS=2 .venv/bin/python"
    $L bench/bench_crossval.py invoices 4 3          # dataset, demos, folds
    $L bench/bench_crossval.py weather 4 4 --absent  # --absent: require_grounding=absent_fields(model)

The default prompts score every training example once (N calls: what ``hard_demos`` ranks by). For each
fold, "plain" (the first k of the other folds) and "hard" (the k the default prompts scored lowest among the
other folds) are scored on the fold (2N calls). Then both procedures are fitted on all training examples
and scored on the test split, which the cross-validation never saw. Datasets as in ``bench_optimize.py``.
"""

from __future__ import annotations

import argparse
import statistics as st
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_optimize import invoices, snips
from dspydantic import Example, Prompter
from dspydantic._render import Demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", choices=["invoices", "weather"])
    ap.add_argument("k", type=int, help="demos per prompt")
    ap.add_argument("folds", type=int)
    ap.add_argument("--absent", action="store_true")
    args = ap.parse_args()
    model, train, test, _ = invoices(0) if args.dataset == "invoices" else snips("GetWeather", 40, 30, 0)
    from dspydantic.confidence import absent_fields

    # as measured: "absent is an answer" only with --absent (not the embedded model's default of today)
    p = Prompter(model, model_id="local", cache=False, require_grounding=absent_fields(model) if args.absent else False)
    base = p.state

    def scores(demos: list[Example], examples: list[Example]) -> list[float]:
        p.state = base.replace(demos=[Demo(input=str(e.text), output=e.expected_dict() or {}) for e in demos])
        report = p.evaluate(examples, num_threads=1)
        return [o.score.score for o in sorted(report.outcomes, key=lambda o: o.index)]

    t0 = time.perf_counter()
    original = scores([], train)
    n, k = len(train), args.k
    plain, hard = [0.0] * n, [0.0] * n
    for f in range(args.folds):
        fold = [i for i in range(n) if i % args.folds == f]
        rest = [i for i in range(n) if i % args.folds != f]
        plain_idx, hard_idx = rest[:k], sorted(rest, key=lambda i: (original[i], i))[:k]
        held = [train[i] for i in fold]
        sp = scores([train[i] for i in plain_idx], held)
        sh = sp if hard_idx == plain_idx else scores([train[i] for i in hard_idx], held)
        for j, i in enumerate(fold):
            plain[i], hard[i] = sp[j], sh[j]
    diff = [h - b for h, b in zip(hard, plain, strict=True)]
    se = st.stdev(diff) / n**0.5
    print(f"{args.dataset} k={k} folds={args.folds} absent={args.absent}: CV default prompts {st.mean(original):.3f}"
          f"  plain {st.mean(plain):.3f}  hard {st.mean(hard):.3f}  hard-plain {st.mean(diff):+.3f} ± {se:.3f} "
          f"(higher {sum(d > 0 for d in diff)}, lower {sum(d < 0 for d in diff)})  {time.perf_counter() - t0:.0f} s",
          flush=True)
    hard_all = sorted(range(n), key=lambda i: (original[i], i))[:k]
    test_plain = st.mean(scores(train[:k], test))
    test_hard = st.mean(scores([train[i] for i in hard_all], test))
    print(f"{args.dataset} test: plain {test_plain:.3f}  hard {test_hard:.3f}  {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
