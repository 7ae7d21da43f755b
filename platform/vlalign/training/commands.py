"""`vlalign run`: run a recipe on Ray (default) or in local processes (`--no-ray [--nproc N]`)."""

from __future__ import annotations

import argparse

from vlalign.errors import VlalignError


def cmd_run(args: argparse.Namespace) -> int:
    from vlalign.config.checks import check_recipe
    from vlalign.config.loading import load_recipe, recipe_problems
    from vlalign.config.preflight import fetch_problems
    from vlalign.orchestration.cluster import probe_address, resolve_address

    recipe = load_recipe(args.recipe, args.overrides)
    problems = check_recipe(recipe)
    address = None if args.no_ray else resolve_address(args.address, recipe)
    if address is None:  # the model loads on this machine
        problems += fetch_problems(recipe)
    if problems:
        raise recipe_problems(args.recipe, problems, args.overrides)
    if address is not None:
        probe_address(address)  # a closed port fails here, before anything is created
    from vlalign.training.resume import plan, set_aside

    if args.restart and (moved := set_aside(recipe)) is not None:
        print(f"{recipe.name}: the previous run is set aside in {moved}")
    start = plan(recipe)  # a checkpoint of another recipe is refused here
    print(f"{recipe.name}: {start.message}", flush=True)
    if start.action == "finished":
        return 0
    from vlalign.tracking.run_logger import RunLogger
    from vlalign.tracking.store import pin_store, resolve_store

    if recipe.tracking.enabled:
        print(f"{recipe.name}: {resolve_store(recipe.tracking.uri).describe()}", flush=True)
    else:
        print(f"{recipe.name}: MLflow tracking off (tracking.enabled: false)", flush=True)
    recipe = pin_store(recipe)  # create the MLflow store once, here, before any worker starts
    import os

    remote = not args.no_ray and (
        args.address or os.environ.get("RAY_ADDRESS") or recipe.resources.address
    )
    trains = start.action != "publish"
    if trains and recipe.resources.gpus_per_worker == 0 and not remote:  # built here
        from vlalign.training.ds_ops import cpu_comm_op_built, op_cache_dir

        if not cpu_comm_op_built():
            print(
                f"{recipe.name}: first run on this machine: DeepSpeed compiles its CPU "
                f"communication op before the first step (1-2 min, once; cached in {op_cache_dir()})",
                flush=True,
            )
    if start.action == "publish":  # training finished; only its publish step is missing
        from vlalign.training.resume import finished_result

        result = finished_result(recipe, start.checkpoint)
    elif args.no_ray:
        from vlalign.evaluation.inloop import InLoopScorer
        from vlalign.training.launch import launch_local

        result = launch_local(recipe, nproc=args.nproc, tracker=RunLogger, scorer=InLoopScorer)
    else:
        from vlalign.orchestration.ray_train import run_on_ray

        result = run_on_ray(recipe, address=args.address)
    from vlalign.pipeline import finish_run
    from vlalign.training.resume import mark_published

    finished = len(result.losses) >= recipe.train.max_steps or bool(result.stopped_early)
    try:
        fin = finish_run(recipe, result, evaluate_export=not args.no_eval)
    except Exception as e:  # training is safe in its checkpoint: say how to finish the job
        if not finished:
            raise
        reason = str(e) if isinstance(e, VlalignError) else f"{type(e).__name__}: {e}"
        raise VlalignError(
            f"{recipe.name}: training finished (step {len(result.losses)} of "
            f"{recipe.train.max_steps}, checkpoint {result.checkpoint_dir}) but its evaluation "
            f"or publishing failed: {reason}. Once that is fixed, run the same command again: "
            "it evaluates and publishes the run without training"
        ) from e
    if finished:
        mark_published(
            recipe,
            len(result.losses),
            result.run_id,
            evaluated=fin.scorecard is not None,
            scorecard=str(fin.scorecard_path) if fin.scorecard_path else None,
            registered_model=recipe.tracking.registered_model if fin.version else None,
            version=fin.version,
        )
    last = result.metrics[-1] if result.metrics else {}
    print(
        f"done: {recipe.name}: {len(result.losses) - result.resumed_from_step} steps this run "
        f"(step {len(result.losses)} of {recipe.train.max_steps}), "
        f"final loss {last.get('loss', float('nan')):.4f}"
        + (", published now" if start.action == "publish" else "")
    )
    if result.stopped_early:
        print(f"  stopped    early at step {len(result.losses)}: {result.stopped_early}")
    if result.export_dir:
        chosen = f" ({result.export_choice})" if result.export_choice else ""
        print(f"  exported   {result.export_dir}{chosen}")
    if result.checkpoint_dir:
        print(f"  checkpoint {result.checkpoint_dir}")
    if fin.scorecard:
        m = fin.scorecard["metrics"]
        print(
            f"  safety     harmful refusal {m.get('harmful_refusal_rate', float('nan')):.3f}, "
            f"benign refusal {m.get('benign_refusal_rate', float('nan')):.3f} ({fin.scorecard_path})"
        )
    if fin.version:
        state = (
            "promoted to champion"
            if fin.promoted
            else (f"not promoted: {fin.refusal}" if fin.refusal else "alias candidate")
        )
        if fin.already_registered:
            state = "registered before from this MLflow run (no second version)"
        print(f"  registry   {recipe.tracking.registered_model} v{fin.version}: {state}")
    if result.run_id:
        print(f"  mlflow run {result.run_id}  (see it with `vlalign ui`)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("run", help="train a recipe (on Ray by default)")
    p.add_argument("recipe", help="recipe file or shipped name")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    p.add_argument("--no-ray", action="store_true", help="run in local processes instead of Ray")
    p.add_argument("--nproc", type=int, default=1, help="local processes with --no-ray (ranks)")
    p.add_argument(
        "--no-eval", action="store_true", help="skip the safety evaluation after training"
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="set a previous run in the output directory aside (previous-<time>/) and train anew",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: RAY_ADDRESS or a local cluster)",
    )
    p.set_defaults(func=cmd_run)
