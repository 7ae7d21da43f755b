"""Reward model: the VLM with a scalar head on the last token, trained with Bradley-Terry."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlalign.config.schema import Recipe
from vlalign.losses import LossSpec, resolve_loss
from vlalign.methods.base import StepOutput
from vlalign.methods.forward import stacked_pair_inputs
from vlalign.methods.pair_inputs import encode_images, image_inputs
from vlalign.models.unwrap import unwrap


class RewardModel(nn.Module):
    """policy VLM (LoRA) + value head [H] -> 1 read at each sequence's last real token.

    forward(input_ids [N, T], attention_mask [N, T], **image kwargs) -> rewards [N] float32.
    """

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy
        hidden = unwrap(policy).config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.normal_(self.value_head.weight, std=1.0 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.value_head.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra
    ) -> torch.Tensor:
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=True,
            logits_to_keep=1,
            use_cache=False,
            **extra,
        )
        hidden = out.hidden_states[-1]  # [N, T, H]
        last = attention_mask.long().sum(dim=1) - 1  # right padding
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.value_head(h).squeeze(-1).float()


@dataclass
class State:
    model: nn.Module  # the engine wrapping a RewardModel
    loss: LossSpec
    recipe: Recipe
    pad_id: int
    batch_kind: str = "pairs"


def setup(recipe: Recipe, model: nn.Module, pad_id: int, **_) -> State:
    """The loop wraps the policy in RewardModel before the engine; batches are pairs."""
    return State(
        model=model, loss=resolve_loss("reward", recipe.method.loss), recipe=recipe, pad_id=pad_id
    )


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


def step(state: State, batch: dict) -> StepOutput:
    """Bradley-Terry loss sum over pairs; count = pairs; accuracy = chosen scored higher."""
    rc, rr = score_pairs(state.model, batch, state.pad_id, state.recipe.method.share_vision)
    out = state.loss.fn(rc, rr, margin=state.recipe.method.reward_margin)
    B = rc.shape[0]
    sums = {
        "rewards/chosen": float(rc.detach().sum()),
        "rewards/rejected": float(rr.detach().sum()),
        "rewards/accuracies": float((rc > rr).float().sum()),
        "rewards/margins": float((rc - rr).detach().sum()),
    }
    return StepOutput(loss_sum=out.loss * B, count=float(B), sums=sums)


def metrics(sums: dict[str, float], count: float) -> dict[str, float]:
    """Means over the step's pairs."""
    return {k: v / max(count, 1.0) for k, v in sums.items()}
