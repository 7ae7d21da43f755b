"""The `vlalign` command: parses arguments and calls library functions (nothing else).

Each capability area registers its own subcommands from a small `commands` module, so this
file stays a thin table. User errors (VlalignError) print one clear message and exit 2;
`--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from vlalign import __version__
from vlalign.errors import VlalignError

# Modules that add subcommands: each has `register(subparsers) -> None`.
COMMAND_MODULES = [
    "data_pipeline.commands",
    "vlalign.training.commands",
    "vlalign.evaluation.commands",
    "vlalign.tracking.commands",
    "vlalign.orchestration.commands",
    "vlalign.demo",
]


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. train.lr=3e-5"
    )


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate a recipe (schema, files, manifests, model family) and print a summary."""
    from vlalign.config.checks import check_recipe
    from vlalign.config.loading import load_recipe, recipe_problems
    from vlalign.config.preflight import fetch_problems

    recipe = load_recipe(args.recipe, args.overrides)
    problems = check_recipe(recipe)
    if not args.elsewhere:
        problems += fetch_problems(recipe)
    if problems:
        raise recipe_problems(args.recipe, problems, args.overrides)
    m, t = recipe.method, recipe.train
    print(f"ok: {args.recipe} ({recipe.name})")
    print(f"  model    {recipe.model.name} [{recipe.family}] {recipe.model.dtype}")
    knobs = m.model_dump(mode="json", exclude_defaults=True, exclude={"name", "loss"})
    if hasattr(m, "reference"):
        knobs.setdefault("reference", m.reference)
    shown = " ".join(f"{k}={v}" for k, v in knobs.items())
    print(f"  method   {m.name} loss={m.loss} {shown}".rstrip())
    print(f"  peft     {recipe.peft.mode} r={recipe.peft.r} alpha={recipe.peft.alpha}")
    print(
        f"  train    {t.max_steps} steps x {t.micro_batch_size} x accum {t.grad_accum} lr={t.lr} {t.schedule}"
    )
    print(
        f"  engine   ZeRO-{recipe.engine.zero_stage} {recipe.engine.precision}; workers={recipe.resources.num_workers}"
    )
    print(f"  data     train={recipe.data.train or '(synthesized)'} eval={recipe.data.eval or '-'}")
    gates = ", ".join(f"{g.metric} {g.op} {g.value}" for g in recipe.promotion.gates) or "-"
    print(f"  gates    {gates}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    """List shipped recipes with their one-line descriptions."""
    from vlalign.config.loading import load_recipe, shipped_recipes

    if args.catalog:
        return _print_catalog()
    recipes = shipped_recipes()
    width = max((len(n) for n in recipes), default=10)
    for name, path in recipes.items():
        try:
            r = load_recipe(path)
            desc, method = f"{r.method.name}/{r.method.loss}", r.description
        except VlalignError as e:
            desc, method = "?", f"(invalid: {e})"
        print(f"{name:<{width}}  {desc:<20}  {method}")
    return 0


def _print_catalog() -> int:
    """Methods, losses and model families vlalign knows (the catalog), one line each."""
    from vlalign import catalog

    print("methods (method.name):")
    for m in catalog.METHODS.values():
        losses = ", ".join(catalog.losses_for(m.name))
        print(f"  {m.name:<8} {m.summary} [batches: {m.batch_kind}; losses: {losses}]")
    print("losses (method.loss):")
    for x in catalog.LOSSES.values():
        flags = [
            f
            for f, on in (
                ("reference-free", x.reference_free),
                ("label smoothing", x.label_smoothing),
            )
            if on
        ]
        extra = f" [{', '.join(flags)}]" if flags else ""
        paper = f" ({x.paper})" if x.paper else ""
        print(f"  {x.name:<14} {x.kind:<10} {x.summary}{paper}{extra}")
    print("model families (model.family):")
    for f in catalog.FAMILIES.values():
        tiny = f" [built-in: {f.builtin}]" if f.builtin else ""
        print(f"  {f.name:<11} {f.summary}{tiny}")
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    """Copy a shipped recipe to DEST for editing (its `extends` chain stays resolvable)."""
    from vlalign.config.loading import find_recipe, load_recipe, recipe_to_yaml

    src = find_recipe(args.name)
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists() and not args.force:
        raise VlalignError(f"{dest} exists (use --force to overwrite)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if args.resolve:
        dest.write_text(recipe_to_yaml(load_recipe(src)))
    else:
        text = src.read_text()
        if "extends:" in text:  # a shipped base is found by name from anywhere
            text = text.replace(_extends_line(text), f"extends: {_shipped_name_of_base(src)}")
        dest.write_text(text)
    print(f"copied {args.name} -> {dest}")
    return 0


def _extends_line(text: str) -> str:
    return next(ln for ln in text.splitlines() if ln.startswith("extends:"))


def _shipped_name_of_base(src: Path) -> str:
    import yaml

    from vlalign.config.loading import RECIPES_DIR

    base = yaml.safe_load(src.read_text())["extends"]
    p = (src.parent / base).resolve()
    if p.is_file():
        try:
            return str(p.relative_to(RECIPES_DIR).with_suffix(""))
        except ValueError:
            return str(p)
    return base


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = argparse.ArgumentParser(
        prog="vlalign",
        description="Safety alignment of vision-language models: one recipe, CPU to GPU cluster.",
    )
    parser.add_argument("--version", action="version", version=f"vlalign {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("validate", help="check a recipe before anything starts")
    p.add_argument("recipe", help="recipe file or shipped name (see `vlalign ls`)")
    _add_overrides(p)
    p.add_argument(
        "--elsewhere",
        action="store_true",
        help="the recipe will run on another machine: skip checking that its hub model "
        "can be fetched here",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("ls", help="list the shipped recipes (--catalog: methods, losses, families)")
    p.add_argument(
        "--catalog", action="store_true", help="list the methods, losses and model families"
    )
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("cp", help="copy a shipped recipe for editing")
    p.add_argument("name", help="shipped recipe name, e.g. tiny/dpo")
    p.add_argument("dest", help="destination file or directory")
    p.add_argument("--force", action="store_true", help="overwrite DEST")
    p.add_argument(
        "--resolve", action="store_true", help="write the fully resolved recipe (no extends)"
    )
    p.set_defaults(func=cmd_cp)

    for mod in COMMAND_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:  # an area not installed in this build
            if e.name != mod:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `vlalign run R --no-ray a.b=1`: overrides may follow options.
    if extra:
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except VlalignError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
