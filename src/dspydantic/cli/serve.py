"""``dspydantic serve``: saved prompters behind an HTTP API (FastAPI under uvicorn; the ``[server]`` extra)."""

from __future__ import annotations

import argparse
from typing import Any

from ._shared import add_lm_args


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve saved prompters over HTTP (POST /extract/NAME, /review/ID, /metrics, /healthz, /readyz)",
        description="Serve each saved prompter at /extract/NAME (NAME=PATH names it; otherwise the folder's "
        "name does). When DSPYDANTIC_API_TOKEN is set, requests need 'Authorization: Bearer <token>'. SIGTERM "
        "or Ctrl-C stops taking connections, lets in-flight requests finish, then exits.",
    )
    p.add_argument("prompters", nargs="+", metavar="[NAME=]PATH", help="saved prompter directories")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (each loads every prompter; the local model's threads are split)")
    p.add_argument("--max-body-bytes", type=int, default=10 * 1024 * 1024, help="larger requests get 413")
    p.add_argument("--max-batch-items", type=int, default=256)
    p.add_argument("--batch-concurrency", type=int, default=16, help="batch items extracted at once per worker")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow this origin by CORS (repeatable; CORS is off without it)")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds in-flight requests get to finish on shutdown (default 30)")
    p.add_argument("--min-confidence", metavar="N|JSON",
                   help="refuse (422) answers with a field below this, for requests that give no min_confidence: "
                   "a number for every field, or a JSON map of field paths, e.g. '{\"total\": 0.9, \"*\": 0.6}'")
    p.add_argument("--store", metavar="URL",
                   help="record every extraction in this ExtractionStore (SQLAlchemy URL, the [db] extra): "
                   "answers under --review-below go to its review queue; /review/ID reads it")
    p.add_argument("--review-below", metavar="N|JSON",
                   help="the store's review threshold: a number for every field (default 0.8) or a JSON map "
                   "of field paths to numbers, e.g. '{\"total\": 0.9, \"*\": 0.6}'")
    p.add_argument("--review-keep", type=int, default=256,
                   help="recent answers each worker keeps for /review/ID without a store (default 256)")
    p.add_argument("--log-level", default="info")
    add_lm_args(p, model=False)  # each worker rebuilds the model classes from the saved schemas
    p.set_defaults(handler=run)


def parse_targets(values: list[str]) -> dict[str, str]:
    """``[NAME=]PATH`` -> {name: path}; the name defaults to the directory's name."""
    from pathlib import Path

    from ..errors import ConfigurationError
    from ..integrations._server_prompters import check_name

    out: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value.rstrip("/\\")).name, value
        check_name(name)
        if not Path(path).is_dir():
            raise ConfigurationError(f"{path!r} is not a saved prompter directory")
        if name in out:
            raise ConfigurationError(f"two prompters named {name!r}: name them with NAME=PATH")
        out[name] = str(Path(path).resolve())
    return out


def run(args: argparse.Namespace) -> int:
    import json
    import logging
    import os
    import shutil
    import tempfile

    from ..errors import DspydanticError, MissingExtraError
    from ._shared import fail

    log = logging.getLogger("dspydantic.server")
    if args.workers < 1:
        return fail("--workers must be at least 1")
    try:
        import uvicorn
    except ImportError:
        return fail(str(MissingExtraError("server", "uvicorn")))
    try:
        targets = parse_targets(args.prompters)  # imports the service (fastapi): a missing extra is said here
        from .._persist import read_saved
        from ..integrations.thresholds import check_threshold

        review_below = _threshold("--review-below", args.review_below)
        min_confidence = _threshold("--min-confidence", args.min_confidence)
        for name, path in targets.items():
            saved = read_saved(path)  # refuse a broken directory here, before any worker starts
            if min_confidence is not None:
                check_threshold(min_confidence, what=f"--min-confidence (serving {name!r})", schema=saved.schema)
        if args.store:
            from ..integrations.store import ExtractionStore

            # open it here: a bad URL, a missing driver or an unreachable database is said before any worker
            ExtractionStore(args.store, **({"review_below": review_below} if review_below is not None else {})).close()
    except (DspydanticError, ImportError) as exc:
        return fail(str(exc))
    if args.review_keep < 0:
        return fail("--review-keep must be 0 or more")
    load_kwargs: dict[str, Any] = {}
    for key in ("model_id", "api_base"):
        value = getattr(args, key, None)
        if value:
            load_kwargs[key] = value
    config = {
        "prompters": targets,
        "load_kwargs": load_kwargs,
        "max_body_bytes": args.max_body_bytes,
        "max_batch_items": args.max_batch_items,
        "batch_concurrency": args.batch_concurrency,
        "cors_origins": list(args.cors_origin),
        "review_keep": args.review_keep,
        "store": args.store,
        "review_below": review_below,
        "min_confidence": min_confidence,
    }
    os.environ["DSPYDANTIC_SERVE_CONFIG"] = json.dumps(config)
    metrics_dir = None
    if args.workers > 1:
        if "DSPYDANTIC_LOCAL_THREADS" not in os.environ:
            threads = max(1, (os.cpu_count() or 1) // args.workers)
            os.environ["DSPYDANTIC_LOCAL_THREADS"] = str(threads)
            log.warning("serve: %d workers, %d llama.cpp thread(s) each (DSPYDANTIC_LOCAL_THREADS)",
                        args.workers, threads)
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:  # /metrics sums every worker
            metrics_dir = tempfile.mkdtemp(prefix="dspydantic-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(
            "dspydantic.integrations.server:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            timeout_graceful_shutdown=args.graceful_timeout,
            access_log=False,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _threshold(flag: str, value: str | None) -> Any:
    """``--review-below`` / ``--min-confidence``: a number, or a JSON object of field paths to numbers
    (their range and field names are checked where they are used)."""
    import json

    from ..errors import ConfigurationError

    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        raise ConfigurationError(f"{flag} {value!r} is neither a number nor a JSON object") from None
    if not isinstance(parsed, int | float | dict) or isinstance(parsed, bool):
        raise ConfigurationError(f"{flag} {value!r} is neither a number nor a JSON object")
    return parsed
