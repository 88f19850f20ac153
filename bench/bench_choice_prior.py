"""How choice biases should be fitted: the embedded model's urgency decision on Facility's *training* emails.

Run (one llama.cpp process at a time; the first part takes ~10 minutes on 2 cores)::

    flock /tmp/dspydantic-llama.lock env PYTHONPATH=src DSPYDANTIC_LOCAL_THREADS=2 \\
        .venv/bin/python bench/bench_choice_prior.py --dump /tmp/urgency.json
    .venv/bin/python bench/bench_choice_prior.py --dump /tmp/urgency.json     # again: reuses the dump

For each of the 132 training emails of ``bench_optimize.py --dataset facility`` (seed 0; the 68 test emails are
never read) the default prompt is evaluated up to the answer's ``{"urgency":"`` and the model's
log-probability of ``low`` / ``medium`` / ``high`` there is kept. Then, for n = 8, 16, 32 training emails drawn
at random (100 draws, or 200 for the log-likelihood fits), biases are fitted on the n and the urgency accuracy
of the argmax of logits + biases is compared with no bias on the other emails: prior matching (what
``optimize()`` does, :mod:`dspydantic.optimize.calibrate`), accuracy-maximising biases on a grid, and a
log-likelihood fit with L2 penalty ``lam``. Printed: the mean gain, the share of draws that lost, the 10th
percentile.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

VALUES = ["low", "medium", "high"]


def dump(path: Path) -> None:
    import numpy as np

    from bench_optimize import FACILITY, facility
    from dspydantic import Prompter
    from dspydantic.lm.local import LocalBackend

    model, train, _, _ = facility(132, 68, 0)
    system = (FACILITY / "facility_prompt_sys.txt").read_text().strip()
    renderer = Prompter(model, model_id="local", system_prompt=system).renderer
    shared = LocalBackend()._model()
    llama = shared.llama
    prefix = llama.tokenize(b'{"urgency":"', add_bos=False, special=False)
    ids = {v: llama.tokenize(v.encode(), add_bos=False, special=False)[0] for v in VALUES}
    rows: list[dict[str, Any]] = []
    t = time.time()
    for i, e in enumerate(train):
        tokens, _, _ = shared.render(renderer.messages(str(e.text)))
        llama.reset()
        llama.eval(tokens + prefix)
        logits = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(llama.n_vocab(),)).astype(np.float64)
        lse = logits.max() + np.log(np.exp(logits - logits.max()).sum())
        rows.append({"expected": e.expected_output, "urgency": {v: float(logits[ids[v]] - lse) for v in VALUES}})
        if i % 20 == 0:
            print(f"{i} emails, {time.time() - t:.0f} s", flush=True)
    path.write_text(json.dumps(rows))


def analyse(path: Path) -> None:
    import numpy as np

    rows = json.loads(path.read_text())
    L = np.array([[r["urgency"][v] for v in VALUES] for r in rows])
    y = np.array([VALUES.index(r["expected"]["urgency"]) for r in rows])

    def acc(idx: list[int], b: Any) -> float:
        return float(np.mean(np.argmax(L[idx] + b, 1) == y[idx]))

    def fit_nll(idx: list[int], lam: float) -> Any:
        b = np.zeros(3)
        for _ in range(300):
            z = L[idx] + b
            z = z - z.max(1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(1, keepdims=True)
            b -= 1.5 * (p.mean(0) - np.bincount(y[idx], minlength=3) / len(idx) + lam * b)
        return b - b.mean()

    grid = np.arange(-4, 4.01, 0.25)

    def fit_acc(idx: list[int]) -> Any:
        best: tuple[float, float, Any] = (-1.0, 0.0, None)
        for bl in grid:
            for bh in grid:
                b = np.array([bl, 0, bh])
                key = (acc(idx, b), -(abs(bl) + abs(bh)))
                if key > best[:2]:
                    best = (key[0], key[1], b)
        return best[2]

    def fit_match(idx: list[int]) -> Any:
        target = (np.bincount(y[idx], minlength=3) + 1) / (len(idx) + 3)
        b = np.zeros(3)
        for _ in range(200):
            z = (L[idx] + b) / 0.3
            z -= z.max(1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(1, keepdims=True)
            b += 0.2 * (np.log(target) - np.log(p.mean(0) + 1e-9))
        return b - b.mean()

    print(f"{len(rows)} training emails; urgency accuracy without bias {acc(list(range(len(rows))), 0):.3f}")
    fits: list[tuple[str, Any, int, int]] = [
        ("prior matching", fit_match, 100, 1), ("accuracy grid", fit_acc, 100, 1),
        *((f"log-likelihood lam={lam}", lambda idx, lam=lam: fit_nll(idx, lam), 200, 0) for lam in (0.0, 0.01, 0.1)),
    ]
    for name, fit, draws, seed in fits:
        rng = random.Random(seed)
        for n in (8, 16, 32):
            gains = []
            for _ in range(draws):
                idx = list(range(len(rows)))
                rng.shuffle(idx)
                train, rest = idx[:n], idx[n:]
                gains.append(acc(rest, fit(train)) - acc(rest, np.zeros(3)))
            g = np.array(gains)
            print(f"{name:26s} n={n:2d}: mean gain {g.mean():+.3f}, lost in {(g < 0).mean():.2f} of draws, "
                  f"10th percentile {np.percentile(g, 10):+.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dump", type=Path, required=True, help="the log-probabilities (computed when missing)")
    args = ap.parse_args()
    if not args.dump.exists():
        dump(args.dump)
    analyse(args.dump)


if __name__ == "__main__":
    main()
