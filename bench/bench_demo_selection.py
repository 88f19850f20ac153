"""Which few-shot demos, chosen on training data only: SNIPS GetWeather demo sets scored on a dev slice of the
*training* file (``validate_GetWeather.json``, the test split of the other benchmarks, is never read).

Run (one llama.cpp process at a time)::

    L="flock /tmp/dspydantic-llama.lock env PYTHONPATH=src DSPYDANTIC_LOCAL_THREADS=2 .venv/bin/python"
    $L bench/bench_demo_selection.py first:4 descfirst:0 descfirst:4 first:8 cover:4 first:16
    $L bench/bench_demo_selection.py desccover:4 cover:8

``train_GetWeather.json`` is shuffled as in ``bench_optimize.py`` (seed 0): items 0-39 are the pool the demos
come from (the 40 examples the other benchmarks give ``optimize()``), items 100-159 the dev slice scored here.
Each argument is ``<selection>:<k>``: ``first`` (the first k of the pool), ``cover`` (greedy: each demo fills
the most slots no earlier demo filled, ties to the earlier one; tried in ``hard_demos`` and not kept, see
docs/benchmarks.md),
and a ``desc`` prefix that also writes each slot's description as up to three of its values in the pool
(``e.g. "here", "current place"``). The default prompter otherwise (``model_id="local"``, absent lever on).
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_optimize import snips
from dspydantic import Example, Prompter
from dspydantic._render import Demo


def example_values(names: list[str], examples: list[Example], n: int = 3) -> dict[str, str]:
    out = {}
    for name in names:
        vals: list[Any] = []
        for e in examples:
            v = (e.expected_output or {}).get(name)  # type: ignore[union-attr]
            if v and v not in vals:
                vals.append(v)
        vals.sort(key=len)
        if vals:
            out[name] = "e.g. " + ", ".join(f'"{v}"' for v in vals[:n])
    return out


def cover(pool: list[Example], k: int) -> list[Example]:
    chosen: list[Example] = []
    shown: set[str] = set()
    for _ in range(k):
        best = max((e for e in pool if e not in chosen),
                   key=lambda e: len({n for n, v in e.expected_output.items() if v} - shown))  # type: ignore[union-attr]
        chosen.append(best)
        shown |= {n for n, v in best.expected_output.items() if v}  # type: ignore[union-attr]
    return chosen


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def nearest(pool: list[Example], text: str, k: int) -> list[Example]:
    """The k pool examples whose words are most like ``text``'s (tf-idf cosine), the nearest last."""
    docs = [Counter(_words(str(e.text))) for e in pool]
    df = Counter(w for d in docs for w in d)
    idf = {w: math.log((1 + len(docs)) / (1 + n)) + 1 for w, n in df.items()}

    def vec(c: Counter[str]) -> dict[str, float]:
        v = {w: n * idf.get(w, math.log(1 + len(docs)) + 1) for w, n in c.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {w: x / norm for w, x in v.items()}

    q = vec(Counter(_words(text)))
    sims = [sum(q.get(w, 0.0) * x for w, x in vec(d).items()) for d in docs]
    order = sorted(range(len(pool)), key=lambda i: -sims[i])[:k]
    return [pool[i] for i in reversed(order)]


def main() -> None:
    model, train_all, _, _ = snips("GetWeather", 400, 0, 0)
    pool, dev = train_all[:40], train_all[100:160]
    names = list(model.model_fields)
    for spec in sys.argv[1:]:
        kind, k = spec.split(":")
        if kind in ("knn", "mix", "descknn"):
            knn_run(model, pool, dev, int(k), spec)
            continue
        demos = pool[: int(k)] if kind.endswith("first") else cover(pool, int(k))
        p = Prompter(model, model_id="local")
        p.state = p.state.replace(demos=[Demo(input=str(e.text), output=dict(e.expected_output or {}))  # type: ignore[arg-type]
                                         for e in demos])
        if kind.startswith("desc"):
            p.state = p.state.replace(field_descriptions=example_values(names, pool))
        t = time.time()
        r = p.evaluate(dev, num_threads=1)
        per_field = " ".join(f"{n}={v:.2f}" for n, v in r.per_field.items())
        print(spec, f"{r.score:.3f}", per_field, f"{time.time() - t:.0f}s", flush=True)
        p.close()


def knn_run(model: Any, pool: list[Example], dev: list[Example], k: int, spec: str) -> None:
    fixed = cover(pool, k // 2) if spec.startswith("mix") else []
    rest = [e for e in pool if e not in fixed]
    p = Prompter(model, model_id="local")
    if spec.startswith("desc"):
        p.state = p.state.replace(field_descriptions=example_values(list(model.model_fields), pool))
    base = p.state
    t = time.time()
    scores: list[float] = []
    fields: dict[str, list[float]] = {}
    for e in dev:
        p.state = base.replace(demos=[Demo(input=str(d.text), output=dict(d.expected_output or {}))  # type: ignore[arg-type]
                                      for d in fixed + nearest(rest, str(e.text), k - len(fixed))])
        r = p.evaluate([e], num_threads=1)
        scores.append(r.score)
        for n, v in r.per_field.items():
            fields.setdefault(n, []).append(v)
    per_field = " ".join(f"{n}={sum(v) / len(v):.2f}" for n, v in fields.items())
    print(spec, f"{sum(scores) / len(scores):.3f}", per_field, f"{time.time() - t:.0f}s", flush=True)
    p.close()


if __name__ == "__main__":
    main()
