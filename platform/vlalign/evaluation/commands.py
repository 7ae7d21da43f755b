"""`vlalign eval`: evaluate a model's safety on eval shards and print the scorecard table."""

from __future__ import annotations

import argparse
import time


def cmd_eval(args: argparse.Namespace) -> int:
    """Parse -> evaluate() -> print the table and where the outputs are."""
    from vlalign.config.loading import load_recipe
    from vlalign.config.schema import Recipe
    from vlalign.errors import VlalignError
    from vlalign.evaluation.report import HTML_NAME, PNG_NAME, print_table
    from vlalign.evaluation.runner import evaluate
    from vlalign.scorecard import JSON_NAME
    from vlalign.tracking.model_fetch import MlflowFetch
    from vlalign.tracking.store import resolve_store

    if args.overrides and not args.recipe:
        raise VlalignError("KEY=VALUE overrides need --recipe")
    for flag, v in (
        ("--workers", args.workers),
        ("--max-samples", args.max_samples),
        ("--batch-size", args.batch_size),
    ):
        if v is not None and v < 1:
            raise VlalignError(f"{flag} must be >= 1, got {v}")
    recipe = load_recipe(args.recipe, args.overrides) if args.recipe else Recipe()
    out = args.out or f"eval/{args.name}"
    store = resolve_store(args.tracking_uri or recipe.tracking.uri)
    uri = store.uri
    print(f"eval {args.model}: {store.describe()}")
    t0 = time.perf_counter()
    card = evaluate(
        args.model,
        args.data,
        recipe,
        out,
        args.workers,
        name=args.name,
        max_samples=args.max_samples,
        batch_size=args.batch_size,
        fetch=MlflowFetch(uri, store.registry),
        progress=True,
        splits=args.split,
    )
    if args.run:
        from vlalign.tracking.scorecard_log import log_scorecard

        log_scorecard(card, args.run, args.name, tracking_uri=uri)
    print_table(card)
    n = sum(int(d["metrics"]["n_total"]) for d in card.splits.values())
    where = f", {len(card.splits)} splits" if len(card.splits) > 1 else ""
    print(
        f"wrote {out}/{JSON_NAME}, {out}/{PNG_NAME}, {out}/{HTML_NAME} "
        f"({n} prompts{where}, {time.perf_counter() - t0:.1f} s)"
    )
    if args.run:
        print(f"logged to MLflow run {args.run} under eval/{args.name}/")
    return 0


def register(subparsers) -> None:
    """Add `eval` to the vlalign command tree."""
    p = subparsers.add_parser(
        "eval",
        help="safety evaluation: refusal rates, over-refusal, validity -> scorecard",
        description=(
            "Generate answers for every eval prompt and score them: harmful/benign refusal "
            "rates, attack success, text validity, per-category rates, pair accuracy. Every "
            "eval split of the shard set (held-out and shifted) is scored and reported apart. "
            "Writes scorecard.json, PNG charts and an HTML page."
        ),
    )
    p.add_argument(
        "--model",
        required=True,
        help="PATH (adapter or model dir), models:/NAME@ALIAS, runs:/RUN_ID/PATH, RUN id, builtin:NAME",
    )
    p.add_argument(
        "--data", help="eval shard directory (default: the recipe's eval.data / data.eval)"
    )
    p.add_argument(
        "--recipe", help="recipe file or shipped name (decoding, max_length, base model)"
    )
    p.add_argument("--out", help="output directory (default eval/NAME)")
    p.add_argument(
        "--split",
        action="append",
        help="score only this eval split (repeatable; default: every eval split of --data)",
    )
    p.add_argument("--workers", type=int, help="Ray workers to split the eval set across")
    p.add_argument("--max-samples", type=int, help="evaluate only the first N prompts")
    p.add_argument("--batch-size", type=int, help="prompts per generation batch")
    p.add_argument("--name", default="safety", help="scorecard name (MLflow: eval/NAME/...)")
    p.add_argument("--run", help="MLflow run id to log the scorecard to")
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: the recipe's, else MLFLOW_TRACKING_URI, else ./mlruns)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="recipe overrides, e.g. eval.max_new_tokens=8",
    )
    p.set_defaults(func=cmd_eval)
