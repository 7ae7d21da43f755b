"""Reward model: the VLM with a scalar head on the last token, trained with Bradley-Terry."""

from __future__ import annotations

import torch
from torch import nn

from vlalign.config.schema import RewardMethod
from vlalign.losses import LossSpec, resolve_loss
from vlalign.methods.base import OfflineMethod, Run, StepOutput, mean_sums
from vlalign.methods.forward import stacked_pair_inputs
from vlalign.models.pair_inputs import encode_images, image_inputs
from vlalign.models.unwrap import unwrap
from vlalign.models.value_head import RewardModel


def score_pairs(
    model: nn.Module, batch: dict, pad_id: int, share_vision: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of chosen and rejected [B] each, in one [2B, T] forward, images encoded once."""
    images = image_inputs(batch)
    rm = unwrap(model, peft=False)  # the RewardModel under a DeepSpeed engine
    features = encode_images(rm.policy, images) if images and share_vision else None
    seq, extra = stacked_pair_inputs(batch, pad_id, features)
    r = model(seq["input_ids"], seq["attention_mask"], **extra)
    B = batch["chosen_input_ids"].shape[0]
    return r[:B], r[B:]


class Reward(OfflineMethod):
    """Batches: chosen_* / rejected_* [B, T] + the images once per pair."""

    batch_kind = "pairs"

    def __init__(self, cfg: RewardMethod) -> None:
        self.cfg = cfg
        self.loss: LossSpec = resolve_loss("reward", cfg.loss)
        self.model: nn.Module | None = None
        self.pad_id = 0

    def prepare(self, run: Run) -> nn.Module:
        """The policy under a scalar value head is what trains."""
        self.pad_id = run.pad_id
        head = RewardModel(run.model)
        return head.to(unwrap(run.model).dtype)

    def setup(self, engine: nn.Module) -> None:
        self.model = engine

    def units(self, batch: dict) -> float:
        """Pairs."""
        return float(batch["chosen_input_ids"].shape[0])

    def tokens(self, batch: dict) -> int:
        return int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())

    def step(self, batch: dict) -> StepOutput:
        """Bradley-Terry loss sum over pairs; count = pairs; accuracy = chosen scored higher."""
        rc, rr = score_pairs(self.model, batch, self.pad_id, self.cfg.share_vision)
        out = self.loss.fn(rc, rr, margin=self.cfg.reward_margin)
        B = rc.shape[0]
        sums = {
            "rewards/chosen": float(rc.detach().sum()),
            "rewards/rejected": float(rr.detach().sum()),
            "rewards/accuracies": float((rc > rr).float().sum()),
            "rewards/margins": float((rc - rr).detach().sum()),
        }
        return StepOutput(loss_sum=out.loss * B, count=float(B), sums=sums)

    def metrics(self, sums: dict[str, float], count: float) -> dict[str, float]:
        """Means over the step's pairs."""
        return mean_sums(sums, count)


METHOD = Reward
