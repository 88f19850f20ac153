"""The ``dspydantic`` command. argparse (not typer/click) keeps ``dspydantic --help`` under the cold-start
budget; every subcommand imports what it needs only when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="dspydantic",
        description="Structured extraction with LLMs into Pydantic models, with prompts optimized by DSPy.",
    )
    parser.add_argument("--version", action="version", version=f"dspydantic {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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

    model = sub.add_parser("model", help="show (and assemble) the embedded local model file")
    model.add_argument("name", nargs="?", default="qwen2.5-0.5b", help="qwen2.5-0.5b or smollm2-135m")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(
            model_id=args.model_id, optimizer=args.optimizer, out=args.out, seed=args.seed, quick=args.quick
        )
    if args.command == "model":
        from .lm.local import local_model_path

        print(local_model_path(args.name))
        return 0
    _parser().print_help()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
