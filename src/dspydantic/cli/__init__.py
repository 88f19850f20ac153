"""The ``dspydantic`` command. argparse (not typer/click) keeps ``dspydantic --help`` under the cold-start
budget.

Each command group lives in its own module of this package and exposes ``register(subparsers)``, which adds
its parser(s) and sets ``handler`` (a function of the parsed arguments returning the exit status). Command
modules import only argparse at module level; whatever a command needs is imported when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: command modules, in the order their commands appear in ``--help``
COMMAND_MODULES = ("demo", "extract", "optimize", "evaluate", "serve", "worker", "review", "batch")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="dspydantic",
        description="Structured extraction with LLMs into Pydantic models, with prompts optimized by DSPy.",
    )
    parser.add_argument("--version", action="version", version=f"dspydantic {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    from ..errors import DspydanticError

    try:
        return int(handler(args) or 0)
    except DspydanticError as exc:  # a command that let one through: one line, never a traceback
        from ._shared import fail

        return fail(str(exc))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
