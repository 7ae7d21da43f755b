"""One DPO training step, vlalign beside Hugging Face TRL's DPOTrainer, plus vlalign's ablations.

Same model (separate copies of the same random weights), same preference pairs, same LoRA
(rank, alpha, the LM's projections as exact module names), same optimizer (torch AdamW on the
LoRA parameters; no DeepSpeed, no clipping) on both sides; see `bench/dpo_sides.py` for what one
step is on each side. In one process the implementations alternate step by step (the order
rotates every round; warm-up rounds are not counted) and the median step time is reported, with
pairs/s, tokens/s and peak memory, and the ratios to TRL.

Tokens: the non-padding tokens of the pairs' chosen and rejected sequences, image tokens and the
prompt included, counted as if nothing were shared (the same count for every row, so tokens/s
ratios equal pairs/s ratios).

Memory. CPU: each implementation runs again in a fresh subprocess (same weights and data; glibc's
mmap threshold pinned at 1 MiB so freed blocks return to the OS); after one warm-up step the
peak RSS is reset (/proc/self/clear_refs) and the figure is the peak RSS during 2 steps minus the
RSS before them: the step's working memory (activations, gradients, temporaries). CUDA: in the
main process, per step, torch.cuda.max_memory_allocated() minus memory_allocated() before the
step (working memory), plus the side's resident state (its parameters, buffers and optimizer
state) for the peak.

MFU (CUDA): the bf16 matmul peak is measured first (`bench/flops.py`), then model FLOPs per pair
by the issue's convention (6N policy + 2N reference per token, nothing shared) x pairs/s / peak.

    .venv/bin/python bench/dpo_step.py                        # CPU, tiny-llava (~4M), < 2 min
    .venv/bin/python bench/dpo_step.py --quick --json out.json  # seconds: smallest settings
    python bench/dpo_step.py --device cuda --shape llava-1.5-7b --json llava.json
    python bench/dpo_step.py --device cuda --shape qwen2-vl-2b --json qwen.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT / "platform", ROOT, Path(__file__).resolve().parent):
    if str(p) not in sys.path:  # run from a checkout without `pip install -e .`
        sys.path.insert(0, str(p))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
from dpo_models import (  # noqa: E402
    QUICK_WORKLOAD,
    SHAPES,
    TINY_SHAPES,
    WORKLOADS,
    build_setup,
)
from dpo_sides import (  # noqa: E402
    VARIANT_NAMES,
    VARIANTS,
    TrlSide,
    VlalignSide,
    sync,
    to_device,
    vlalign_batch,
)

SCHEMA = "vlalign.bench.dpo_step/1"
MIB = 1024 * 1024
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ----------------------------------------------------------------------------- memory helpers
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- arguments
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--shape", choices=SHAPES, help="default: tiny-llava (cpu), llava-1.5-7b (cuda)")
    p.add_argument("--size", choices=["nano", "small"], default="small", help="tiny models' size")
    p.add_argument("--batch", type=int, help="pairs per step (default per shape)")
    p.add_argument("--image-size", type=int, help="image side in pixels (default per shape)")
    p.add_argument("--prompt-tokens", type=int, help="text tokens of a prompt (default per shape)")
    p.add_argument("--response-tokens", type=int, nargs=2, metavar=("LO", "HI"))
    p.add_argument("--dtype", choices=list(DTYPES), help="default float32 (cpu), bfloat16 (cuda)")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32.0)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--chunk-size", type=int, default=1024, help="vlalign log-prob chunk")
    p.add_argument("--warmup", type=int, default=2, help="uncounted rounds")
    p.add_argument("--steps", type=int, default=5, help="counted rounds")
    p.add_argument(
        "--variants",
        default="all",
        help=f"comma list of vlalign variants or 'all' ({', '.join(VARIANT_NAMES)})",
    )
    p.add_argument("--no-trl", action="store_true", help="skip TRL (vlalign rows only)")
    p.add_argument(
        "--memory",
        choices=["main", "all", "none"],
        default="main",
        help="CPU: subprocess memory for vlalign + TRL (main), every row (all), or none",
    )
    p.add_argument("--gradient-checkpointing", action="store_true", help="on both sides")
    p.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    p.add_argument("--shrink", action="store_true", help="published shape, tiny widths (testing)")
    p.add_argument("--peak-n", type=int, default=8192, help="matmul side for the bf16 peak")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: stable figures on a shared machine; 0: torch's choice)",
    )
    p.add_argument("--cache-dir", help="where tiny built-ins are materialized")
    p.add_argument("--quick", action="store_true", help="tiniest settings, 1+2 rounds (tests)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.shape = args.shape or ("tiny-llava" if args.device == "cpu" else "llava-1.5-7b")
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    workload = dict(QUICK_WORKLOAD if args.quick else WORKLOADS[args.shape])
    if args.quick:
        args.size, args.warmup, args.steps = "nano", 1, 2
    for key in ("batch", "image_size", "prompt_tokens", "response_tokens"):
        if getattr(args, key) is not None:
            workload[key] = (
                tuple(getattr(args, key)) if key == "response_tokens" else getattr(args, key)
            )
    args.workload = workload
    names = VARIANT_NAMES if args.variants == "all" else tuple(args.variants.split(","))
    unknown = [n for n in names if n not in VARIANT_NAMES]
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANT_NAMES)}")
    if "vlalign" not in names:
        names = ("vlalign", *names)
    args.variant_list = [v for v in VARIANTS if v.name in names]
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    if args.shape not in TINY_SHAPES and args.device == "cpu" and not args.shrink:
        p.error(f"--shape {args.shape} on CPU needs --shrink (a published shape is GPU-sized)")
    return args


# ----------------------------------------------------------------------------- building
def build_sides(args, with_trl: bool, with_vlalign: bool = True):
    """Setup, the vlalign batch, TRL side (or its error) and the vlalign side (or None)."""
    from vlalign.config.schema import PeftConfig
    from vlalign.models.lora import lora_targets

    setup = build_setup(
        args.shape,
        args.workload,
        args.device,
        DTYPES[args.dtype],
        size=args.size,
        cache_dir=args.cache_dir,
        shrink=args.shrink,
        attn=args.attn,
    )
    if args.gradient_checkpointing:
        setup.model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    batch = to_device(vlalign_batch(setup), args.device)
    targets = lora_targets(setup.model, PeftConfig())
    trl_side, trl_error = None, None
    if with_trl:
        try:
            trl_side = TrlSide(
                setup,
                copy.deepcopy(setup.model),
                targets,
                args.lora_r,
                args.lora_alpha,
                args.lr,
                args.gradient_checkpointing,
            )
        except Exception as e:  # report exactly why TRL cannot run this setup
            trl_error = f"{type(e).__name__}: {e}".strip()
            trl_error += "\n" + "".join(traceback.format_exc(limit=-3))
    vl = None
    if with_vlalign:
        vl = VlalignSide(setup, batch, args.lora_r, args.lora_alpha, args.lr, args.chunk_size)
    return setup, batch, trl_side, trl_error, vl, targets


def memory_worker(args) -> dict:
    """Fresh process: build one side, 1 warm-up step, then peak RSS over 2 steps (CPU)."""
    side_name = args.memory_worker
    variants = [v for v in VARIANTS if v.name == side_name] or [VARIANTS[0]]
    is_trl = side_name == "trl"
    _, _, trl, trl_error, vl, _ = build_sides(args, with_trl=is_trl, with_vlalign=not is_trl)
    if is_trl and trl is None:
        return {"error": trl_error}
    run = trl.step if is_trl else (lambda: vl.step(variants[0]))
    run()
    before = _status_kib("VmRSS") * 1024
    if not _reset_peak_rss():
        return {"error": "cannot reset peak RSS (/proc/self/clear_refs not writable)"}
    for _ in range(2):
        run()
    peak = _status_kib("VmHWM") * 1024
    return {"peak_over_baseline_bytes": peak - before, "rss_before_bytes": before}


def measure_memory_subprocesses(argv: list[str], sides: list[str]) -> dict[str, dict]:
    """Run one memory worker per side (concurrently: RSS is per process) and collect them."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MIB))
    procs = {
        side: subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *argv, "--memory-worker", side],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for side in sides
    }
    out = {}
    for side, proc in procs.items():
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            out[side] = {"error": f"memory worker for {side} failed: {stderr[-2000:]}"}
        else:
            out[side] = json.loads(stdout.strip().splitlines()[-1])
    return out


