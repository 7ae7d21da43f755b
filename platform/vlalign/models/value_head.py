"""A VLM with a scalar head: what reward and cost models are (trained by methods/reward.py and
methods/cost.py, read by evaluation, export and online-RL rewards)."""

from __future__ import annotations

import torch
from torch import nn

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
