"""Arguments and helpers shared by command modules (argparse only at import; the rest inside functions)."""

from __future__ import annotations

import argparse
from typing import Any


def add_lm_args(parser: argparse.ArgumentParser, *, model: bool = True) -> None:
    if model:
        parser.add_argument("--model", metavar="PKG.MODULE:CLASS",
                            help="the Pydantic model class (default: rebuilt from the saved schema)")
    parser.add_argument("--model-id", help="LM to use instead of the saved one (e.g. openai/gpt-4o-mini, local)")
    parser.add_argument("--api-base", help="OpenAI-compatible endpoint for --model-id (the key comes from "
                        "OPENAI_API_KEY, never from the command line)")


def import_model(spec: str) -> Any:
    """``pkg.module:Class`` -> the class (the current directory is importable, as for uvicorn)."""
    import importlib
    import os
    import sys

    from ..errors import ConfigurationError

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"--model must look like pkg.module:Class, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r} for --model: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigurationError(f"{module_name!r} has no attribute {attr!r}")
    return obj


def lm_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if getattr(args, "model", None):
        kwargs["model"] = import_model(args.model)
    if getattr(args, "model_id", None):
        kwargs["model_id"] = args.model_id
    if getattr(args, "api_base", None):
        kwargs["api_base"] = args.api_base
    return kwargs


def load_prompter(path: str, args: argparse.Namespace) -> Any:
    from .. import Prompter

    return Prompter.load(path, **lm_kwargs(args))


def fail(message: str) -> int:
    """Print ``dspydantic: error: message`` on stderr; the exit status of a usage or configuration error."""
    import sys

    print(f"dspydantic: error: {message}", file=sys.stderr)
    return 2


def read_examples(path: str) -> list[Any]:
    """Examples from a JSON-lines file: ``{"text": ..., "expected_output": {...}}`` per line (also
    ``image_path``/``pdf_path`` instead of ``text``, and any other input keyword of ``Example``, such as
    ``pdf_dpi`` or ``max_pdf_pages``; ``input``/``output`` are accepted as aliases)."""
    import json
    import sys

    from .. import Example
    from .._inputs import INPUT_OPTIONS
    from ..errors import ConfigurationError

    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    examples = []
    try:
        for n, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ConfigurationError(f"{path}:{n} is not JSON: {exc}") from None
            if not isinstance(row, dict):
                raise ConfigurationError(f"{path}:{n} must be a JSON object")
            text = row.get("text", row.get("input"))
            expected = row.get("expected_output", row.get("output"))
            # the other input keywords of the one input spec (image_path, pdf_path, pdf_dpi, max_pdf_pages, ...)
            inputs = {k: v for k, v in row.items() if k in INPUT_OPTIONS}
            try:
                examples.append(Example(text=text, expected_output=expected, **inputs))
            except ConfigurationError as exc:
                raise ConfigurationError(f"{path}:{n}: {exc}") from None
    finally:
        if stream is not sys.stdin:
            stream.close()
    if not examples:
        raise ConfigurationError(f"no examples in {path}")
    return examples
