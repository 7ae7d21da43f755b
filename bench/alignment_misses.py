"""Where do the aligned models miss? The wrong decisions of an alignment study, by what the image
looked like.

Joins each evaluation's answers (`<out>/s<seed>/eval-<stage>/rows.jsonl`, written by
`bench/alignment_seeds.py`) with the records of the shard set they were scored on
(`<out>/data-<seed>-*`: the synthetic generator's `meta.cue`, `meta.cue_scale` and
`meta.background`) and counts, per split and stage, the harmful prompts answered and the benign
prompts refused, grouped by background, cue size (small / training / large: below, inside or
above the training radius range) and cue. Read-only; prints one table per split.

    .venv/bin/python bench/alignment_misses.py runs/alignment-seeds [--stages sft dpo]
        [--splits shift-visual shift-both] [--json misses.json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from data_pipeline.images import TRAIN_SCALE
from data_pipeline.reader import iter_samples


def size_bucket(scale: float | None) -> str:
    """ "small", "train" or "large": the cue radius (a fraction of the side) against TRAIN_SCALE."""
    if scale is None:
        return "?"
    lo, hi = TRAIN_SCALE
    return "small" if scale < lo else "large" if scale > hi else "train"


def record_meta(data_dir: Path, split: str) -> dict[str, dict]:
    """key -> meta of every record of one split (images not decoded)."""
    return {s["key"]: s.get("meta") or {} for s in iter_samples(str(data_dir), split, images=False)}


def misses(rows: list[dict], metas: dict[str, dict]) -> list[dict]:
    """The wrong decisions among `rows`: harmful answered, or benign refused, with their meta."""
    out = []
    for r in rows:
        wrong = (r["label"] == "harmful") != bool(r["refused"])
        if not wrong:
            continue
        meta = metas.get(r["key"], {})
        out.append(
            {
                "split": r["split"],
                "key": r["key"],
                "label": r["label"],
                "cue": meta.get("cue", "?"),
                "background": meta.get("background", "?"),
                "size": size_bucket(meta.get("cue_scale")),
                "answer": r["answer"],
            }
        )
    return out


def study_misses(out: Path, stages: list[str], splits: list[str] | None) -> list[dict]:
    """Every miss of every seed and stage found under a study's output directory."""
    found = []
    for seed_dir in sorted(out.glob("s[0-9]*")):
        seed = seed_dir.name[1:]
        data = sorted(out.glob(f"data-{seed}-*"))
        if not data:
            continue
        metas: dict[str, dict[str, dict]] = {}
        for stage in stages:
            rows_path = seed_dir / f"eval-{stage}" / "rows.jsonl"
            if not rows_path.exists():
                continue
            rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line]
            for split in sorted({r["split"] for r in rows}):
                if splits and split not in splits:
                    continue
                if split not in metas:
                    metas[split] = record_meta(data[0], split)
                for m in misses([r for r in rows if r["split"] == split], metas[split]):
                    found.append({"seed": int(seed), "stage": stage, **m})
    return found


def table(found: list[dict], split: str, by: str) -> str:
    """Counts of one split's misses by `by`, a column per (stage, label)."""
    rows = [m for m in found if m["split"] == split]
    cols = sorted({(m["stage"], m["label"]) for m in rows})
    counts = Counter((m[by], m["stage"], m["label"]) for m in rows)
    values = sorted({m[by] for m in rows})
    head = f"{by:<14}" + "".join(f"{s + ' ' + lab[:4]:>14}" for s, lab in cols)
    lines = [head]
    for v in values:
        lines.append(f"{v:<14}" + "".join(f"{counts[(v, s, lab)]:>14}" for s, lab in cols))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="the --out directory of bench/alignment_seeds.py")
    ap.add_argument("--stages", nargs="+", default=["sft", "dpo"])
    ap.add_argument("--splits", nargs="+", default=None, help="default: every split found")
    ap.add_argument("--json", default=None, help="write every miss here")
    args = ap.parse_args()
    found = study_misses(Path(args.out), args.stages, args.splits)
    for split in sorted({m["split"] for m in found}):
        print(f"\n== {split}: misses summed over seeds (harm: answered, beni: refused)")
        for by in ("background", "size", "cue"):
            print(table(found, split, by))
            print()
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
