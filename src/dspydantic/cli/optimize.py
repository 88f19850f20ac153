"""``dspydantic optimize``: optimize a prompter for a model from labelled examples and save it."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "optimize",
        help="optimize prompts from labelled JSON-lines examples, or from a store's reviewed documents; save it",
        description="Examples come from EXAMPLES.jsonl (each line {\"text\": ..., \"expected_output\": {...}}; "
        "needs --model and --model-id) or from the approved and corrected documents of an ExtractionStore "
        "(--from-store URL with the saved --prompter DIR to start from). The examples are split into train and "
        "validation; the optimized prompter is adopted only if it beats the baseline on validation (see the "
        "README), then saved to --out.",
    )
    p.add_argument("examples", nargs="?", metavar="EXAMPLES.jsonl", help="labelled examples (- for stdin)")
    p.add_argument("--model", metavar="PKG.MODULE:CLASS", help="the Pydantic model class (with EXAMPLES.jsonl)")
    p.add_argument("--model-id", help="the LM (e.g. openai/gpt-4o-mini, local)")
    p.add_argument("--api-base", help="OpenAI-compatible endpoint (the key comes from OPENAI_API_KEY)")
    p.add_argument("--from-store", metavar="URL", help="optimize on the reviewed documents of this ExtractionStore")
    p.add_argument("--prompter", metavar="DIR", help="the saved prompter to optimize (with --from-store)")
    p.add_argument("--name", help="the prompter name the store's documents were stored under (default: the only one)")
    p.add_argument("--out", required=True, metavar="PATH", help="where to save the prompter")
    p.add_argument("--optimizer", default="auto", help="auto, bootstrap, random_search, miprov2, gepa, copro, simba")
    p.add_argument("--budget", "--max-lm-calls", dest="budget", type=int, metavar="N",
                   help="at most N LM calls (max_lm_calls)")
    p.add_argument("--fallback", choices=("original", "baseline"), default=None,
                   help="what to serve when the candidate loses (default: original; baseline with --from-store)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--system-prompt", help="the starting system prompt")
    p.add_argument("--instruction-prompt", help="the starting instruction prompt")
    p.add_argument("--json", action="store_true", help="print the optimization result as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json

    from .. import Prompter
    from ..errors import DspydanticError
    from ._shared import fail, import_model, read_examples

    if args.budget is not None and args.budget < 1:
        return fail("--budget must be at least 1")
    if args.from_store:
        if args.examples is not None:
            return fail("give EXAMPLES.jsonl or --from-store, not both")
        from .review import optimize_from_store

        return optimize_from_store(args)
    missing = [flag for flag, value in (("EXAMPLES.jsonl", args.examples), ("--model", args.model),
                                        ("--model-id", args.model_id)) if value is None]
    if missing:
        return fail(f"optimize needs {', '.join(missing)} (or --from-store URL --prompter DIR)")
    try:
        model = import_model(args.model)
        examples = read_examples(args.examples)
        prompter = Prompter(model=model, model_id=args.model_id, api_base=args.api_base,
                            system_prompt=args.system_prompt, instruction_prompt=args.instruction_prompt)
        result = prompter.optimize(examples, optimizer=args.optimizer, max_lm_calls=args.budget, seed=args.seed,
                                   fallback=args.fallback or "original")
        prompter.save(args.out)
    except (DspydanticError, OSError) as exc:
        return fail(str(exc))
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False, default=str))
    else:
        print(result.summary() if hasattr(result, "summary") else result)
        print(f"saved to {args.out}")
    return 0
