"""`vlalign data ...`: synth, convert, validate, stats (thin: parse, call, print)."""

from __future__ import annotations

import argparse
import json

from data_pipeline.defaults import CONVERTER_FORMATS, DEFAULT_MAX_BYTES, DEFAULT_MAX_SAMPLES


def cmd_synth(args: argparse.Namespace) -> int:
    from data_pipeline.synth import synthesize

    summary = synthesize(
        args.out,
        pairs=args.pairs,
        seed=args.seed,
        eval_pairs=args.eval_pairs,
        shift_pairs=args.shift_pairs,
        image_size=args.image_size,
        shard_samples=args.shard_samples,
        noise=args.noise,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(f"wrote {summary['out']}  digest {summary['dataset_digest']}")
    if summary["noisy_samples"]:
        print(
            f"  noise {summary['noise']:g}: {summary['noisy_samples']} training pairs with a "
            "partly right chosen answer (meta noise=partial_chosen)"
        )
    for name, s in summary["splits"].items():
        cats = ", ".join(f"{k} {v}" for k, v in s["categories"].items())
        print(
            f"  {name:<13} {s['kind']:<10} {s['samples']:>6} samples, {s['shards']} shards  ({cats})"
        )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from data_pipeline.converters import convert

    r = convert(
        args.format,
        args.src,
        args.out,
        split=args.split,
        kind=args.kind,
        image_root=args.image_root,
        meta=args.meta,
        label=args.label,
        on_error=args.on_error,
        limit=args.limit,
        max_samples=args.shard_samples,
        max_bytes=args.shard_bytes,
        overwrite=args.overwrite,
        progress=not args.quiet,
        shift=args.shift,
    )
    print(
        f"wrote split {r['split']} ({r['kind']}) of {r['out']}: {r['samples']} samples, "
        f"{r['skipped']} skipped; digest {r['dataset_digest']}"
    )
    for reason in r["skip_reasons"][:20]:
        print(f"  skipped: {reason}")
    if r["skipped"] > 20:
        print(f"  ... and {r['skipped'] - 20} more")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from data_pipeline.validate import validate

    report = validate(args.dir, args.split or None, progress=not args.quiet)
    for p in report.problems:
        print(f"BAD {p}")
    status = "ok" if report.ok else f"{len(report.problems)} problem(s)"
    print(
        f"{status}: {report.location}: {report.samples} samples, {report.images} images in "
        f"{report.shards} shards; digest {report.digest}"
    )
    return 0 if report.ok else 2  # bad data is a user error, like every other one


def _encoder_for(recipe):
    """The recipe's chat encoder (processor only, no model), for token lengths."""
    from vlalign.models.builder import detect_family, resolve_source
    from vlalign.models.inputs import ChatEncoder
    from vlalign.models.processors import load_processor

    source = resolve_source(recipe.model)
    family = detect_family(recipe.model, source)
    processor = load_processor(
        source, family, recipe.model.trust_remote_code, recipe.model.revision
    )
    return ChatEncoder(processor, family, max_length=1 << 30)


def cmd_stats(args: argparse.Namespace) -> int:
    from data_pipeline.stats import compute_stats, format_stats

    recipe, encoder = None, None
    if args.recipe:
        from vlalign.config.loading import load_recipe

        recipe = load_recipe(args.recipe)
        encoder = _encoder_for(recipe)
    stats = compute_stats(
        args.dir, recipe, args.split or None, encoder=encoder, progress=not args.quiet
    )
    print(json.dumps(stats, indent=1) if args.json else format_stats(stats))
    return 0


def register(subparsers) -> None:
    """Add the `data` command group to the vlalign CLI."""
    data = subparsers.add_parser("data", help="make, convert, validate and inspect shard sets")
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data.set_defaults(func=lambda a: (data.print_help(), 0)[1])

    p = sub.add_parser("synth", help="write the image-conditioned safety data set")
    p.add_argument("out", help="output shard-set directory")
    p.add_argument("--pairs", type=int, default=512, help="training preference pairs (default 512)")
    p.add_argument(
        "--eval-pairs", type=int, default=None, help="eval samples (default max(64, pairs/4))"
    )
    p.add_argument(
        "--shift-pairs",
        type=int,
        default=None,
        help="samples in each shifted eval split shift-visual/-wording/-both (default: as eval; 0: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed (the output is deterministic from it)")
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="noisy-preference variant: this fraction of training pairs get a partly right "
        "chosen answer and a worse rejected one with the same flaw (default 0: clean)",
    )
    p.add_argument(
        "--shard-samples", type=int, default=DEFAULT_MAX_SAMPLES, help="samples per shard"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard set")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("convert", help="convert a published data set layout into shards")
    p.add_argument("--format", required=True, choices=CONVERTER_FORMATS, help="source layout")
    p.add_argument("src", help="source file or directory")
    p.add_argument("out", help="output shard-set directory (other splits in it are kept)")
    p.add_argument("--split", default="train", help="split name to write (default train)")
    p.add_argument(
        "--kind", choices=["sft", "preference", "eval"], help="record kind (default per format)"
    )
    p.add_argument("--image-root", help="folder image paths are relative to")
    p.add_argument("--meta", help="spa-vl: meta.json joining categories by image name")
    p.add_argument("--label", choices=["harmful", "benign"], help="spa-vl eval rows: their label")
    p.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default="raise",
        help="bad rows: stop or skip (counted)",
    )
    p.add_argument("--limit", type=int, help="convert at most this many samples")
    p.add_argument(
        "--shard-samples", type=int, default=DEFAULT_MAX_SAMPLES, help="samples per shard"
    )
    p.add_argument("--shard-bytes", type=int, default=DEFAULT_MAX_BYTES, help="bytes per shard")
    p.add_argument("--overwrite", action="store_true", help="replace the split if it exists")
    p.add_argument(
        "--shift",
        help="mark an eval split as shifted from training, e.g. no-leak (scored apart by eval)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("validate", help="check hashes, images and records of a shard set")
    p.add_argument("dir", help="shard-set directory or URL prefix")
    p.add_argument("--split", action="append", help="only this split (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("stats", help="counts, categories, image sizes, token lengths")
    p.add_argument("dir", help="shard-set directory or URL prefix")
    p.add_argument("--recipe", help="recipe whose processor measures token lengths")
    p.add_argument("--split", action="append", help="only this split (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_stats)
