"""The cost-model loss of Safe RLHF (kind "cost").

Safe RLHF (Dai et al. 2024, "Safe RLHF: Safe Reinforcement Learning from Human Feedback",
eq. 6) and Safe RLHF-V (Ji et al. 2025) train a cost model C on safety preferences: of two
responses to one prompt, y_w is the MORE harmful ("worse") and y_l the safer ("better"), and
each response carries a safety sign s = +1 if it is harmful (unsafe), -1 if it is safe:

    L_C = - E[ log sigmoid(C(y_w) - C(y_l)) ]                         (pairwise: worse costs more)
          - E[ log sigmoid(s_w C(y_w)) + log sigmoid(s_l C(y_l)) ]    (classification by sign)

The second term pushes unsafe responses to C > 0 and safe ones to C < 0, so the sign of the
cost reads as the safety verdict and 0 is the natural budget boundary in constrained RL.

Here the expectation is the batch mean of per-pair losses (micro-batches of equal size
accumulate exactly), with two extensions that default to the paper's formula:

- ``margin`` (float or [B]) is subtracted inside the pairwise term, as in the reward loss;
- ``sign_weight`` scales the classification term (1.0 is the paper);
- a sign of 0 means "no safety label" (e.g. SPA-VL pairs, which say which answer is safer but
  not whether either is safe): that response contributes no classification term (masked, not
  log 2), so unlabelled pairs train the pairwise term only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlalign.losses.base import LossOutput


def _check_signs(name: str, signs: Tensor) -> None:
    if not bool(((signs == 1) | (signs == -1) | (signs == 0)).all()):
        bad = signs[~((signs == 1) | (signs == -1) | (signs == 0))]
        raise ValueError(
            f"{name}: safety signs must be +1 (unsafe), -1 (safe) or 0 (unknown), "
            f"got {bad.tolist()[:4]}"
        )


def cost_loss(
    worse_costs: Tensor,
    better_costs: Tensor,
    worse_signs: Tensor,
    better_signs: Tensor,
    *,
    margin: Tensor | float = 0.0,
    sign_weight: float = 1.0,
) -> LossOutput:
    """Safe RLHF cost-model loss. All inputs [B]; returns LossOutput with loss [] (grad).

    worse_costs, better_costs: costs of the more harmful and the safer response of each pair.
    worse_signs, better_signs: +1 unsafe, -1 safe, 0 unknown (no classification term).
    per pair: l_i = -logsigmoid(c_w - c_b - margin)
                    + sign_weight * (-logsigmoid(s_w c_w) [s_w != 0] - logsigmoid(s_b c_b) [s_b != 0])
    loss = mean_i l_i.

    metrics (detached): pair_accuracy = mean(c_w > c_b); sign_accuracy = fraction of labelled
    responses with sign(c) == s (absent when no response is labelled); costs/worse, costs/better
    (batch means); sign_labelled = labelled responses / (2B). ``chosen_rewards`` and
    ``rejected_rewards`` are None: these are costs, not rewards (`reward_metrics` skips them).
    """
    _check_signs("worse_signs", worse_signs)
    _check_signs("better_signs", better_signs)
    pair = -F.logsigmoid(worse_costs - better_costs - margin)
    sw = worse_signs.to(worse_costs.dtype)
    sb = better_signs.to(better_costs.dtype)
    zero = torch.zeros_like(pair)
    cls_w = torch.where(sw != 0, -F.logsigmoid(sw * worse_costs), zero)
    cls_b = torch.where(sb != 0, -F.logsigmoid(sb * better_costs), zero)
    losses = pair + sign_weight * (cls_w + cls_b)

    cw, cb = worse_costs.detach(), better_costs.detach()
    labelled = torch.cat([sw != 0, sb != 0])
    correct = torch.cat([torch.sign(cw) == sw, torch.sign(cb) == sb]) & labelled
    metrics = {
        "pair_accuracy": (cw > cb).float().mean(),
        "costs/worse": cw.float().mean(),
        "costs/better": cb.float().mean(),
        "sign_labelled": labelled.float().mean(),
    }
    if bool(labelled.any()):
        metrics["sign_accuracy"] = correct.float().sum() / labelled.float().sum()
    return LossOutput(losses.mean(), metrics=metrics)
