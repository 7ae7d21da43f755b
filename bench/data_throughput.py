"""Data pipeline throughput: the whole pipeline beside the raw tar read of the same shards.

One run, one process, one thread (so "per CPU-second" reads as "per core"); each stage runs
`--repeat` times and the run with the least CPU time is reported (the median beside it), since
other jobs on a shared machine only ever slow a run down:
  raw read     tar members of every sample (webdataset tar reader, hashing, no decoding)
  decode       + JSON record checked against its schema, images decoded to RGB
  pipeline     + chat template, processor, label masks, truncation, collate into preference
               batches (TrainLoader, shuffled, batched encoding) = what training consumes
  per-sample   the pipeline with one processor call per sample (make_transform), for contrast
  training     forward + backward of the tiny policy on those batches (chosen + rejected), to
               show whether training would ever wait on data

Prints a table and the ratio raw read / pipeline. Target: pipeline >= 1,000 preference pairs
per second per core on tiny-model shards.

    .venv/bin/python bench/data_throughput.py [--pairs 2000] [--model tiny-llava]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from data_pipeline.collate import collate_pairs
from data_pipeline.reader import TrainLoader, consumer_stream, iter_samples, open_split
from data_pipeline.synth import synthesize
from data_pipeline.transforms import make_transform

TARGET = 1000.0


class Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pairs", type=int, default=2000, help="preference pairs in the shards")
    ap.add_argument(
        "--model", default="tiny-llava", help="built-in tiny model whose processor encodes"
    )
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train-steps", type=int, default=5, help="training steps timed (0: skip)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each stage (best reported)")
    ap.add_argument("--cache-dir", default=None, help="where the tiny model is materialized")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from vlalign.config.schema import ModelConfig
    from vlalign.models.builder import build
    from vlalign.models.inputs import ChatEncoder

    built = build(ModelConfig(name=args.model, cache_dir=args.cache_dir))
    enc = ChatEncoder(built.processor, built.family, max_length=128)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ds = Path(tmp) / "ds"
        with Timer() as t:
            synthesize(ds, pairs=args.pairs, seed=0, eval_pairs=2, shard_samples=500)
        print(f"synthesized {args.pairs} pairs (32x32 PNG) in {t.wall:.1f} s; model {args.model}")
        ref = open_split(str(ds), "train")
        per_sample = make_transform(enc, "preference")
        sub = list(iter_samples(str(ds), "train"))[: max(200, args.pairs // 10)]
        batches: list[dict] = []

        def raw() -> int:
            return sum(1 for _ in consumer_stream(ref, shuffle=False))

        def decode() -> int:
            return sum(1 for _ in iter_samples(str(ds), "train"))

        def pipeline() -> int:
            loader = TrainLoader(
                str(ds),
                "train",
                kind="preference",
                encoder=enc,
                batch_size=args.batch_size,
                loop=False,
                seed=0,
            )
            n = 0
            for b in loader:
                n += b["n_examples"]
                if len(batches) < args.train_steps:
                    batches.append(b)
            return n

        def one_by_one() -> int:
            for i in range(0, len(sub), args.batch_size):
                collate_pairs([per_sample(s) for s in sub[i : i + args.batch_size]], 0)
            return len(sub)

        stages = [
            ("raw read (tar)", raw),
            ("+ decode + schema", decode),
            ("pipeline (collated)", pipeline),
            ("per-sample encode*", one_by_one),
        ]
        for name, fn in stages:
            runs = []
            for _ in range(args.repeat):
                with Timer() as t:
                    n = fn()
                runs.append(t)
            rows.append((name, n, runs))

    if args.train_steps:
        model = built.model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        keep = {"pixel_values", "image_grid_thw", "pixel_attention_mask"}
        with Timer() as t:
            n = 0
            for b in batches:
                loss = 0
                for side in ("chosen_", "rejected_"):
                    inputs = {
                        k.removeprefix(side): v
                        for k, v in b.items()
                        if k.startswith(side) and isinstance(v, torch.Tensor)
                    }
                    inputs.update({k: v for k, v in b.items() if k in keep})
                    loss = loss + model(**inputs).loss
                loss.backward()
                opt.step()
                opt.zero_grad()
                n += b["n_examples"]
        rows.append(("training fwd+bwd", n, [t]))

    print()
    print(
        f"{'stage':<22}{'samples':>9}{'wall s':>9}{'samples/s':>11}{'per CPU-s':>11}{'median':>9}"
    )
    figures = {}
    for name, n, runs in rows:
        best = min(runs, key=lambda r: r.cpu)
        med = sorted(runs, key=lambda r: r.cpu)[len(runs) // 2]
        wall_rate, cpu_rate = n / best.wall, n / max(best.cpu, 1e-9)
        figures[name] = {
            "samples": n,
            "wall_s": round(best.wall, 3),
            "cpu_s": round(best.cpu, 3),
            "per_s": round(wall_rate, 1),
            "per_cpu_s": round(cpu_rate, 1),
            "per_cpu_s_median": round(n / max(med.cpu, 1e-9), 1),
            "runs": len(runs),
        }
        print(
            f"{name:<22}{n:>9}{best.wall:>9.2f}{wall_rate:>11.0f}{cpu_rate:>11.0f}"
            f"{figures[name]['per_cpu_s_median']:>9.0f}"
        )
    raw, pipe = figures["raw read (tar)"], figures["pipeline (collated)"]
    print(
        f"best of {args.repeat} runs by CPU time (median per CPU-s beside it); "
        "* one processor call per sample, on a subset"
    )
    print()
    print(
        f"ratio raw read / pipeline: {raw['per_cpu_s'] / pipe['per_cpu_s']:.1f}x (per CPU-s), "
        f"{raw['per_s'] / pipe['per_s']:.1f}x (wall)"
    )
    verdict = "meets" if pipe["per_cpu_s"] >= TARGET else "MISSES"
    print(
        f"pipeline: {pipe['per_cpu_s']:.0f} preference pairs/s per core ({verdict} the "
        f"{TARGET:.0f}/s target)"
    )
    if "training fwd+bwd" in figures:
        tr = figures["training fwd+bwd"]
        print(
            f"training consumes {tr['per_cpu_s']:.0f} pairs/s per core: the pipeline is "
            f"{pipe['per_cpu_s'] / tr['per_cpu_s']:.1f}x faster than training needs"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