# ----------------------------------------------------------------------------- the run
def run(args, argv: list[str]) -> dict:
    t_start = time.perf_counter()
    from flops import (
        FORMULA,
        count_params,
        lora_aware_flops_per_pair,
        measure_bf16_peak,
        model_flops_per_pair,
        patches_per_image,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    peak = None
    if args.device == "cuda":  # measured first, on an idle device
        peak = measure_bf16_peak("cuda", n=args.peak_n)
        print(f"measured bf16 matmul peak: {peak['flops_per_s'] / 1e12:.0f} TFLOP/s "
              f"({peak['n']}^3, best of {len(peak['trials'])})", flush=True)  # fmt: skip
    setup, batch, trl, trl_error, vl, targets = build_sides(args, not args.no_trl)
    B = int(batch["chosen_input_ids"].shape[0])
    tokens = int(batch["n_tokens"])
    n_image_tokens = int(batch["n_image_tokens"])
    counts = count_params(vl.model)
    from vlalign.methods.packing import packed_tokens

    # --- alternate: one step of every side per round, rotating the order
    sides: list[tuple[str, object]] = [(v.name, v) for v in args.variant_list]
    if trl is not None:
        sides.insert(0, ("trl", None))
    times: dict[str, list[float]] = {name: [] for name, _ in sides}
    work_mem: dict[str, list[int]] = {name: [] for name, _ in sides}
    losses: dict[str, list[float]] = {name: [] for name, _ in sides}
    cuda = args.device == "cuda"
    rounds = args.warmup + args.steps
    for r in range(rounds):
        k = r % len(sides)
        for name, v in sides[k:] + sides[:k]:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            sync(args.device)
            t0 = time.perf_counter()
            out = trl.step() if name == "trl" else vl.step(v)
            sync(args.device)
            dt = time.perf_counter() - t0
            losses[name].append(out["loss"])
            if r >= args.warmup:
                times[name].append(dt)
                if cuda:
                    work_mem[name].append(torch.cuda.max_memory_allocated() - before)
        print(f"round {r + 1}/{rounds}{' (warm-up)' if r < args.warmup else ''} done", flush=True)

    # --- memory
    mem: dict[str, dict] = {}
    mem_method = "none"
    if cuda:
        mem_method = (
            "CUDA: max_memory_allocated - allocated before the step (working), plus the side's "
            "parameters, buffers and optimizer state (peak = resident state + working)"
        )
        static = {"trl": trl.static_bytes()} if trl is not None else {}
        for name, _ in sides:
            st = static.get(name, vl.static_bytes() if name != "trl" else 0)
            w = max(work_mem[name]) if work_mem[name] else 0
            mem[name] = {"working_bytes": w, "state_bytes": st, "peak_bytes": st + w}
    elif args.memory != "none":
        mem_method = (
            "CPU: fresh subprocess per row, peak RSS over 2 steps (after 1 warm-up step, peak "
            "reset via /proc/self/clear_refs) minus RSS before them; MALLOC_MMAP_THRESHOLD_=1MiB"
        )
        wanted = [n for n, _ in sides] if args.memory == "all" else ["trl", "vlalign"]
        results = measure_memory_subprocesses(argv, [n for n in wanted if n in times])
        for name, res in results.items():
            if "error" in res:
                mem[name] = {"error": res["error"]}
            else:
                mem[name] = {"working_bytes": res["peak_over_baseline_bytes"], "peak_bytes": None}
        print("memory workers done", flush=True)

    # --- rows
    patches = patches_per_image(vl.model, batch)
    flops_pair = model_flops_per_pair(counts, tokens / B, patches)
    lora_flops_pair = lora_aware_flops_per_pair(counts, tokens / B, patches)
    trl_med = statistics.median(times["trl"]) if times.get("trl") else None
    trl_min = min(times["trl"]) if times.get("trl") else None
    rows = []
    labels = {v.name: v.label for v in VARIANTS}
    labels["trl"] = f"TRL {trl.version} DPOTrainer" if trl is not None else "TRL"
    for name, _ in sides:
        med = statistics.median(times[name])
        row = {
            "name": name,
            "label": labels[name].strip(),
            "step_s_median": med,
            "step_s": times[name],
            "pairs_per_s": B / med,
            "tokens_per_s": tokens / med,
            "loss_first": losses[name][0],
            "loss_last": losses[name][-1],
            "memory": mem.get(name),
            "speedup_vs_trl": (trl_med / med) if trl_med else None,
            "speedup_vs_trl_min": (trl_min / min(times[name])) if trl_min else None,
        }
        if cuda and peak:
            row["mfu"] = flops_pair * (B / med) / peak["flops_per_s"]
            row["mfu_lora_aware"] = lora_flops_pair * (B / med) / peak["flops_per_s"]
        rows.append(row)
    trl_logps = trl.first_logps() if trl is not None else None
    result = {
        "schema": SCHEMA,
        "config": {
            "device": args.device,
            "shape": args.shape,
            "family": setup.family,
            "size": args.size if args.shape in TINY_SHAPES else None,
            "shrink": args.shrink,
            "dtype": args.dtype,
            "attn": args.attn,
            "batch_pairs": B,
            "image_size": setup.image_size,
            "workload": {
                k: list(v) if isinstance(v, tuple) else v for k, v in args.workload.items()
            },
            "lora": {"r": args.lora_r, "alpha": args.lora_alpha, "targets": len(targets)},
            "trainable_params": vl.trainable,
            "params": counts.__dict__,
            "lr": args.lr,
            "chunk_size": args.chunk_size,
            "gradient_checkpointing": args.gradient_checkpointing,
            "optimizer": "torch.optim.AdamW on the LoRA parameters, both sides (no DeepSpeed, "
            "no clipping, no schedule)",
            "warmup_rounds": args.warmup,
            "rounds": args.steps,
            "notes": setup.notes + vl.notes,
        },
        "conditions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "loadavg_end": os.getloadavg(),
            "gpu": torch.cuda.get_device_name() if cuda else None,
            "wall_s": None,
        },
        "tokens": {
            "per_step": tokens,
            "per_pair": tokens / B,
            "image_tokens_per_step": n_image_tokens,
            "packed_per_step": packed_tokens(batch),
            "trl_per_step": trl.tokens if trl is not None else None,
        },
        "reference_precompute_s": vl.precompute_s,
        "init_logps": {
            "vlalign": vl.init_logps,
            "trl": trl_logps,
        },
        "trl_error": trl_error,
        "memory_method": mem_method,
        "rows": rows,
        "flops": {
            "formula": FORMULA,
            "flops_per_pair": flops_pair,
            "lora_aware_flops_per_pair": lora_flops_pair,
            "patches_per_image": patches,
            "bf16_peak": peak,
        },
    }
    result["conditions"]["wall_s"] = time.perf_counter() - t_start
    return result


