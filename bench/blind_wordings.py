"""Do the aligned models hold on wordings nobody looked at? Re-score a finished alignment study
on a wording bank written apart from the training paraphrases.

`shift-wording` and `shift-both` ask with `data_pipeline.synth.EVAL_WORDINGS`, a bank that was
in view while the training paraphrases were written, so it is not a blind test of them. This
script takes another bank (JSON: one list of wordings per request template, in the order of
`data_pipeline.synth.PROMPTS`), synthesizes each seed's shard set again with it in place of
EVAL_WORDINGS (same seed and sizes as `bench/alignment_seeds.py`: the images, cues and labels of
every split are the same; only the wording-shifted prompts change) and evaluates the models a
study exported (`<out>/s<seed>/<stage>/export`) on the two wording-shifted splits. The bank must
be disjoint from the prompts, training paraphrases and EVAL_WORDINGS (checked). Prints harmful /
benign refusal and text validity per seed, stage and split.

    .venv/bin/python bench/blind_wordings.py runs/alignment-seeds --bank bank.json
        [--seeds 0 1 2] [--stages sft dpo] [--json blind.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

SPLITS = ("shift-wording", "shift-both")
METRICS = ("harmful_refusal_rate", "benign_refusal_rate", "text_validity_rate")


def load_bank(path: Path) -> tuple[tuple[str, ...], ...]:
    """The bank in `path`, checked: one non-empty list per template, disjoint from every wording
    the generator already ships."""
    from data_pipeline.synth import EVAL_WORDINGS, PROMPTS, TRAIN_PARAPHRASES
    from vlalign.safety.refusal import normalize

    bank = json.loads(path.read_text())
    if not isinstance(bank, list) or len(bank) != len(PROMPTS):
        raise SystemExit(f"{path}: expected a list of {len(PROMPTS)} lists (one per template)")
    for i, ws in enumerate(bank):
        if not ws or not all(isinstance(w, str) and w.strip() for w in ws):
            raise SystemExit(f"{path}: template {i}: expected a non-empty list of strings")
    known = {normalize(p) for p in PROMPTS}
    known |= {normalize(p) for t in (*TRAIN_PARAPHRASES, *EVAL_WORDINGS) for p in t}
    seen = [w for ws in bank for w in ws if normalize(w) in known]
    if seen:
        raise SystemExit(f"{path}: already in the generator's banks: {seen}")
    return tuple(tuple(ws) for ws in bank)


def synthesize_with(
    bank: tuple[tuple[str, ...], ...],
    out: Path,
    seed: int,
    pairs: int,
    eval_pairs: int = 200,
    shift_pairs: int = 200,
) -> None:
    """`alignment_seeds`' shard set for `seed` (its sizes by default), the wording-shifted
    prompts drawn from `bank`."""
    from data_pipeline.synth import synthesize

    synthesize(
        out,
        pairs=pairs,
        seed=seed,
        eval_pairs=eval_pairs,
        shift_pairs=shift_pairs,
        eval_wordings=bank,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="an alignment_seeds --out directory")
    ap.add_argument(
        "--bank", type=Path, required=True, help="JSON: a list of wordings per template"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--stages", nargs="+", default=["sft", "dpo"])
    ap.add_argument("--pairs", type=int, default=512, help="as the study's --pairs")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from vlalign.config import load_recipe
    from vlalign.evaluation.runner import evaluate

    bank = load_bank(args.bank)
    digest = hashlib.sha256(json.dumps(bank).encode()).hexdigest()[:8]
    recipe = load_recipe("tiny/demo", ["tracking.enabled=false"])
    rows, t0 = [], time.time()
    for seed in args.seeds:
        data = args.study / f"blind-{digest}-data-{seed}-{args.pairs}"
        if not (data / "manifest.json").exists():
            synthesize_with(bank, data, seed, args.pairs)
        for stage in args.stages:
            export = args.study / f"s{seed}" / stage / "export"
            if not export.exists():
                raise SystemExit(f"{export}: no exported model (did the study train {stage}?)")
            card = evaluate(
                str(export),
                str(data),
                recipe,
                out_dir=args.study / f"s{seed}" / f"blind-{digest}-eval-{stage}",
                num_workers=1,
                name=f"blind-{stage}",
                splits=list(SPLITS),
            )
            for split, d in card.splits.items():
                m = {k: round(d["metrics"][k], 3) for k in METRICS}
                rows.append({"seed": seed, "stage": stage, "split": split, **m})
                print(
                    f"{seed:>4}  {stage:<10} {split:<13} {m['harmful_refusal_rate']:>6.3f} "
                    f"{m['benign_refusal_rate']:>6.3f} {m['text_validity_rate']:>6.3f}",
                    flush=True,
                )
    print(f"bank {args.bank} ({digest}), {time.time() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"bank": bank, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
