"""Peak memory of response log-probs, naive vs chunked (`vlalign.logprobs`), forward + backward.

Two paths, each measured naive and chunked in the same run:

- ``hidden``: from final hidden states [B, T, H] through the LM head [V, H] (gradients to both):
  naive ``log_softmax((h @ W.T).float()).gather`` vs `sequence_logprobs_from_hidden`.
- ``logits``: from given logits [B, T, V] (a leaf that needs grad): naive
  ``log_softmax(logits.float()).gather`` vs `sequence_logprobs`. The logits and their gradient
  are needed by both and are part of neither figure's difference; the saving is the float32
  log-softmax and its gradient.

What is measured. Every (path, variant) runs in its own fresh Python process, so one cannot
inherit the other's allocator state. Inputs are built, one tiny warm-up call loads the kernels,
then the full forward + backward runs once.

- CPU: peak resident set size (``ru_maxrss``) minus the resident size just before the run.
  This is what the OS had to provide: live tensors (including the gradients produced) plus
  allocator slack. The worker sets ``MALLOC_MMAP_THRESHOLD_`` so that freed large blocks go
  back to the OS instead of being kept by glibc, which keeps the figure close to live memory.
- CUDA: ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` before the run
  (tensor memory only; the caching allocator's reserve is not counted).

Both variants' results are compared (summed log-probs and gradient norms) so the table only
reports memory for computations that agree.

    .venv/bin/python bench/logprobs_memory.py                    # CPU, V = 32k (~40 s on 2 cores)
    .venv/bin/python bench/logprobs_memory.py --device cuda --vocab 32000 152064 --seq 4096
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "platform") not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "platform"))

PATHS = ("hidden", "logits")
VARIANTS = ("naive", "chunked")
MIB = 1024 * 1024


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _inputs(cfg: dict, torch, size: tuple[int, int]) -> dict:
    """Random inputs on cfg's device: labels [B, T] with the first quarter of each row masked."""
    b, t = size
    dev, dtype = cfg["device"], getattr(torch, cfg["dtype"])
    g = torch.Generator(device=dev).manual_seed(0)
    labels = torch.randint(0, cfg["vocab"], (b, t), generator=g, device=dev)
    labels[:, : t // 4] = -100  # prompt positions are not scored
    x: dict = {"labels": labels}
    if cfg["path"] == "hidden":
        x["hidden"] = torch.randn(b, t, cfg["hidden"], generator=g, device=dev, dtype=dtype)
        x["weight"] = torch.randn(cfg["vocab"], cfg["hidden"], generator=g, device=dev, dtype=dtype)
        x["weight"].mul_(cfg["hidden"] ** -0.5)
        x["hidden"].requires_grad_(True)
        x["weight"].requires_grad_(True)
    else:
        x["logits"] = torch.randn(b, t, cfg["vocab"], generator=g, device=dev, dtype=dtype)
        x["logits"].requires_grad_(True)
    return x


def _run(cfg: dict, x: dict, torch) -> tuple[float, float]:
    """One forward + backward of the chosen variant; returns (sum of log-probs, grad norm)."""
    import torch.nn.functional as F

    from vlalign.logprobs import sequence_logprobs, sequence_logprobs_from_hidden

    labels = x["labels"]
    if cfg["variant"] == "naive":
        logits = F.linear(x["hidden"], x["weight"]) if cfg["path"] == "hidden" else x["logits"]
        logp = torch.log_softmax(logits.float(), dim=-1)[:, :-1]
        target = labels[:, 1:]
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        total = (picked * (target != -100)).sum()
    elif cfg["path"] == "hidden":
        out = sequence_logprobs_from_hidden(x["hidden"], x["weight"], labels, cfg["chunk_size"])
        total = out.sum.sum()
    else:
        total = sequence_logprobs(x["logits"], labels, cfg["chunk_size"]).sum.sum()
    total.backward()
    leaves = [v for v in x.values() if v.requires_grad]
    grad_norm = sum(float(v.grad.float().norm()) ** 2 for v in leaves) ** 0.5
    return float(total), grad_norm


def worker(cfg: dict) -> dict:
    """Measure one (path, variant) in this process; returns the figures as a dict."""
    import torch

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    cuda = cfg["device"] == "cuda"
    _run(cfg, _inputs(cfg, torch, (2, 16)), torch)  # warm-up: load kernels, init pools
    x = _inputs(cfg, torch, (cfg["batch"], cfg["seq"]))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()
    start = time.perf_counter()
    total, grad_norm = _run(cfg, x, torch)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    seconds = time.perf_counter() - start
    return {"peak_bytes": peak, "seconds": seconds, "sum_logps": total, "grad_norm": grad_norm}


def _measure(cfg: dict) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"worker failed for {cfg}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, nargs="+", default=[32000])
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    method = (
        "torch.cuda.max_memory_allocated - allocated before"
        if args.device == "cuda"
        else "peak RSS - RSS before, fresh process per cell"
    )
    print(
        f"log-prob memory, forward+backward, device={args.device}, dtype={args.dtype}, "
        f"B={args.batch} T={args.seq} H={args.hidden} chunk={args.chunk_size} "
        f"(3/4 of positions scored); measure: {method}"
    )
    header = (
        f"{'path':7} {'V':>7} {'naive MiB':>10} {'chunked MiB':>12} {'ratio':>6} "
        f"{'naive s':>8} {'chunked s':>10} {'|d sum|':>9} {'|d grad|/grad':>13}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for vocab in args.vocab:
        for path in args.paths:
            res = {}
            for variant in VARIANTS:
                cfg = {
                    "device": args.device,
                    "dtype": args.dtype,
                    "batch": args.batch,
                    "seq": args.seq,
                    "hidden": args.hidden,
                    "vocab": vocab,
                    "chunk_size": args.chunk_size,
                    "threads": args.threads,
                    "path": path,
                    "variant": variant,
                }
                res[variant] = _measure(cfg)
            n, c = res["naive"], res["chunked"]
            d_sum = abs(n["sum_logps"] - c["sum_logps"])
            d_grad = abs(n["grad_norm"] - c["grad_norm"]) / max(n["grad_norm"], 1e-30)
            ratio = n["peak_bytes"] / max(c["peak_bytes"], 1)
            rows.append({"path": path, "vocab": vocab, "naive": n, "chunked": c, "ratio": ratio})
            print(
                f"{path:7} {vocab:>7} {n['peak_bytes'] / MIB:>10.0f} {c['peak_bytes'] / MIB:>12.0f} "
                f"{ratio:>6.1f} {n['seconds']:>8.2f} {c['seconds']:>10.2f} {d_sum:>9.2e} "
                f"{d_grad:>13.2e}"
            )
            tol = 1e-4 * max(1.0, abs(n["sum_logps"])) if args.dtype == "float32" else 1e-2
            if d_sum > tol or d_grad > (1e-4 if args.dtype == "float32" else 1e-2):
                print(f"MISMATCH between naive and chunked for {path} V={vocab}", file=sys.stderr)
                return 1
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
