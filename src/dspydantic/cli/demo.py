"""``dspydantic demo`` and ``dspydantic model``: the offline demo and the embedded model file."""

from __future__ import annotations

import argparse
from typing import Any

from ._shared import fail


def register(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="optimize and run an invoice extractor on the embedded local model (offline, no key)",
        description="Split the bundled invoice dataset, score the baseline on held-out invoices, optimize, "
        "save, reload and score again; prints a before/after table.",
    )
    demo.add_argument("--model-id", default="local", help="LM to use (default: the embedded local model)")
    demo.add_argument("--optimizer", default="auto", help="optimizer name (default: auto)")
    demo.add_argument("--out", default="./demo_invoice_prompter", help="where to save the optimized prompter")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quick", action="store_true", help="a smaller run (fewer examples, smaller budget)")
    demo.set_defaults(handler=_demo)

    model = sub.add_parser("model", help="show (and assemble) the embedded local model file")
    model.add_argument("name", nargs="?", default="qwen2.5-0.5b",
                       help="a known model (qwen2.5-0.5b, smollm2-135m) or the path of a .gguf file")
    model.set_defaults(handler=_model)


def _demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(model_id=args.model_id, optimizer=args.optimizer, out=args.out, seed=args.seed, quick=args.quick)


def _model(args: argparse.Namespace) -> int:
    from ..errors import ConfigurationError, MissingExtraError
    from ..lm._assemble import KNOWN_MODELS
    from ..lm.local import local_model_path

    try:
        path = local_model_path(args.name)
    except MissingExtraError as exc:
        return fail(f"{exc} (the model {args.name!r} comes with that extra)")
    except ConfigurationError as exc:
        if args.name in KNOWN_MODELS or not str(exc).startswith("unknown local model"):
            return fail(str(exc))  # e.g. a .gguf path that does not exist
        known = ", ".join(sorted(KNOWN_MODELS))
        return fail(f"unknown model {args.name!r}; the known models are {known} (or give the path of a .gguf file)")
    print(path)
    return 0
