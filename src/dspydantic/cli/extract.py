"""``dspydantic extract``: run a saved prompter over files, directories, globs or JSON lines on stdin."""

from __future__ import annotations

import argparse
from typing import Any

from ._shared import add_lm_args


def register(sub: Any) -> None:
    p = sub.add_parser(
        "extract",
        help="extract from files, directories, globs, PDFs, images or JSON lines on stdin",
        description="Run a saved prompter over every input and write one JSON record per input (data, "
        "confidence, usage; or the error). Resumable: inputs whose content already has a successful record in "
        "the output are skipped. Exit status 1 when any input failed.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="file, directory, glob pattern, or - for JSON lines "
                   "on stdin (a string, or an object with text/image_path/image_base64/pdf_path and an optional id)")
    p.add_argument("--prompter", required=True, metavar="PATH", help="a saved prompter directory")
    p.add_argument("--out", required=True, metavar="FILE.jsonl|DIR",
                   help="a JSON-lines file (appended), a directory (one JSON file per input) or - for stdout")
    p.add_argument("--glob", metavar="PATTERN", help="only files whose name matches, in directories (e.g. '*.pdf')")
    p.add_argument("--workers", type=int, default=4, help="inputs extracted at once (default 4)")
    p.add_argument("--html", metavar="DIR",
                   help="also write each answer's review page here (the source with every field's grounded "
                   "spans highlighted, with its confidence)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary unless something failed")
    add_lm_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..errors import DspydanticError
    from ..integrations.extract_files import discover, run_extract
    from ._shared import fail, load_prompter

    if args.workers < 1:
        return fail("--workers must be at least 1")
    try:
        prompter = load_prompter(args.prompter, args)
        sources = list(discover(args.inputs, args.glob, sys.stdin if "-" in args.inputs else None))
    except (DspydanticError, OSError) as exc:
        return fail(str(exc))
    if not sources:
        return fail("no inputs found")
    interactive = sys.stderr.isatty() and not args.quiet
    progress: Any = None
    task: Any = None

    def on_start(n: int) -> None:
        nonlocal progress, task
        if interactive and n:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            # on stderr (the terminal checked above): stdout may carry the records (--out -), and goes
            # around the bar only when it is that terminal too, never into a pipe or a file
            progress = Progress(TextColumn("extract"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                transient=True, console=Console(stderr=True), redirect_stdout=sys.stdout.isatty(),
                                redirect_stderr=False)
            progress.start()
            task = progress.add_task("extract", total=n)

    def on_done(record: dict[str, Any]) -> None:
        if progress is not None:
            progress.advance(task)

    try:
        summary = run_extract(prompter, sources, args.out, workers=args.workers, on_start=on_start, on_done=on_done,
                              html_dir=args.html)
    except (DspydanticError, OSError) as exc:
        return fail(str(exc))
    finally:
        if progress is not None:
            progress.stop()
        prompter.close()
    if summary.failed or (not args.quiet and sys.stderr.isatty()):
        where = "stdout" if args.out == "-" else args.out
        print(f"extract: {summary.extracted} extracted, {summary.skipped} skipped (already in {where}), "
              f"{summary.failed} failed", file=sys.stderr)
        for ident, why in summary.failures[:20]:
            print(f"  failed: {ident}: {why}", file=sys.stderr)
        if len(summary.failures) > 20:
            print(f"  ... and {len(summary.failures) - 20} more (see the error records)", file=sys.stderr)
    return 1 if summary.failed else 0
