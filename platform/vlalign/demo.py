"""`vlalign demo`: align a tiny VLM end to end on this machine, with evidence.

Stages (each with a status line):
  1. synthesize image-conditioned safety data (train + held-out eval shards, and shifted eval
     splits: shift-visual, shift-wording, shift-both);
  2. evaluate the untrained tiny model (scorecard "base");
  3. SFT with LoRA (recipe tiny/demo-sft), exported merged, then DPO with LoRA on top of it
     (recipe tiny/demo), each on a local Ray cluster with 2 workers and DeepSpeed ZeRO-2
     (`--no-ray`: the same loop in local processes);
  4. evaluate after each on every eval split (scorecards "sft", "dpo"); everything is logged to
     the MLflow store (the recipes train with augmentation: data.augment);
  5. register the DPO model, run the promotion gates, say whether it became champion and why;
  6. print base / sft / dpo side by side and how to look at it all (`vlalign ui`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from vlalign.config.loading import load_recipe
from vlalign.config.schema import Recipe


@dataclass(frozen=True)
class DemoPlan:
    """How much the demo does: data sizes and training steps (None: the recipe's own)."""

    pairs: int
    eval_pairs: int
    sft_steps: int | None = None
    dpo_steps: int | None = None

    def steps(self, stage: str) -> list[str]:
        n = self.sft_steps if stage == "sft" else self.dpo_steps
        return [] if n is None else [f"train.max_steps={n}"]


FULL = DemoPlan(pairs=512, eval_pairs=200)
QUICK = DemoPlan(pairs=512, eval_pairs=100, sft_steps=150, dpo_steps=120)


class _Status:
    """Status lines: wall clock, time since the demo started, stage, what happens now."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def __call__(self, stage: str, text: str) -> None:
        m, s = divmod(int(self.elapsed()), 60)
        print(f"[{time.strftime('%H:%M:%S')} +{m}:{s:02d}] {stage:<8} {text}", flush=True)


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


def _train(recipe: Recipe, use_ray: bool):
    if use_ray:
        from vlalign.orchestration.ray_train import run_on_ray

        return run_on_ray(recipe)
    from vlalign.tracking.run_logger import RunLogger
    from vlalign.training.launch import launch_local

    return launch_local(recipe, nproc=recipe.resources.num_workers, tracker=RunLogger)


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
    """Run every stage; returns {"scorecards": {...}, "promotion": {...}} (also written as JSON)."""
    from data_pipeline.synth import synthesize
    from vlalign.tracking.store import pin_store

    out = out.resolve()
    data = out / "data"
    common = [
        f"train.seed={seed}",
        f"model.seed={seed}",
        f"data.train={data}",
        f"data.eval={data}",
        f"resources.num_workers={workers}",
        f"train.output_dir={out}/{{name}}",
    ]
    say = _Status()

    say(
        "data",
        f"synthesizing {plan.pairs} pairs + {plan.eval_pairs} held-out eval prompts -> {data}",
    )
    synthesize(
        data,
        pairs=plan.pairs,
        seed=seed,
        eval_pairs=plan.eval_pairs,
        overwrite=True,
        progress=True,
    )

    sft = pin_store(load_recipe("tiny/demo-sft", common + plan.steps("sft")))
    cards = {}
    say("base", "evaluating the untrained model")
    cards["base"] = _evaluate(f"builtin:{sft.model.name}", data, sft, out, "base", None)

    where = (
        f"Ray ({workers} workers, ZeRO-{sft.engine.zero_stage})"
        if use_ray
        else f"{workers} local processes"
    )
    with _cluster(sft, use_ray, say):
        say("sft", f"SFT with LoRA, {sft.train.max_steps} steps on {where}")
        rs = _train(sft, use_ray)
        cards["sft"] = _evaluate(str(rs.export_dir), data, sft, out, "sft", rs.run_id)

        dpo = pin_store(
            load_recipe(
                "tiny/demo", [*common, f"model.name={rs.export_dir}/merged", *plan.steps("dpo")]
            )
        )
        say(
            "dpo",
            f"DPO ({dpo.method.loss}, beta {dpo.method.beta}) on the SFT model, "
            f"{dpo.train.max_steps} steps on {where}",
        )
        rd = _train(dpo, use_ray)
    # not logged here: publishing logs this scorecard to the DPO run with the model
    cards["dpo"] = _evaluate(str(rd.export_dir), data, dpo, out, "dpo", None)

    say(
        "registry",
        f"registering the DPO model as {dpo.tracking.registered_model!r}, checking the gates",
    )
    promotion = _publish(dpo, rd, out / "eval" / "dpo" / "scorecard.json")
    summary = {
        "seed": seed,
        "plan": asdict(plan),
        "seconds": round(say.elapsed(), 1),
        "scorecards": {k: v.to_dict()["metrics"] for k, v in cards.items()},
        "per_category": {k: v.to_dict()["per_category"] for k, v in cards.items()},
        "splits": {k: {n: d["metrics"] for n, d in v.splits.items()} for k, v in cards.items()},
        "promotion": promotion,
        "tracking_uri": dpo.tracking.uri,
    }
    (out / "demo-summary.json").write_text(json.dumps(summary, indent=2))
    return summary


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
    """base / sft / dpo side by side, overall and per category."""
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
    p = summary["promotion"]
    if p["champion"]:
        console.print(
            f"[green]{p['model']} v{p['version']} passed every gate and is now @champion[/green]"
        )
    else:
        console.print(
            f"[yellow]{p['model']} v{p['version']} was NOT promoted:[/yellow] {'; '.join(p['reasons'])}"
        )
    console.print(
        f"finished in {summary['seconds']:.0f} s. Look at runs, scorecards and the registry: vlalign ui"
    )


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
    plan = QUICK if args.quick else FULL
    summary = run_demo(Path(args.out), plan, args.seed, not args.no_ray, args.workers)
    print_table(summary)
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="align a tiny VLM end to end (data, SFT, DPO, eval, registry)")
    p.add_argument("--quick", action="store_true", help="fewer steps and prompts (under 3 minutes)")
    p.add_argument("--seed", type=int, default=0, help="seed of data and training")
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--workers", type=int, default=2, help="training workers")
    p.add_argument("--no-ray", action="store_true", help="local processes instead of a Ray cluster")
    p.set_defaults(func=cmd_demo)
