"""One GRPO step (rollout + update), vlalign beside Hugging Face TRL's GRPOTrainer, plus ablations.

Same tiny model (separate copies of the same random weights), same prompts (`data_pipeline.synth`
samples), same n (samples per prompt), max_new_tokens, sampling (temperature 1, top-p 1), LoRA
(rank, alpha, the LM's projections as exact module names), loss (per-sequence token mean, clip
0.2, no KL), reward rule and optimizer (torch AdamW on the LoRA parameters) on both sides; see
`bench/grpo_sides.py` for what each phase is on each side. In one process the implementations
alternate step by step (the order rotates every round; warm-up rounds are not counted). Rollout
and update are timed apart; step = rollout + update; the medians are reported with prompts/s
(B / median step) and the ratios to TRL, then one row per vlalign optimization switched off (or,
for the on-policy shortcut, on).

Random weights: responses rarely end early, so both sides mostly generate max_new_tokens per
sample; the completion tokens per step are reported for both so unequal work shows.

    .venv/bin/python bench/grpo_step.py                          # CPU, tiny-llava small
    .venv/bin/python bench/grpo_step.py --quick --json out.json  # smallest settings (tests)
    python bench/grpo_step.py --device cuda --batch 8 --n 8 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT / "platform", ROOT, Path(__file__).resolve().parent):
    if str(p) not in sys.path:  # run from a checkout without `pip install -e .`
        sys.path.insert(0, str(p))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
from grpo_sides import (  # noqa: E402
    VARIANT_NAMES,
    VARIANTS,
    TrlSide,
    VlalignSide,
    sync,
    synth_prompts,
)

SCHEMA = "vlalign.bench.grpo_step/1"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TINY = ("tiny-llava", "tiny-qwen2-vl")


@dataclass
class Setup:
    """The model (random weights) on its device, its processor and the prompts."""

    shape: str
    family: str
    model: torch.nn.Module
    processor: object
    built: object
    prompts: list[dict]
    image_size: int
    device: str
    dtype: torch.dtype
    notes: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--shape", choices=TINY, default="tiny-llava")
    p.add_argument("--size", choices=["nano", "small"], default="small", help="tiny model size")
    p.add_argument("--batch", type=int, default=4, help="prompts per step (B)")
    p.add_argument("--n", type=int, default=4, help="samples per prompt (num_generations)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--dtype", choices=list(DTYPES), help="default float32 (cpu), bfloat16 (cuda)")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--length-weight",
        type=float,
        default=0.01,
        help="tie-breaking reward -w x chars/10 added on both sides (0: refusal_rule alone)",
    )
    p.add_argument("--chunk-size", type=int, default=1024, help="vlalign log-prob chunk")
    p.add_argument("--warmup", type=int, default=1, help="uncounted rounds")
    p.add_argument("--steps", type=int, default=3, help="counted rounds")
    p.add_argument(
        "--variants",
        default="all",
        help=f"comma list of vlalign variants or 'all' ({', '.join(VARIANT_NAMES)})",
    )
    p.add_argument("--no-trl", action="store_true", help="skip TRL (vlalign rows only)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--cache-dir", help="where tiny built-ins are materialized")
    p.add_argument("--quick", action="store_true", help="tiniest settings, 1+1 rounds (tests)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    if args.quick:
        args.size, args.batch, args.n, args.max_new_tokens = "nano", 2, 2, 6
        args.image_size, args.warmup, args.steps = 32, 0, 1
    names = VARIANT_NAMES if args.variants == "all" else tuple(args.variants.split(","))
    unknown = [n for n in names if n not in VARIANT_NAMES]
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANT_NAMES)}")
    if "vlalign" not in names:
        names = ("vlalign", *names)
    args.variant_list = [v for v in VARIANTS if v.name in names]
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    return args


def build_setup(args) -> Setup:
    from vlalign.config.schema import ModelConfig
    from vlalign.models import build

    built = build(
        ModelConfig(
            name=args.shape, size=args.size, image_size=args.image_size, cache_dir=args.cache_dir
        )
    )
    model = built.model.to(device=args.device, dtype=DTYPES[args.dtype])
    model.set_attn_implementation("sdpa")
    return Setup(
        shape=args.shape,
        family=built.family,
        model=model,
        processor=built.processor,
        built=built,
        prompts=synth_prompts(args.batch, args.image_size),
        image_size=args.image_size,
        device=args.device,
        dtype=DTYPES[args.dtype],
        notes=[f"vlalign built-in {args.shape} (size {args.size}), random weights"],
    )


def run(args) -> dict:
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    setup = build_setup(args)
    from vlalign.config.schema import PeftConfig
    from vlalign.models.lora import lora_targets

    targets = lora_targets(setup.model, PeftConfig())
    trl, trl_error = None, None
    if not args.no_trl:
        try:
            trl = TrlSide(setup, copy.deepcopy(setup.model), targets, args)
        except Exception as e:  # report exactly why TRL cannot run this setup
            trl_error = f"{type(e).__name__}: {e}".strip()
            trl_error += "\n" + "".join(traceback.format_exc(limit=-3))
    vl = VlalignSide(setup, args)
    n_params = sum(p.numel() for p in setup.model.parameters())

    sides: list[tuple[str, object]] = [(v.name, v) for v in args.variant_list]
    if trl is not None:
        sides.insert(0, ("trl", None))
    rec = {name: {"rollout": [], "update": [], "loss": [], "tokens": []} for name, _ in sides}
    rounds = args.warmup + args.steps
    for r in range(rounds):
        k = r % len(sides)
        for name, v in sides[k:] + sides[:k]:
            sync(args.device)
            t0 = time.perf_counter()
            ro = trl.rollout() if name == "trl" else vl.rollout(v)
            sync(args.device)
            t1 = time.perf_counter()
            out = trl.update(ro) if name == "trl" else vl.update(v, ro)
            sync(args.device)
            t2 = time.perf_counter()
            rec[name]["loss"].append(out["loss"])
            rec[name]["tokens"].append(out["completion_tokens"])
            if r >= args.warmup:
                rec[name]["rollout"].append(t1 - t0)
                rec[name]["update"].append(t2 - t1)
        print(f"round {r + 1}/{rounds}{' (warm-up)' if r < args.warmup else ''} done", flush=True)

    B = args.batch
    labels = {v.name: v.label for v in VARIANTS}
    labels["trl"] = f"TRL {trl.version} GRPOTrainer" if trl is not None else "TRL"
    steps = {
        n: [a + b for a, b in zip(d["rollout"], d["update"], strict=True)] for n, d in rec.items()
    }
    trl_med = statistics.median(steps["trl"]) if "trl" in steps else None
    trl_min = min(steps["trl"]) if "trl" in steps else None
    rows = []
    for name, _ in sides:
        d = rec[name]
        med = statistics.median(steps[name])
        rows.append(
            {
                "name": name,
                "label": labels[name].strip(),
                "step_s": steps[name],
                "step_s_median": med,
                "rollout_s": d["rollout"],
                "rollout_s_median": statistics.median(d["rollout"]),
                "update_s": d["update"],
                "update_s_median": statistics.median(d["update"]),
                "prompts_per_s": B / med,
                "completion_tokens_mean": statistics.mean(d["tokens"]),
                "loss_first": d["loss"][0],
                "loss_last": d["loss"][-1],
                "speedup_vs_trl": (trl_med / med) if trl_med else None,
                "speedup_vs_trl_min": (trl_min / min(steps[name])) if trl_min else None,
            }
        )
    result = {
        "schema": SCHEMA,
        "config": {
            "device": args.device,
            "shape": args.shape,
            "family": setup.family,
            "size": args.size,
            "dtype": args.dtype,
            "params": n_params,
            "batch_prompts": B,
            "num_generations": args.n,
            "max_new_tokens": args.max_new_tokens,
            "image_size": args.image_size,
            "lora": {"r": args.lora_r, "alpha": args.lora_alpha, "targets": len(targets)},
            "trainable_params": vl.trainable,
            "trl_trainable_params": trl.trainable if trl is not None else None,
            "lr": args.lr,
            "chunk_size": args.chunk_size,
            "loss": "per-sequence token mean (vlalign grpo / TRL loss_type=grpo), clip 0.2, no KL",
            "reward": "refusal_rule (vlalign: image+prompt+response+meta; TRL: text-only callable "
            "wrapping the same RefusalRule on response + harmful label)",
            "length_weight": args.length_weight,
            "optimizer": "torch.optim.AdamW (weight_decay 0) on the LoRA parameters, both sides",
            "warmup_rounds": args.warmup,
            "rounds": args.steps,
            "notes": setup.notes,
        },
        "conditions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "loadavg_end": os.getloadavg(),
            "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
            "wall_s": None,
        },
        "trained": {
            "vlalign_lora_max_change": vl.trained(),
            "trl_lora_max_change": trl.trained() if trl is not None else None,
        },
        "trl_error": trl_error,
        "rows": rows,
    }
    result["conditions"]["wall_s"] = time.perf_counter() - t_start
    return result


def report(res: dict) -> str:
    c = res["config"]
    lines = [
        f"GRPO step: device {c['device']}, {c['shape']} ({c['size']}, {c['params'] / 1e6:.1f}M "
        f"params), {c['dtype']}; {c['batch_prompts']} prompts x n={c['num_generations']}, "
        f"max_new_tokens {c['max_new_tokens']}, image {c['image_size']} px",
        f"LoRA r={c['lora']['r']} alpha={c['lora']['alpha']:g} on {c['lora']['targets']} LM "
        f"projections ({c['trainable_params'] / 1e6:.2f}M trainable); {c['loss']}",
        f"reward: {c['reward']}; plus -{c['length_weight']:g} x chars/10 on both (tie-breaker)",
        f"timing: {c['warmup_rounds']} warm-up + {c['rounds']} counted rounds, sides alternate "
        f"(rotating order); medians; step = rollout + update; min ms = fastest step (interference "
        f"only slows a step); x TRL = TRL's step / this row's (median; min); "
        f"threads {res['conditions']['threads']}, load avg at end "
        f"{res['conditions']['loadavg_end'][0]:.1f}",
    ]
    for note in c["notes"]:
        lines.append(f"note: {note}")
    if res["trl_error"]:
        lines.append("TRL could not run this setup: " + res["trl_error"].splitlines()[0])
    head = (
        f"{'implementation':40} {'rollout ms':>10} {'update ms':>9} {'step ms':>8} "
        f"{'min ms':>7} {'prompts/s':>9} {'compl tok':>9} {'x TRL':>6} {'(min)':>6}"
    )
    lines += [head, "-" * len(head)]
    for r in res["rows"]:
        sp = f"{r['speedup_vs_trl']:.2f}" if r["speedup_vs_trl"] else "-"
        trl_min = min(res["rows"][0]["step_s"]) if res["rows"][0]["name"] == "trl" else None
        sp_min = f"{trl_min / min(r['step_s']):.2f}" if trl_min else "-"
        lines.append(
            f"{r['label'][:40]:40} {r['rollout_s_median'] * 1e3:>10.1f} "
            f"{r['update_s_median'] * 1e3:>9.1f} {r['step_s_median'] * 1e3:>8.1f} "
            f"{min(r['step_s']) * 1e3:>7.1f} {r['prompts_per_s']:>9.2f} "
            f"{r['completion_tokens_mean']:>9.0f} {sp:>6} {sp_min:>6}"
        )
    t = res["trained"]
    trl_change = t["trl_lora_max_change"]
    lines.append(
        f"trained: max |LoRA change| vlalign {t['vlalign_lora_max_change']:.2e}, TRL "
        + (f"{trl_change:.2e}" if trl_change is not None else "-")
    )
    lines.append(f"wall {res['conditions']['wall_s']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--report"]:  # print the table of a saved JSON
        print(report(json.loads(Path(argv[1]).read_text())))
        return 0
    args = parse_args(argv)
    res = run(args)
    print(report(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
