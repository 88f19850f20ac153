"""``dspydantic batch submit|status|fetch``: provider batch jobs (OpenAI Batch API) from the command line."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def register(sub: Any) -> None:
    batch = sub.add_parser(
        "batch",
        help="run a saved prompter over many documents through the provider's batch API (about half price)",
        description="Submit a saved prompter's requests as an OpenAI batch job, follow it, fetch its results. "
        "The job is recorded in a small JSON file (ids only, no secret); the API key comes from "
        "OPENAI_API_KEY.",
    )
    batch.set_defaults(handler=lambda args: _help(batch))
    actions = batch.add_subparsers(dest="batch_command", metavar="ACTION")

    submit = actions.add_parser("submit", help="render, upload and create the batch job")
    submit.add_argument("prompter", help="a saved prompter directory")
    submit.add_argument(
        "inputs",
        help="a .jsonl file (one JSON string, or object of input keywords / template variables, per line) "
        "or a text file (one document per non-empty line)",
    )
    submit.add_argument("--name", help="a name for the job (kept in its record and the batch's metadata)")
    submit.add_argument("--job", help="where to record the job (default: DSPYDANTIC_BATCH_DIR/<id>.json)")
    _lm_options(submit)
    submit.set_defaults(handler=_guarded(_submit))

    status = actions.add_parser("status", help="show where a job stands")
    status.add_argument("job", help="the job file, or a job id in the default directory")
    status.add_argument("--prompter", help="the saved prompter directory (default: the one the job recorded)")
    _lm_options(status)
    status.set_defaults(handler=_guarded(_status))

    fetch = actions.add_parser("fetch", help="write a finished job's results as JSON lines, in input order")
    fetch.add_argument("job", help="the job file, or a job id in the default directory")
    fetch.add_argument("--prompter", help="the saved prompter directory (default: the one the job recorded)")
    fetch.add_argument("--out", help="output file (default: standard output)")
    fetch.add_argument("--wait", action="store_true", help="wait for the job to finish first")
    fetch.add_argument("--poll", type=float, default=30.0, help="seconds between polls with --wait (default 30)")
    fetch.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    fetch.add_argument("--reask", action="store_true", help="re-ask invalid answers through the real-time API")
    fetch.add_argument("--with-confidence", action="store_true", help="add confidence and usage to each line")
    _lm_options(fetch)
    fetch.set_defaults(handler=_guarded(_fetch))


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A typed dspydantic error ends the command with its message (no traceback) and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        import sys

        from dspydantic.errors import DspydanticError

        try:
            return command(args)
        except DspydanticError as exc:
            print(f"dspydantic batch {args.batch_command}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1

    return run


def _lm_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-id", help="the LM (default: the one saved / recorded)")
    parser.add_argument("--api-base", help="an OpenAI-compatible endpoint (default: OPENAI_BASE_URL for submit, "
                        "the recorded one for a job; never the one a saved directory names)")


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _submit(args: argparse.Namespace) -> int:
    from dspydantic import Prompter

    prompter = Prompter.load(args.prompter, **_lm_kwargs(args.model_id, args.api_base))
    job = prompter.submit_batch(
        _read_inputs(args.inputs), name=args.name, path=args.job, prompter_path=args.prompter
    )
    t = job.submit_timings
    print(f"submitted {job.id}: {int(t['items'])} inputs, {int(t['requests'])} requests "
          f"({int(t['uploaded'])} uploaded, {int(t['reused'])} reused, {int(t['cached'])} cached)")
    print(f"record: {job.path}")
    return 0


def _status(args: argparse.Namespace) -> int:
    job = _resume(args)
    status = job.status()
    print(f"{job.id}: {status}")
    for batch_id, state in status.batches.items():
        print(f"  {batch_id}: {state}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    import json
    import sys

    job = _resume(args)
    if args.wait:
        job.wait(poll=args.poll, timeout=args.timeout, on_progress=lambda s: print(s, file=sys.stderr))
    results = job.results(with_confidence=True, reask=args.reask)
    failed = 0
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        for index, result in enumerate(results):
            line: dict[str, Any] = {"index": index}
            if isinstance(result, Exception):
                failed += 1
                line["error"] = {
                    "type": type(result).__name__,
                    "reason": getattr(result, "reason", None),
                    "message": str(result),
                }
            else:
                line["data"] = result.data.model_dump(mode="json")
                if args.with_confidence:
                    line.update(confidence=result.confidence, attempts=result.attempts)
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    cost = job.cost_usd
    print(
        f"{len(results)} results: {len(results) - failed} ok, {failed} failed; "
        f"{job.usage.prompt_tokens} prompt + {job.usage.completion_tokens} completion tokens"
        + (f" (+{job.reask_usage.total_tokens} re-asking)" if job.reask_usage.total_tokens else "")
        + (f", ~${cost:.4f}" if cost is not None else ""),
        file=sys.stderr,
    )
    return 0


def _resume(args: argparse.Namespace) -> Any:
    from dspydantic import ConfigurationError, Prompter
    from dspydantic.integrations._batch_records import load

    record, path = load(args.job, store=None)
    prompter_dir = args.prompter or record.get("prompter_path")
    if not prompter_dir:
        raise ConfigurationError(f"the job {record['id']} recorded no prompter directory: pass --prompter DIR")
    prompter = Prompter.load(
        prompter_dir, **_lm_kwargs(args.model_id or record.get("model_id"), args.api_base or record["endpoint"])
    )
    return prompter.resume_batch(path if path is not None else args.job)


def _lm_kwargs(model_id: str | None, api_base: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if model_id:
        kwargs["model_id"] = model_id
    if api_base:
        kwargs["api_base"] = api_base
    return kwargs


def _read_inputs(path: str) -> list[Any]:
    import json

    from dspydantic import ConfigurationError

    items: list[Any] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if not path.endswith(".jsonl"):
                items.append(line.rstrip("\n"))
                continue
            try:
                value = json.loads(line)
            except ValueError:
                raise ConfigurationError(f"{path}:{number} is not JSON") from None
            if not isinstance(value, str | dict):
                raise ConfigurationError(f"{path}:{number}: expected a JSON string or object")
            items.append(value)
    return items
