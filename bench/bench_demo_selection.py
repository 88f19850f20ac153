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
``knn`` (per dev utterance, the k pool examples nearest to it: :mod:`dspydantic._nearest`'s index, as
``optimizer="nearest_demos"`` shows them), ``mix`` (k/2 covering demos fixed, then the k - k/2 nearest of the
rest), ``rareknn`` (``knn`` with the model's fields, in the grammar and in every demo, ordered rarest
filled in the pool first: a field order chosen from the labels), a ``desc`` prefix (``descfirst``,
``desccover``, ``descknn``) that also writes each slot's description as up to three of its values in the
pool (``e.g. "here", "current place"``), and ``typedknn`` (``knn`` with field typing fitted on the pool's
labels, as ``optimize()`` fits it: :mod:`dspydantic._retype`). The default prompter otherwise
(``model_id="local"``, absent lever on)::

    $L bench/bench_demo_selection.py knn:4
    $L bench/bench_demo_selection.py mix:4 knn:8 first:4
    $L bench/bench_demo_selection.py descknn:4
    $L bench/bench_demo_selection.py rareknn:4
    $L bench/bench_demo_selection.py typedknn:4
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pydantic import create_model

from bench_optimize import snips
from dspydantic import Example, Prompter
from dspydantic._render import Demo
from dspydantic._retype import fit_field_values, retypable_fields


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


def as_demo(e: Example, names: list[str] | None = None) -> Demo:
    out = dict(e.expected_output or {})  # type: ignore[arg-type]
    return Demo(input=str(e.text), output=out if names is None else {n: out.get(n) for n in names})


def rarest_first(model: Any, pool: list[Example]) -> Any:
    """``model``'s optional string fields re-declared rarest filled in ``pool`` first (ties by name)."""
    filled = {n: sum(1 for e in pool if (e.expected_output or {}).get(n)) for n in model.model_fields}  # type: ignore[union-attr]
    order = sorted(filled, key=lambda n: (filled[n], n))
    return create_model(model.__name__, **{n: (str | None, None) for n in order})  # type: ignore[call-overload]


def main() -> None:
    model, train_all, _, _ = snips("GetWeather", 400, 0, 0)
    pool, dev = train_all[:40], train_all[100:160]
    names = list(model.model_fields)
    for spec in sys.argv[1:]:
        kind, k = spec.split(":")
        if kind in ("knn", "mix", "descknn", "rareknn", "typedknn"):
            knn_run(model, pool, dev, int(k), spec)
            continue
        demos = pool[: int(k)] if kind.endswith("first") else cover(pool, int(k))
        p = Prompter(model, model_id="local")
        p.state = p.state.replace(demos=[as_demo(e) for e in demos])
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
    if spec.startswith("rare"):
        model = rarest_first(model, pool)
    names = list(model.model_fields)
    p = Prompter(model, model_id="local")
    if spec.startswith("desc"):
        p.state = p.state.replace(field_descriptions=example_values(names, pool))
    p.state = p.state.replace(demos=[as_demo(e, names) for e in fixed], demo_pool=[as_demo(e, names) for e in rest],
                              nearest_demos=k - len(fixed))
    if spec.startswith("typed"):
        labels = [e.expected_dict() or {} for e in pool]
        p.state = p.state.replace(field_values=fit_field_values(labels, retypable_fields(p.renderer.base_schema)))
    t = time.time()
    r = p.evaluate(dev, num_threads=1)
    per_field = " ".join(f"{n}={v:.2f}" for n, v in r.per_field.items())
    print(spec, f"{r.score:.3f}", per_field, f"{time.time() - t:.0f}s", flush=True)
    p.close()


if __name__ == "__main__":
    main()
