"""``dspydantic evaluate``: score a saved prompter on labelled JSON-lines examples."""

from __future__ import annotations

import argparse
from typing import Any

from ._shared import add_lm_args


def register(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a saved prompter on labelled JSON-lines examples (per-field table, or --json)",
        description="Each line of EXAMPLES.jsonl is {\"text\": ..., \"expected_output\": {...}}. Prints the "
        "overall score, precision/recall/F1 and the score of each field.",
    )
    p.add_argument("examples", metavar="EXAMPLES.jsonl", help="labelled examples (- for stdin)")
    p.add_argument("--prompter", required=True, metavar="PATH", help="a saved prompter directory")
    p.add_argument("--evaluator", help="evaluator name for every field (default: exact)")
    p.add_argument("--workers", type=int, default=4, help="examples run at once (default 4)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_lm_args(p)
    p.set_defaults(handler=run)


def report_json(report: Any) -> dict[str, Any]:
    u = report.usage
    return {
        "score": report.score,
        "accuracy": report.accuracy,
        "precision": report.precision,
        "recall": report.recall,
        "f1": report.f1,
        "n": report.n,
        "per_field": dict(report.per_field),
        "failures": [
            {"index": f.index, "score": f.score, "expected": f.expected, "predicted": f.predicted,
             "field_scores": f.field_scores, "error": f.error}
            for f in report.failures
        ],
        "usage": {"calls": u.calls, "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                  "cache_hits": u.cache_hits, "cost_usd": u.cost_usd},
    }


def run(args: argparse.Namespace) -> int:
    import json

    from ..errors import DspydanticError
    from ._shared import fail, load_prompter, read_examples

    if args.workers < 1:
        return fail("--workers must be at least 1")
    try:
        prompter = load_prompter(args.prompter, args)
        examples = read_examples(args.examples)
        report = prompter.evaluate(examples, evaluator=args.evaluator, num_threads=args.workers)
    except (DspydanticError, OSError) as exc:
        return fail(str(exc))
    if args.json:
        print(json.dumps(report_json(report), ensure_ascii=False, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.prompter}: {report.n} examples")
    table.add_column("field")
    table.add_column("score", justify="right")
    for path, score in sorted(report.per_field.items()):
        table.add_row(path, f"{score:.3f}")
    console = Console()
    console.print(table)
    console.print(f"score {report.score:.3f}   accuracy {report.accuracy:.3f}   P {report.precision:.3f}   "
                  f"R {report.recall:.3f}   F1 {report.f1:.3f}   ({len(report.failures)} not fully right)")
    return 0
