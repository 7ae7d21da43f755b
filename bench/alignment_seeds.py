"""Does the tiny demo really align? SFT then DPO on the demo recipes, per seed, held-out eval.

For each seed: synthesize 512 pairs + 200 held-out eval prompts (seed-dependent images), train
`tiny/demo-sft` in one process (exported merged), evaluate, train `tiny/demo` (DPO + NLL) on the
merged SFT model, evaluate. Prints harmful / benign refusal and text validity after each stage.
Single process, 16 samples per step (the demo uses 2 workers x 8: the same global batch).

    .venv/bin/python bench/alignment_seeds.py --seeds 0 1 2 [--sft-steps 250 --dpo-steps 150]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

METRICS = ("harmful_refusal_rate", "benign_refusal_rate", "text_validity_rate")


def run_seed(seed: int, root: Path, sft_steps: int | None, dpo_steps: int | None) -> dict:
    from data_pipeline.synth import synthesize
    from vlalign.config import load_recipe
    from vlalign.evaluation.runner import evaluate
    from vlalign.training.loop import run_training

    data = root / f"data-{seed}"
    if not (data / "manifest.json").exists():
        synthesize(data, pairs=512, seed=seed, eval_pairs=200)
    common = [
        f"data.train={data}",
        "tracking.enabled=false",
        f"train.seed={seed}",
        f"model.seed={seed}",
        "resources.num_workers=1",
        "train.micro_batch_size=16",
        "engine.zero_stage=0",
    ]
    out: dict = {"seed": seed}

    def scored(export, name, recipe) -> dict:
        sc = evaluate(
            str(export),
            str(data),
            recipe,
            out_dir=root / f"s{seed}" / f"eval-{name}",
            num_workers=1,
            name=name,
        )
        return {k: round(sc.metrics[k], 3) for k in METRICS}

    sft_over = [
        f"train.output_dir={root}/s{seed}/sft",
        *([f"train.max_steps={sft_steps}"] if sft_steps else []),
    ]
    sft = load_recipe("tiny/demo-sft", common + sft_over)
    t0 = time.time()
    rs = run_training(sft)
    out["sft_seconds"] = round(time.time() - t0, 1)
    out["sft"] = scored(rs.export_dir, "sft", sft)
    dpo_over = [
        f"train.output_dir={root}/s{seed}/dpo",
        f"model.name={rs.export_dir}/merged",
        *([f"train.max_steps={dpo_steps}"] if dpo_steps else []),
    ]
    dpo = load_recipe("tiny/demo", common + dpo_over)
    t0 = time.time()
    rd = run_training(dpo)
    out["dpo_seconds"] = round(time.time() - t0, 1)
    out["dpo"] = scored(rd.export_dir, "dpo", dpo)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sft-steps", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--dpo-steps", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--out", default="runs/alignment-seeds")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    root = Path(args.out).resolve()
    rows = [run_seed(s, root, args.sft_steps, args.dpo_steps) for s in args.seeds]
    print(
        f"{'seed':>4}  {'stage':<5} {'harmful refusal':>15} {'benign refusal':>14} {'validity':>8}"
    )
    for r in rows:
        for stage in ("sft", "dpo"):
            m = r[stage]
            print(
                f"{r['seed']:>4}  {stage:<5} {m['harmful_refusal_rate']:>15.3f} {m['benign_refusal_rate']:>14.3f} "
                f"{m['text_validity_rate']:>8.3f}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
