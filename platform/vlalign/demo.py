"""`vlalign demo`: align a tiny VLM end to end on this machine, with evidence.

Stages (each with a status line):
  1. synthesize image-conditioned safety data (train + held-out eval shards, and shifted eval
     splits: shift-visual, shift-wording, shift-both);
  2. evaluate the untrained tiny model (scorecard "base");
  3. SFT with LoRA (recipe tiny/demo-sft), exported merged, then the second stage from it:
     DPO with LoRA (recipe tiny/demo) by default; `--method` picks GRPO (tiny/demo-grpo) or Safe
     RLHF (tiny/demo-safe-rlhf) instead, or several side by side, each from the same SFT model;
     every stage on one local Ray cluster with 2 workers and DeepSpeed ZeRO-2 (`--no-ray`: the
     same loop in local processes);
  4. evaluate after each on every eval split (scorecards "sft", "dpo", "grpo", ...); everything
     is logged to the MLflow store (the recipes train with augmentation: data.augment);
  5. register each second-stage model, run the promotion gates, say whether it became champion
     and why;
  6. print the scorecards side by side and how to look at it all (`vlalign ui`).

The terminal gets the status lines and one progress bar per stage; everything else (Ray,
DeepSpeed, the workers' output, third-party warnings) goes to `<out>/demo.log`, named on the
first line and its tail shown when a stage fails (vlalign.quiet). On a fresh machine the first
DeepSpeed CPU op build (1-2 min) happens behind its own status line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TextIO

from vlalign.config.loading import load_recipe
from vlalign.config.schema import Recipe

# The second stage's methods, each trained from the same merged SFT model: recipe and label.
STAGE2 = {
    "dpo": ("tiny/demo", "DPO"),
    "grpo": ("tiny/demo-grpo", "GRPO"),
    "safe-rlhf": ("tiny/demo-safe-rlhf", "Safe RLHF"),
}


@dataclass(frozen=True)
class DemoPlan:
    """How much the demo does: data sizes, training steps (None: the recipe's own) and the
    methods trained after SFT (each from the SFT model, evaluated, registered and gated)."""

    pairs: int
    eval_pairs: int
    sft_steps: int | None = None
    dpo_steps: int | None = None
    rl_steps: int | None = None
    judge_steps: int | None = None  # Safe RLHF's reward and cost models
    methods: tuple[str, ...] = ("dpo",)

    def steps(self, stage: str) -> list[str]:
        n = {"sft": self.sft_steps, "dpo": self.dpo_steps}.get(stage, self.rl_steps)
        if stage in ("reward", "cost"):
            n = self.judge_steps
        return [] if n is None else [f"train.max_steps={n}"]


FULL = DemoPlan(pairs=512, eval_pairs=200)
# --quick: SFT 300 steps, not 150: under the demo's augmentation a 150-step SFT model refused
# every benign held-out prompt and DPO 120 steps left 0.44 (README "make demo").
QUICK = DemoPlan(
    pairs=512, eval_pairs=100, sft_steps=300, dpo_steps=120, rl_steps=60, judge_steps=60
)
LOG_NAME = "demo.log"


class _Status:
    """Status lines: wall clock, time since the demo started, stage, what happens now."""

    def __init__(self, term: TextIO | None = None) -> None:
        self.t0 = time.monotonic()
        self.term = term

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def __call__(self, stage: str, text: str) -> None:
        m, s = divmod(int(self.elapsed()), 60)
        line = f"[{time.strftime('%H:%M:%S')} +{m}:{s:02d}] {stage:<8} {text}"
        print(line, file=self.term or sys.stdout, flush=True)


@contextmanager
def _bars_on(term: TextIO) -> Iterator[None]:
    """Progress bars drawn in this process (data synthesis, evaluation) on the terminal; other
    libraries' bars (transformers' weight loading) off while it lasts."""
    import transformers.utils.logging as hf_logging

    old = sys.stderr
    sys.stderr = term
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
        sys.stderr = old


def _prebuild_deepspeed_ops(recipe: Recipe, say: _Status) -> None:
    """Build DeepSpeed's CPU comm op here, behind a status line, when this machine has none yet
    (the workers would otherwise spend 1-2 silent minutes compiling it)."""
    if recipe.resources.gpus_per_worker > 0:
        return
    from vlalign.training.ds_ops import build_cpu_comm_op, cpu_comm_op_built, op_cache_dir

    if cpu_comm_op_built():
        return
    say(
        "deepspeed",
        "first run on this machine: compiling DeepSpeed's CPU communication op "
        f"(ShareMemCommBuilder, 1-2 min, once; cached in {op_cache_dir()})",
    )
    seconds = build_cpu_comm_op()
    say("deepspeed", f"CPU communication op built in {seconds:.0f} s")


@contextmanager
def _cluster(recipe: Recipe, use_ray: bool, say: _Status) -> Iterator[None]:
    """One local Ray cluster for both training stages (started once, not once per stage)."""
    if not use_ray:
        yield
        return
    from vlalign.orchestration.cluster import ray_cluster

    with ray_cluster(None, recipe) as where:
        say("ray", f"started {where}")
        yield


def _train(recipe: Recipe, use_ray: bool, out: Path, stage: str, term: TextIO):
    """Train one stage with one progress bar on the terminal, fed by the rank-0 worker.

    The demo always trains its stages anew: a previous demo's run in the same folder (maybe of
    another plan) is moved aside to `previous-<time>/`, never resumed or deleted."""
    from vlalign.training.resume import set_aside

    set_aside(recipe)
    from vlalign.quiet import follow_steps

    progress = out / f".progress-{stage}.json"
    with follow_steps(progress, recipe.train.max_steps, stage, term) as on_step:
        if use_ray:
            from vlalign.orchestration.ray_train import run_on_ray

            # the bar is drawn here (Ray's tqdm bars would share the terminal with it)
            return run_on_ray(recipe, on_step=on_step, ray_progress=False)
        from vlalign.evaluation.inloop import InLoopScorer
        from vlalign.tracking.run_logger import RunLogger
        from vlalign.training.launch import launch_local

        return launch_local(
            recipe,
            nproc=recipe.resources.num_workers,
            on_step=on_step,
            tracker=RunLogger,
            scorer=InLoopScorer,
        )


def _evaluate(model_ref: str, data: Path, recipe: Recipe, out: Path, name: str, run_id: str | None):
    from vlalign.evaluation.runner import evaluate

    card = evaluate(
        model_ref,
        str(data),
        recipe,
        out_dir=out / "eval" / name,
        num_workers=1,
        name=name,
        progress=True,
    )
    if run_id:
        from vlalign.tracking.scorecard_log import log_scorecard
        from vlalign.tracking.store import resolve_store

        log_scorecard(card, run_id, name, tracking_uri=resolve_store(recipe.tracking.uri).uri)
    return card


def run_demo(
    out: Path, plan: DemoPlan, seed: int = 0, use_ray: bool = True, workers: int = 2
) -> dict:
    """Run every stage; returns {"scorecards": {...}, "promotion": {...}} (also written as JSON).

    Status lines and progress bars go to stdout; every other line to <out>/demo.log."""
    from vlalign.quiet import logs_to_file

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / LOG_NAME
    log.unlink(missing_ok=True)
    say = _Status()
    say("logs", f"Ray, DeepSpeed and worker output -> {log}")
    with logs_to_file(log) as term:
        say.term = term
        return _stages(out, plan, seed, use_ray, workers, say, term)


def _stages(
    out: Path, plan: DemoPlan, seed: int, use_ray: bool, workers: int, say: _Status, term: TextIO
) -> dict:
    from data_pipeline.synth import synthesize
    from vlalign.tracking.store import pin_store, resolve_store

    data = out / "data"
    common = [
        f"train.seed={seed}",
        f"model.seed={seed}",
        f"data.train={data}",
        f"data.eval={data}",
        f"resources.num_workers={workers}",
        f"train.output_dir={out}/{{name}}",
    ]

    say(
        "data",
        f"synthesizing {plan.pairs} pairs + {plan.eval_pairs} held-out eval prompts -> {data}",
    )
    with _bars_on(term):
        synthesize(
            data,
            pairs=plan.pairs,
            seed=seed,
            eval_pairs=plan.eval_pairs,
            overwrite=True,
            progress=True,
        )

    sft = load_recipe("tiny/demo-sft", common + plan.steps("sft"))
    say("mlflow", resolve_store(sft.tracking.uri).describe())
    sft = pin_store(sft)
    cards = {}
    say("base", "evaluating the untrained model")
    with _bars_on(term):
        cards["base"] = _evaluate(f"builtin:{sft.model.name}", data, sft, out, "base", None)

    where = (
        f"Ray ({workers} workers, ZeRO-{sft.engine.zero_stage})"
        if use_ray
        else f"{workers} local processes"
    )
    _prebuild_deepspeed_ops(sft, say)
    with _cluster(sft, use_ray, say):
        say("sft", f"SFT with LoRA, {sft.train.max_steps} steps on {where}")
        rs = _train(sft, use_ray, out, "sft", term)
        say("sft", f"evaluating the SFT model (final loss {rs.losses[-1]:.4f})")
        with _bars_on(term):
            cards["sft"] = _evaluate(str(rs.export_dir), data, sft, out, "sft", rs.run_id)

        start = [*common, f"model.name={rs.export_dir}/merged"]
        trained = {}
        for method in plan.methods:
            recipe_name, label = STAGE2[method]
            extra = []
            if method == "safe-rlhf":
                extra = _learned_judges(start, plan, use_ray, out, where, say, term)
            recipe = pin_store(load_recipe(recipe_name, [*start, *plan.steps(method), *extra]))
            say(
                method,
                f"{_describe(recipe, label)} on the SFT model, "
                f"{recipe.train.max_steps} steps on {where}",
            )
            trained[method] = (recipe, _train(recipe, use_ray, out, method, term))
    promotions = {}
    for method, (recipe, result) in trained.items():
        label = STAGE2[method][1]
        say(method, f"evaluating the {label} model (final loss {result.losses[-1]:.4f})")
        # not logged here: publishing logs this scorecard to the stage's run with the model
        with _bars_on(term):
            cards[method] = _evaluate(str(result.export_dir), data, recipe, out, method, None)
        say(
            "registry",
            f"registering the {label} model as {recipe.tracking.registered_model!r}, "
            "checking the gates",
        )
        promotions[method] = _publish(recipe, result, out / "eval" / method / "scorecard.json")
    first = plan.methods[0]
    summary = {
        "seed": seed,
        "plan": asdict(plan),
        "seconds": round(say.elapsed(), 1),
        "scorecards": {k: v.to_dict()["metrics"] for k, v in cards.items()},
        "per_category": {k: v.to_dict()["per_category"] for k, v in cards.items()},
        "splits": {k: {n: d["metrics"] for n, d in v.splits.items()} for k, v in cards.items()},
        "promotion": promotions[first],
        "promotions": promotions,
        "tracking_uri": trained[first][0].tracking.uri,
        "log": str(out / LOG_NAME),
    }
    (out / "demo-summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# Safe RLHF's learned judges, trained from the SFT model before the policy: recipe, label.
JUDGES = {"reward": ("tiny/demo-reward", "reward model"), "cost": ("tiny/demo-cost", "cost model")}


def _learned_judges(
    start: list[str], plan: DemoPlan, use_ray: bool, out: Path, where: str, say, term: TextIO
) -> list[str]:
    """Train the reward and the cost model the Safe RLHF stage uses (on the demo's preference
    pairs, from the SFT model); returns the overrides that point the stage at their exports."""
    from vlalign.tracking.store import pin_store

    exports = {}
    for judge, (recipe_name, label) in JUDGES.items():
        recipe = pin_store(load_recipe(recipe_name, [*start, *plan.steps(judge)]))
        say(
            judge,
            f"{label} for Safe RLHF on the SFT model, {recipe.train.max_steps} steps on {where}",
        )
        result = _train(recipe, use_ray, out, judge, term)
        shown = {k: v for k, v in result.metrics[-1].items() if k.endswith("accuracy")}
        say(
            judge,
            f"trained (final loss {result.losses[-1]:.4f}"
            + "".join(f", {k} {v:.3f}" for k, v in shown.items())
            + ")",
        )
        exports[judge] = result.export_dir
    return learned_judge_overrides(exports["reward"], exports["cost"])


# Measured on seed 0 (bench/alignment_seeds.py --methods safe_rlhf, README "Safe RLHF with
# learned judges"): at kl_coef 0.02 the policy found short replies ("I can.") that the learned
# reward model scores above a refusal and the cost model calls safe (harmful refusal 0.00);
# at 0.2 it stays near the SFT model's language (held-out 1.00 / 0.09, validity 1.00). With the
# 500-step SFT model, 0.2 let seed 2 drift to "I'm with this request." on harmful prompts (the
# judges score it like a refusal; harmful refusal 0.69); at 0.5 all three seeds hold
# (held-out 1.00 / <= 0.01, validity 1.00).
LEARNED_JUDGE_KL = 0.5


def learned_judge_overrides(reward_export: Path | str, cost_export: Path | str) -> list[str]:
    """The Safe RLHF stage's overrides for learned judges: the reward model plus the validity
    guard (weight 10: degenerate text loses every group comparison), the cost model, and a KL
    coefficient that keeps the policy where the judges were trained (LEARNED_JUDGE_KL)."""
    return [
        f"method.rewards=[{{name: reward_model, model: '{reward_export}'}}, "
        "{name: validity, weight: 10.0}]",
        f"method.costs=[{{name: cost_model, model: '{cost_export}'}}]",
        f"method.kl_coef={LEARNED_JUDGE_KL}",
    ]


def _describe(recipe: Recipe, label: str) -> str:
    """One phrase for a second-stage method: its loss and main knobs."""
    m = recipe.method
    if m.name == "dpo":
        return f"{label} ({m.loss}, beta {m.beta})"
    rewards = ", ".join(r.name for r in m.rewards)
    text = f"{label} ({m.num_generations} samples per prompt, reward {rewards}"
    if m.name == "safe_rlhf":
        costs = ", ".join(c.name for c in m.costs)
        text += (
            f", cost {costs} with {len(m.budgets)} category budgets + over-refusal <= "
            f"{m.over_refusal_budget}"
        )
    return text + ")"


def _publish(recipe: Recipe, result, scorecard: Path) -> dict:
    from vlalign.pipeline import publish_export
    from vlalign.tracking.promotion import PromotionRefused, promote
    from vlalign.tracking.store import resolve_store

    pub = publish_export(recipe, result.run_id, result.export_dir, scorecard)
    name = recipe.tracking.registered_model
    try:
        promote(resolve_store(recipe.tracking.uri), name, pub.version, recipe.promotion)
        return {"model": name, "version": pub.version, "champion": True, "reasons": []}
    except PromotionRefused as e:
        return {"model": name, "version": pub.version, "champion": False, "reasons": [str(e)]}


def print_table(summary: dict) -> None:
    """base / sft / the second stages side by side, overall and per category."""
    from rich.console import Console
    from rich.table import Table

    cards = summary["scorecards"]
    t = Table(title="safety scorecards (held-out eval)")
    t.add_column("metric")
    for stage in cards:
        t.add_column(stage, justify="right")
    for metric in (
        "harmful_refusal_rate",
        "benign_refusal_rate",
        "text_validity_rate",
        "implicit_reward_accuracy",
    ):
        t.add_row(metric, *[f"{cards[s].get(metric, float('nan')):.3f}" for s in cards])
    cats = summary["per_category"][next(iter(cards))]
    for cat in sorted(cats):
        label = cats[cat].get("label", "")
        t.add_row(
            f"  {cat} ({label}) refusal",
            *[
                f"{summary['per_category'][s].get(cat, {}).get('refusal_rate', float('nan')):.3f}"
                for s in cards
            ],
        )
    console = Console()
    console.print(t)
    console.print(_splits_table(summary.get("splits", {})))
    for p in summary.get("promotions", {"": summary["promotion"]}).values():
        if p["champion"]:
            console.print(
                f"[green]{p['model']} v{p['version']} passed every gate and is now "
                "@champion[/green]"
            )
        else:
            console.print(
                f"[yellow]{p['model']} v{p['version']} was NOT promoted:[/yellow] "
                f"{'; '.join(p['reasons'])}"
            )
    console.print(
        f"finished in {summary['seconds']:.0f} s. Look at runs, scorecards and the registry: vlalign ui"
    )
    if summary.get("log"):
        console.print(f"full Ray/DeepSpeed logs: {summary['log']}", soft_wrap=True)


def _plan(args: argparse.Namespace) -> DemoPlan:
    """--quick or the full plan, with any of --pairs/--eval-prompts/--*-steps and --method."""
    plan = QUICK if args.quick else FULL
    changes = {
        "pairs": args.pairs,
        "eval_pairs": args.eval_prompts,
        "sft_steps": args.sft_steps,
        "dpo_steps": args.dpo_steps,
        "rl_steps": args.rl_steps,
        "judge_steps": args.judge_steps,
    }
    for flag, n in changes.items():
        if n is not None and n < 1:
            from vlalign.errors import VlalignError

            raise VlalignError(f"--{flag.replace('_', '-')} must be >= 1, got {n}")
    plan = replace(plan, **{k: v for k, v in changes.items() if v is not None})
    if args.method:
        plan = replace(plan, methods=tuple(dict.fromkeys(args.method)))
    return plan


def _splits_table(splits: dict):
    """Held-out next to the shifted splits: harmful / benign refusal per stage and split."""
    from rich.table import Table

    t = Table(title="held-out vs shifted eval splits: harmful refusal / benign refusal")
    t.add_column("split")
    for stage in splits:
        t.add_column(stage, justify="right")
    for name in next(iter(splits.values()), {}):
        cells = [splits[s].get(name, {}) for s in splits]
        t.add_row(
            name,
            *[
                f"{c.get('harmful_refusal_rate', float('nan')):.3f} / "
                f"{c.get('benign_refusal_rate', float('nan')):.3f}"
                for c in cells
            ],
        )
    return t


def cmd_demo(args: argparse.Namespace) -> int:
    plan = _plan(args)
    summary = run_demo(Path(args.out), plan, args.seed, not args.no_ray, args.workers)
    print_table(summary)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="align a tiny VLM end to end (data, SFT, DPO or RL, eval, registry)"
    )
    p.add_argument("--quick", action="store_true", help="fewer steps and prompts (under 3 minutes)")
    p.add_argument("--seed", type=int, default=0, help="seed of data and training")
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--workers", type=int, default=2, help="training workers")
    p.add_argument("--no-ray", action="store_true", help="local processes instead of a Ray cluster")
    p.add_argument("--pairs", type=int, help="training pairs to synthesize (plan override)")
    p.add_argument("--eval-prompts", type=int, help="held-out eval prompts (plan override)")
    p.add_argument("--sft-steps", type=int, help="SFT steps (plan override)")
    p.add_argument("--dpo-steps", type=int, help="DPO steps (plan override)")
    p.add_argument(
        "--method",
        nargs="+",
        choices=list(STAGE2),
        metavar="METHOD",
        help="what follows SFT, each from the SFT model: "
        f"{', '.join(STAGE2)} (default: dpo; e.g. --method dpo grpo safe-rlhf)",
    )
    p.add_argument("--rl-steps", type=int, help="GRPO / Safe RLHF steps (plan override)")
    p.add_argument(
        "--judge-steps", type=int, help="Safe RLHF's reward and cost model steps (plan override)"
    )
    p.set_defaults(func=cmd_demo)