# ----------------------------------------------------------------------------- report
def _mib(x) -> str:
    return f"{x / MIB:.0f}" if isinstance(x, (int, float)) else "-"


def report(res: dict) -> str:
    c, t = res["config"], res["tokens"]
    lines = [
        f"DPO step: device {c['device']}, {c['shape']} ({c['family']}, {c['params']['total'] / 1e6:.1f}M "
        f"params, LM {c['params']['lm'] / 1e6:.1f}M, vision {c['params']['vision'] / 1e6:.1f}M), "
        f"{c['dtype']}, attn {c['attn']}",
        f"batch {c['batch_pairs']} pairs, image {c['image_size']} px, {t['per_pair']:.0f} tokens/pair "
        f"(chosen + rejected, prompt and {t['image_tokens_per_step'] // (2 * c['batch_pairs'])} image "
        f"tokens counted twice); packed rows hold {t['packed_per_step'] / c['batch_pairs']:.0f}/pair",
        f"LoRA r={c['lora']['r']} alpha={c['lora']['alpha']:g} on {c['lora']['targets']} LM projections "
        f"({c['trainable_params'] / 1e6:.2f}M trainable); {c['optimizer']}; gradient checkpointing "
        f"{'on' if c['gradient_checkpointing'] else 'off'} (both)",
        f"timing: {c['warmup_rounds']} warm-up + {c['rounds']} counted rounds, sides alternate "
        f"(rotating order); step ms = median, min ms = fastest (interference only slows a step); "
        f"x TRL = TRL's step time / this row's (median; min); threads {res['conditions']['threads']}, load avg at end "
        f"{res['conditions']['loadavg_end'][0]:.1f}",
    ]
    for note in c["notes"]:
        lines.append(f"note: {note}")
    if res["trl_error"]:
        lines.append("TRL could not run this setup: " + res["trl_error"].splitlines()[0])
    lines.append(f"memory: {res['memory_method']}")
    mfu = any("mfu" in r for r in res["rows"])
    head = (
        f"{'implementation':44} {'step ms':>8} {'min ms':>7} {'pairs/s':>8} {'tokens/s':>9} "
        f"{'mem MiB':>8} {'x TRL':>6} {'(min)':>6}" + (f" {'MFU':>6}" if mfu else "")
    )
    lines += [head, "-" * len(head)]
    for r in res["rows"]:
        m = r["memory"] or {}
        mem = m.get("peak_bytes") or m.get("working_bytes")
        sp = f"{r['speedup_vs_trl']:.2f}" if r["speedup_vs_trl"] else "-"
        sp_min = f"{r['speedup_vs_trl_min']:.2f}" if r["speedup_vs_trl_min"] else "-"
        line = (
            f"{r['label'][:44]:44} {r['step_s_median'] * 1e3:>8.1f} {min(r['step_s']) * 1e3:>7.1f} "
            f"{r['pairs_per_s']:>8.2f} {r['tokens_per_s']:>9.0f} {_mib(mem):>8} {sp:>6} {sp_min:>6}"
        )
        if mfu:
            line += f" {r['mfu'] * 100:>5.1f}%"
        lines.append(line)
    il = res["init_logps"]
    if il["trl"]:
        lines.append(
            f"check: mean summed log-probs at init (chosen, rejected): vlalign "
            f"({il['vlalign'][0]:.3f}, {il['vlalign'][1]:.3f}), TRL ({il['trl'][0]:.3f}, "
            f"{il['trl'][1]:.3f}); tokens/step vlalign {t['per_step']}, TRL {t['trl_per_step']}"
        )
    lines.append(
        f"reference log-probs precomputed once: {res['reference_precompute_s'] * 1e3:.1f} ms for "
        "this batch (not in the step; TRL cannot precompute for vision data)"
    )
    if mfu:
        pk = res["flops"]["bf16_peak"]["flops_per_s"]
        lines.append(
            f"MFU = model FLOPs/pair x pairs/s / measured bf16 peak ({pk / 1e12:.0f} TFLOP/s); "
            f"{res['flops']['formula']}; {res['flops']['flops_per_pair'] / 1e12:.2f} TFLOP/pair"
        )
    lines.append(f"wall {res['conditions']['wall_s']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(args)))
        return 0
    res = run(args, argv)
    print(report(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
