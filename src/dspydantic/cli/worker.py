"""``dspydantic worker``: a Celery worker serving saved prompters (``dspydantic[celery]``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "worker",
        help="run a Celery worker that extracts with saved prompters (tasks dspydantic.extract, ...)",
        description="Start a Celery worker with the tasks dspydantic.extract, dspydantic.extract_file and "
        "dspydantic.extract_batch for the given saved prompters. A folder's name is its prompter's name "
        "unless NAME=PATH is given. Any Celery client calls the tasks by name: app.send_task("
        "'dspydantic.extract', kwargs={'prompter': NAME, 'text': ...}). Each worker process loads the "
        "prompters once, after the fork; the embedded model's threads are sized to cores // processes "
        "(DSPYDANTIC_LOCAL_THREADS, unless set).",
    )
    p.add_argument("prompters", nargs="+", metavar="PATH|NAME=PATH", help="saved prompter directories")
    p.add_argument("--broker", required=True, help="broker URL, e.g. redis://localhost:6379/0 or amqp://...")
    p.add_argument("--backend", default=None, help="result backend URL (e.g. redis://localhost:6379/0)")
    p.add_argument("--concurrency", "-c", type=int, default=None, help="worker processes/threads (default: cores)")
    p.add_argument("--pool", choices=("prefork", "threads", "solo"), default="prefork")
    p.add_argument("--queues", "-Q", default=None, help="comma-separated queues to consume (default: celery)")
    p.add_argument("--store", default=None, help="database URL of an ExtractionStore to keep every result in")
    p.add_argument("--loglevel", "-l", default="INFO")
    p.add_argument("--logfile", default=None)
    p.add_argument("--hostname", "-n", default=None, help="the worker's node name")
    p.add_argument("--celery-arg", action="append", default=[], metavar="ARG",
                   help="an extra argument for `celery worker`, e.g. --celery-arg=--without-mingle (repeatable)")
    p.set_defaults(handler=_worker)


def parse_prompter_specs(raw: list[str]) -> dict[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after its folder) -> {name: path}; raises ValueError on a bad one."""
    from pathlib import Path

    specs: dict[str, str] = {}
    for item in raw:
        name, sep, path = item.partition("=")
        if not sep or Path(item).exists():
            name, path = Path(item).resolve().name, item
        if not name or not path:
            raise ValueError(f"{item!r}: expected PATH or NAME=PATH")
        if name in specs:
            raise ValueError(f"two prompters are named {name!r}: give them names with NAME=PATH")
        specs[name] = path
    return specs


def _worker(args: argparse.Namespace) -> int:
    from .._persist import read_saved
    from ..errors import DspydanticError

    try:
        specs = parse_prompter_specs(args.prompters)
        for path in specs.values():
            read_saved(path)  # reads and checks the JSON only: nothing is loaded before the fork
    except (ValueError, DspydanticError) as exc:
        print(f"dspydantic worker: {exc}", file=sys.stderr)
        return 2
    if args.concurrency is not None and args.concurrency < 1:
        print("dspydantic worker: --concurrency must be at least 1", file=sys.stderr)
        return 2
    from ..integrations.celery import make_app

    store: Any = None
    if args.store:
        from ..integrations.store import ExtractionStore

        try:
            store = ExtractionStore(args.store)  # tables created once, here; each process opens its own engine
        except DspydanticError as exc:
            print(f"dspydantic worker: {exc}", file=sys.stderr)
            return 2
    app = make_app(specs, broker=args.broker, backend=args.backend, store=store)
    argv = ["worker", f"--loglevel={args.loglevel}", f"--pool={args.pool}"]
    if args.concurrency is not None:
        argv.append(f"--concurrency={args.concurrency}")
    if args.queues:
        argv += ["--queues", args.queues]
    if args.logfile:
        argv += ["--logfile", args.logfile]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    argv += list(args.celery_arg)
    app.worker_main(argv)
    return 0
