"""Losses on unpaired completions (kind "unpaired"): KTO.

KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", eq. 8):

    r(x, y)  = log pi(y|x) - log pi_ref(y|x)                    the implied reward
    z0       = max(0, E_{(x, y') mismatched}[ r(x, y') ])        the KL reference point (no grad)
    v(x, y)  = lambda_D * sigmoid(beta * (r(x, y) - z0))   if y is desirable
               lambda_U * sigmoid(beta * (z0 - r(x, y)))   if y is undesirable
    L        = E[ lambda_y - v(x, y) ]

`z0` is estimated from mismatched pairs: the prompt (and image) of one example with the
completion of another, so it measures how far the policy has moved from the reference on
answers that do not belong to the question. Like TRL's KTOTrainer, the estimate is detached.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlalign.losses.base import LossOutput


def kl_reference_point(kl_policy_logps: Tensor, kl_ref_logps: Tensor) -> Tensor:
    """z0 = max(0, mean(kl_policy_logps - kl_ref_logps)), detached. Inputs [M] -> [] scalar."""
    if kl_policy_logps.numel() == 0:
        return kl_policy_logps.new_zeros(())
    return (kl_policy_logps - kl_ref_logps).detach().float().mean().clamp(min=0)


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    kl_policy_logps: Tensor | None = None,
    kl_ref_logps: Tensor | None = None,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    z0: Tensor | None = None,
) -> LossOutput:
    """KTO loss, the mean over the N completions of lambda_y - v(x, y).

    policy_logps, ref_logps: [N] summed response log-probs; desirable: [N] bool.
    kl_policy_logps, kl_ref_logps: [M] summed log-probs of mismatched (prompt, completion)
    pairs, used for z0 unless `z0` (a [] tensor, e.g. all-reduced over ranks) is given.
    Returns loss [] and chosen_rewards = beta * r on desirable rows, rejected_rewards = beta * r
    on undesirable rows (detached); metrics["kl"] = z0.
    """
    if z0 is None:
        if kl_policy_logps is None or kl_ref_logps is None:
            raise ValueError("kto_loss needs the mismatched log-probs or z0")
        z0 = kl_reference_point(kl_policy_logps, kl_ref_logps)
    z0 = z0.detach().to(policy_logps.dtype)
    desirable = desirable.bool()
    r = policy_logps - ref_logps  # [N]
    weight = torch.where(
        desirable,
        torch.full_like(r, desirable_weight),
        torch.full_like(r, undesirable_weight),
    )
    value = torch.where(desirable, torch.sigmoid(beta * (r - z0)), torch.sigmoid(beta * (z0 - r)))
    losses = weight * (1.0 - value)
    rewards = (beta * r).detach()
    return LossOutput(
        losses.mean(),
        chosen_rewards=rewards[desirable],
        rejected_rewards=rewards[~desirable],
        metrics={"kl": z0.detach()},
    )
