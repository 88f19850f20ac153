"""``dspydantic review list|approve|correct`` over an ExtractionStore, and ``dspydantic optimize
--from-store URL``: the review loop from the command line (``dspydantic[db]``).

The ``optimize`` command (:mod:`dspydantic.cli.optimize`) takes its examples from a JSON-lines file or,
with ``--from-store``, from a store's reviewed documents through :func:`optimize_from_store` here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

STORE_ENV = "DSPYDANTIC_STORE_URL"


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=os.environ.get(STORE_ENV), required=STORE_ENV not in os.environ,
                   help=f"database URL of the ExtractionStore (default: ${STORE_ENV})")


def register(sub: Any) -> None:
    review = sub.add_parser("review", help="the review queue of an ExtractionStore: list, approve, correct",
                            description="Results under the store's confidence threshold, and failed "
                            "extractions, wait for review; approved and corrected ones become the examples "
                            "of `dspydantic optimize --from-store`.")
    actions = review.add_subparsers(dest="review_action", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="documents waiting for review (or all, with --all)")
    _store_arg(ls)
    ls.add_argument("--name", default=None, help="only this prompter's documents")
    ls.add_argument("--all", action="store_true", help="every document, whatever its status")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(handler=_list)
    ok = actions.add_parser("approve", help="confirm the extracted data of documents (by id or unique prefix)")
    _store_arg(ok)
    ok.add_argument("ids", nargs="+", metavar="ID")
    ok.set_defaults(handler=_approve)
    fix = actions.add_parser("correct", help="give the right data for a document")
    _store_arg(fix)
    fix.add_argument("id", metavar="ID")
    group = fix.add_mutually_exclusive_group(required=True)
    group.add_argument("--data", help="the corrected data as a JSON object")
    group.add_argument("--data-file", help="a file holding the corrected data as a JSON object")
    fix.set_defaults(handler=_correct)


def _open(url: str) -> Any:
    from ..integrations.store import ExtractionStore

    return ExtractionStore(url)


def _fail(message: str) -> int:
    print(f"dspydantic: {message}", file=sys.stderr)
    return 2


def _input_preview(doc: Any, width: int = 60) -> str:
    value = doc.input.get("text") or doc.input.get("pdf_path") or doc.input.get("image_path") or doc.input.get("kind")
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _list(args: argparse.Namespace) -> int:
    from ..errors import DspydanticError

    try:
        store = _open(args.store)
        docs = store.documents(name=args.name, limit=args.limit) if args.all else store.pending(
            name=args.name, limit=args.limit)
    except DspydanticError as exc:
        return _fail(str(exc))
    if args.json:
        for doc in docs:
            print(json.dumps(doc.to_json(), ensure_ascii=False))
        return 0
    for doc in docs:
        conf = "  -  " if doc.confidence is None else f"{doc.confidence:5.2f}"
        detail = doc.error if doc.status == "failed" else json.dumps(doc.label, ensure_ascii=False)
        print(f"{doc.id[:12]}  {doc.status:<9} {conf}  {doc.prompter_name:<16} {_input_preview(doc)}")
        print(f"{'':14}{detail}")
    counts = store.counts(name=args.name)
    print(f"{len(docs)} shown; " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return 0


def _resolve(store: Any, prefix: str) -> str:
    from ..errors import ConfigurationError

    matches = store.find_ids(prefix)
    if len(matches) != 1:
        raise ConfigurationError(f"no document id starts with {prefix!r}" if not matches
                                 else f"{len(matches)} document ids start with {prefix!r}: give more of it")
    return str(matches[0])


def _approve(args: argparse.Namespace) -> int:
    from ..errors import DspydanticError

    try:
        store = _open(args.store)
        for prefix in args.ids:
            doc = store.approve(_resolve(store, prefix))
            print(f"approved {doc.id[:12]}")
    except DspydanticError as exc:
        return _fail(str(exc))
    return 0


def _correct(args: argparse.Namespace) -> int:
    from ..errors import DspydanticError

    try:
        raw = args.data if args.data is not None else Path(args.data_file).read_text(encoding="utf-8")
        data = json.loads(raw)
    except OSError as exc:
        return _fail(f"cannot read {args.data_file!r}: {exc.strerror or exc}")
    except json.JSONDecodeError as exc:
        return _fail(f"the corrected data is not valid JSON: {exc}")
    try:
        store = _open(args.store)
        doc = store.correct(_resolve(store, args.id), data)
    except DspydanticError as exc:
        return _fail(str(exc))
    print(f"corrected {doc.id[:12]}")
    return 0


def optimize_from_store(args: argparse.Namespace) -> int:
    """Load ``--prompter``, optimize it on the store's reviewed examples, save it to ``--out``."""
    from .._prompter import Prompter
    from ..errors import DspydanticError

    url, saved, out = args.from_store, args.prompter, args.out
    if not (url and saved and out):
        return _fail("optimize --from-store URL needs --prompter DIR and --out DIR")
    try:
        store = _open(url)
        name = args.name
        if name is None:
            names = sorted({d.prompter_name for d in store.documents(status=("approved", "corrected"))})
            if len(names) > 1:
                return _fail(f"the store holds reviewed documents of several prompters {names}: pick one with --name")
        examples = store.examples(name=name)
        if not examples:
            return _fail("the store has no approved or corrected documents yet (dspydantic review approve|correct)")
        prompter = Prompter.load(saved)
        kwargs: dict[str, Any] = {"optimizer": args.optimizer, "seed": args.seed,
                                  "fallback": args.fallback or "baseline"}
        if args.budget is not None:
            kwargs["max_lm_calls"] = args.budget
        result = prompter.optimize(examples, **kwargs)
        prompter.save(out)
    except DspydanticError as exc:
        return _fail(str(exc))
    print(f"{len(examples)} reviewed examples; optimizer {result.optimizer}: baseline {result.baseline_score:.3f}, "
          f"optimized {result.optimized_score:.3f}, accepted {result.accepted}")
    print(result.message)
    print(f"saved to {out}")
    return 0
