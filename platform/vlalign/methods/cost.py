"""Cost model (Safe RLHF): the VLM with a scalar head, trained so the more harmful answer of a
pair costs more and cost > 0 reads as unsafe (`vlalign.losses.cost`).

Batches are preference pairs whose chosen answer is the SAFER one and rejected the more
harmful one (`data_pipeline.collate.collate_pairs`). Per-response safety signs come from the
record meta (`chosen_safe` / `rejected_safe`) as ``chosen_safety_sign`` /
``rejected_safety_sign`` [B] (+1 unsafe, -1 safe, 0 unknown); a batch without them (e.g. SPA-VL
pairs) trains the pairwise term only, and ``costs/labelled`` shows the labelled fraction.
The scalar head and the pair scoring are the reward model's (`vlalign.methods.reward`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from vlalign.losses import LossSpec, resolve_loss
from vlalign.methods.base import StepOutput
from vlalign.methods.reward import Reward, score_pairs

if TYPE_CHECKING:
    from vlalign.config.schema import CostMethod


def safety_signs(batch: dict) -> tuple[Tensor, Tensor]:
    """(better_signs, worse_signs) [B] long: the chosen (safer) and rejected answers' signs,
    zeros (unknown) when the batch carries no safety labels."""
    B = batch["chosen_input_ids"].shape[0]
    device = batch["chosen_input_ids"].device
    zeros = torch.zeros(B, dtype=torch.long, device=device)
    return batch.get("chosen_safety_sign", zeros), batch.get("rejected_safety_sign", zeros)


def cost_sums(better: Tensor, worse: Tensor, sb: Tensor, sw: Tensor) -> dict[str, float]:
    """Metric SUMS of one batch (costs [B], signs [B]): costs/better, costs/worse,
    costs/pair_accuracy (worse costs more), and over responses with a known sign
    (sign(cost) == sign): costs/sign_correct and costs/sign_labelled, also split by the label
    (costs/unsafe_correct, costs/unsafe_labelled, costs/safe_correct, costs/safe_labelled)."""
    better, worse = better.detach().float(), worse.detach().float()
    signs = torch.cat([sb, sw])
    correct = torch.cat([torch.sign(better), torch.sign(worse)]) == signs
    out = {
        "costs/better": float(better.sum()),
        "costs/worse": float(worse.sum()),
        "costs/pair_accuracy": float((worse > better).float().sum()),
    }
    for name, mask in (("sign", signs != 0), ("unsafe", signs == 1), ("safe", signs == -1)):
        out[f"costs/{name}_correct"] = float((correct & mask).sum())
        out[f"costs/{name}_labelled"] = float(mask.sum())
    return out


def cost_metrics(sums: dict[str, float], pairs: float) -> dict[str, float]:
    """Means from `cost_sums` (summed over batches/ranks) and the pair count: costs/better,
    costs/worse, costs/pair_accuracy, costs/labelled (fraction of responses with a sign), and
    costs/sign_accuracy, costs/sign_accuracy_unsafe, costs/sign_accuracy_safe (each when it has
    labelled responses; on the synthetic set 3 of 4 answers are safe, so "all costs < 0"
    scores 0.75 overall but 0 on unsafe answers: read the split ones)."""
    n = max(pairs, 1.0)
    out = {k: sums[k] / n for k in ("costs/better", "costs/worse", "costs/pair_accuracy")}
    out["costs/labelled"] = sums.get("costs/sign_labelled", 0.0) / (2 * n)
    for name, key in (
        ("sign", "costs/sign_accuracy"),
        ("unsafe", "costs/sign_accuracy_unsafe"),
        ("safe", "costs/sign_accuracy_safe"),
    ):
        labelled = sums.get(f"costs/{name}_labelled", 0.0)
        if labelled > 0:
            out[key] = sums[f"costs/{name}_correct"] / labelled
    return out


class Cost(Reward):
    """Batches: chosen_* (safer) / rejected_* (more harmful) [B, T] + the images once per pair,
    + chosen_safety_sign / rejected_safety_sign [B] when the data carries safety labels.

    The reward model's machinery (the policy under a scalar head, pairs as units); its own loss."""

    def __init__(self, cfg: CostMethod) -> None:  # type: ignore[override]
        self.cfg = cfg
        self.loss: LossSpec = resolve_loss("cost", cfg.loss)
        self.model: nn.Module | None = None
        self.pad_id = 0

    def step(self, batch: dict) -> StepOutput:
        """Safe RLHF cost loss summed over pairs; count = pairs."""
        better, worse = score_pairs(self.model, batch, self.pad_id, self.cfg.share_vision)
        sb, sw = safety_signs(batch)
        out = self.loss.fn(
            worse, better, sw, sb, margin=self.cfg.margin, sign_weight=self.cfg.sign_weight
        )
        B = better.shape[0]
        return StepOutput(
            loss_sum=out.loss * B, count=float(B), sums=cost_sums(better, worse, sb, sw)
        )

    def metrics(self, sums: dict[str, float], count: float) -> dict[str, float]:
        """Means over the step's pairs; sign accuracy over its labelled responses."""
        return cost_metrics(sums, count)


@torch.no_grad()
def evaluate_cost_model(
    model: nn.Module, batches: Iterable[dict], pad_id: int, share_vision: bool = True
) -> dict[str, float]:
    """Held-out scorecard of a cost model (a `RewardModel` with its head): pair accuracy (the
    more harmful answer costs more), sign accuracy (sign(cost) == safety sign, over labelled
    answers), labelled fraction, mean costs, and `pairs`. Batches as `Cost.step` takes them."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    pairs = 0.0
    try:
        for batch in batches:
            better, worse = score_pairs(model, batch, pad_id, share_vision)
            sb, sw = safety_signs(batch)
            for k, v in cost_sums(better, worse, sb, sw).items():
                sums[k] = sums.get(k, 0.0) + v
            pairs += better.shape[0]
    finally:
        model.train(was_training)
    return {**cost_metrics(sums, pairs), "pairs": pairs}


METHOD = Cost
