"""Training losses: pure functions of tensors, one per variant, looked up by name in `LOSSES`.

Three kinds, each with one signature shared by its members:

- ``"sft"``: ``fn(logps_sum [B], n_tokens [B], *, total_tokens=None) -> LossOutput``: the mean
  negative log-prob over every response token of the batch.
- ``"preference"`` (the DPO family, used by method ``dpo``)::

      fn(policy_chosen_logps [B], policy_rejected_logps [B],
         ref_chosen_logps [B] | None, ref_rejected_logps [B] | None, *,
         beta, label_smoothing=0.0, gamma=0.0,
         chosen_lengths [B] | None = None, rejected_lengths [B] | None = None,
         chosen_nll [] | None = None) -> LossOutput

  Log-probs are SUMMED over response tokens (`vlalign.logprobs.SequenceLogprobs.sum`); variants
  that average over tokens (IPO, SimPO, ORPO) divide by the lengths (``n_tokens``) themselves.
  Every member accepts every keyword; one it does not use is ignored, except a non-zero
  ``label_smoothing``, which only `LossSpec.uses_label_smoothing` variants accept.
  Reference-free variants (`LossSpec.reference_free`) accept ``None`` references.
- ``"unpaired"`` (KTO, `vlalign.losses.unpaired`)::

      fn(policy_logps [N], ref_logps [N], desirable [N] bool,
         kl_policy_logps [M], kl_ref_logps [M], *, beta,
         desirable_weight=1.0, undesirable_weight=1.0) -> LossOutput

- ``"reward"``: ``fn(chosen_rewards [B], rejected_rewards [B], *, margin=0.0) -> LossOutput``.
- ``"cost"`` (Safe RLHF, `vlalign.losses.cost`)::

      fn(worse_costs [B], better_costs [B], worse_signs [B], better_signs [B], *,
         margin=0.0, sign_weight=1.0) -> LossOutput

Every loss is the batch mean of per-pair losses, so micro-batches of equal size accumulate
exactly; `sft_loss` takes ``total_tokens`` for the same reason (it is a per-token mean).
Rewards are detached and follow TRL's definitions so the loop can report rewards/chosen,
rewards/rejected, rewards/accuracies and rewards/margins (`reward_metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vlalign import catalog
from vlalign.catalog import LossKind
from vlalign.losses.base import LossOutput, UnknownLossError
from vlalign.losses.cost import cost_loss
from vlalign.losses.policy import dapo_loss, dr_grpo_loss, grpo_loss, gspo_loss, rloo_loss
from vlalign.losses.unpaired import kto_loss

# --------------------------------------------------------------------------------------------
# SFT


def mean_token_nll(
    logps_sum: Tensor, n_tokens: Tensor, total_tokens: Tensor | int | None = None
) -> Tensor:
    """Mean negative log-prob per response token. logps_sum, n_tokens: [B] -> [] scalar.

    ``-sum(logps_sum) / total_tokens`` with ``total_tokens = sum(n_tokens)`` by default. Pass the
    token count of the whole optimizer step (all micro-batches, all ranks) as ``total_tokens`` to
    make gradient accumulation equal one large batch. Also the NLL term of RPO and ORPO.
    """
    total = n_tokens.sum() if total_tokens is None else total_tokens
    if isinstance(total, Tensor):
        total = total.to(logps_sum.dtype).clamp(min=1)
    else:
        total = max(total, 1)
    return -logps_sum.sum() / total


def sft_loss(
    logps_sum: Tensor, n_tokens: Tensor, *, total_tokens: Tensor | int | None = None
) -> LossOutput:
    """Token-level cross-entropy over response tokens. logps_sum, n_tokens: [B] -> LossOutput.

    loss = sum of token NLL / number of response tokens in the batch (see `mean_token_nll`).
    """
    return LossOutput(loss=mean_token_nll(logps_sum, n_tokens, total_tokens))


# --------------------------------------------------------------------------------------------
# Preference (DPO family)


def _require(name: str, **tensors: Tensor | None) -> None:
    missing = [k for k, v in tensors.items() if v is None]
    if missing:
        raise ValueError(f"loss {name!r} needs {', '.join(missing)}")


def _no_label_smoothing(name: str, label_smoothing: float) -> None:
    if label_smoothing != 0.0:
        raise ValueError(
            f"loss {name!r} does not use method.label_smoothing (got {label_smoothing}); "
            "use 'sigmoid', 'robust' or 'simpo', or set it to 0"
        )


def _avg(logps: Tensor, lengths: Tensor) -> Tensor:
    """Summed log-probs [B] / token counts [B] (clamped to >= 1) -> [B] per-token average."""
    return logps / lengths.to(logps.dtype).clamp(min=1)


def _dpo_rewards(
    beta: float, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor
) -> tuple[Tensor, Tensor]:
    """Implicit DPO rewards beta * (policy - ref), [B] each, detached."""
    return (beta * (pc - rc)).detach(), (beta * (pr - rr)).detach()


def sigmoid_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    chosen_nll: Tensor | None = None,
) -> LossOutput:
    """DPO (Rafailov et al. 2023), conservative with label smoothing eps (Mitchell 2023, cDPO).

    h = (pi_c - pi_r) - (ref_c - ref_r)  [B];
    loss = mean(-(1 - eps) logsigmoid(beta h) - eps logsigmoid(-beta h)); eps = 0 is plain DPO.
    """
    _require("sigmoid", ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    h = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(
        -beta * h
    )
    c, r = _dpo_rewards(
        beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return LossOutput(losses.mean(), c, r)


def robust_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    chosen_nll: Tensor | None = None,
) -> LossOutput:
    """Robust DPO (Chowdhury et al. 2024, rDPO), unbiased under label-flip rate eps < 1/2.

    h as in `sigmoid_loss`;
    loss = mean(((1 - eps)(-logsigmoid(beta h)) + eps logsigmoid(-beta h)) / (1 - 2 eps)).
    """
    _require("robust", ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"loss 'robust' needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    h = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    losses = (
        -(1 - label_smoothing) * F.logsigmoid(beta * h) + label_smoothing * F.logsigmoid(-beta * h)
    ) / (1 - 2 * label_smoothing)
    c, r = _dpo_rewards(
        beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return LossOutput(losses.mean(), c, r)


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    chosen_nll: Tensor | None = None,
) -> LossOutput:
    """IPO (Azar et al. 2023, eq. 17), on per-token AVERAGED log-probs as in the paper and TRL.

    a_x = logps_x / length_x for policy and reference; h = (a_pc - a_pr) - (a_rc - a_rr);
    loss = mean((h - 1 / (2 beta))^2). Rewards are beta * (policy - ref) on SUMMED log-probs, as
    for every DPO variant (TRL >= 1.0 reports them so), so they compare across losses.
    """
    _require(
        "ipo",
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    _no_label_smoothing("ipo", label_smoothing)
    pc, rc = _avg(policy_chosen_logps, chosen_lengths), _avg(ref_chosen_logps, chosen_lengths)
    pr, rr = (
        _avg(policy_rejected_logps, rejected_lengths),
        _avg(ref_rejected_logps, rejected_lengths),
    )
    h = (pc - pr) - (rc - rr)
    losses = (h - 1 / (2 * beta)) ** 2
    c, r = _dpo_rewards(
        beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return LossOutput(losses.mean(), c, r)


def hinge_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    chosen_nll: Tensor | None = None,
) -> LossOutput:
    """Hinge (SLiC, Zhao et al. 2023) on the DPO log-ratio: loss = mean(relu(1 - beta h))."""
    _require("hinge", ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    _no_label_smoothing("hinge", label_smoothing)
    h = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    losses = torch.relu(1 - beta * h)
    c, r = _dpo_rewards(
        beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return LossOutput(losses.mean(), c, r)


def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    chosen_nll: Tensor | None = None,
) -> LossOutput:
    """SimPO (Meng et al. 2024): reference-free, length-normalized, target margin gamma.

    a_c = logps_c / len_c, a_r = logps_r / len_r; z = beta (a_c - a_r) - gamma;
    loss = mean(-(1 - eps) logsigmoid(z) - eps logsigmoid(-z)); rewards = beta * a (as TRL's CPO).
    ``gamma`` is the margin itself (TRL's ``simpo_gamma``); the SimPO repo's gamma_beta_ratio
    equals gamma / beta. References are ignored.
    """
    _require("simpo", chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    ac = _avg(policy_chosen_logps, chosen_lengths)
    ar = _avg(policy_rejected_logps, rejected_lengths)
    z = beta * (ac - ar) - gamma
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return LossOutput(losses.mean(), (beta * ac).detach(), (beta * ar).detach())


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, stable near 0 and for very negative x. [B] -> [B].

    Each branch sees a safe stand-in (-1) where it is not selected, so torch.where does not
    mix a NaN gradient from the unused branch into the result.
    """
    near_zero = x > -0.6931471805599453  # -ln 2
    safe = torch.full_like(x, -1.0)
    a = torch.log(-torch.expm1(torch.where(near_zero, x, safe)))
    b = torch.log1p(-torch.exp(torch.where(near_zero, safe, x)))
    return torch.where(near_zero, a, b)


def orpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    chosen_nll: Tensor | None = None,
) -> LossOutput:
    """ORPO (Hong et al. 2024): SFT NLL on chosen plus an odds-ratio term, reference-free.

    a = logps / length (per-token average, so p = exp(a) < 1); log odds(a) = a - log(1 - exp(a));
    l = log odds(a_c) - log odds(a_r)  [B];
    loss = chosen_nll - beta * mean(logsigmoid(l)); rewards = beta * a (as TRL's ORPOTrainer).
    ``chosen_nll`` ([] scalar) is the mean token NLL of the chosen answers (`mean_token_nll`).
    metrics: nll_loss, log_odds_ratio = mean(logsigmoid(l)), log_odds_chosen = mean(l).
    """
    _require(
        "orpo",
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
        chosen_nll=chosen_nll,
    )
    _no_label_smoothing("orpo", label_smoothing)
    ac = _avg(policy_chosen_logps, chosen_lengths)
    ar = _avg(policy_rejected_logps, rejected_lengths)
    log_odds = (ac - ar) - (_log1mexp(ac) - _log1mexp(ar))
    ratio = F.logsigmoid(log_odds)
    loss = chosen_nll - beta * ratio.mean()
    metrics = {
        "nll_loss": chosen_nll.detach(),
        "log_odds_ratio": ratio.mean().detach(),
        "log_odds_chosen": log_odds.mean().detach(),
    }
    return LossOutput(loss, (beta * ac).detach(), (beta * ar).detach(), metrics)


# --------------------------------------------------------------------------------------------
# Reward model


def bradley_terry_loss(
    chosen_rewards: Tensor, rejected_rewards: Tensor, *, margin: Tensor | float = 0.0
) -> LossOutput:
    """Pairwise reward-model loss (Bradley-Terry; margin as in Llama 2 / TRL's RewardTrainer).

    chosen_rewards, rejected_rewards: [B] scalar rewards; margin: float or [B].
    loss = mean(-logsigmoid(r_c - r_r - margin)).
    """
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - margin)
    return LossOutput(losses.mean(), chosen_rewards.detach(), rejected_rewards.detach())


# --------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its function and what it needs from the method (from the catalog)."""

    name: str
    fn: Callable[..., LossOutput]
    kind: LossKind
    summary: str
    reference_free: bool = False
    uses_label_smoothing: bool = False


def _functions() -> dict[str, Callable[..., LossOutput]]:
    return {
        "sft": sft_loss,
        "sigmoid": sigmoid_loss,
        "robust": robust_loss,
        "ipo": ipo_loss,
        "hinge": hinge_loss,
        "simpo": simpo_loss,
        "orpo": orpo_loss,
        "kto": kto_loss,
        "bradley_terry": bradley_terry_loss,
        "grpo": grpo_loss,
        "dr_grpo": dr_grpo_loss,
        "dapo": dapo_loss,
        "gspo": gspo_loss,
        "rloo": rloo_loss,
        "safe_rlhf_cost": cost_loss,
    }


FUNCTIONS: dict[str, Callable[..., LossOutput]] = _functions()
"""Every loss function by name; the catalog holds their properties (a test keeps them equal)."""

LOSSES: dict[str, LossSpec] = {
    name: LossSpec(
        name,
        FUNCTIONS[name],
        info.kind,
        info.summary,
        reference_free=info.reference_free,
        uses_label_smoothing=info.label_smoothing,
    )
    for name, info in catalog.LOSSES.items()
    if name in FUNCTIONS
}


def get_loss(name: str) -> LossSpec:
    """The registered loss ``name``; `UnknownLossError` listing the valid names otherwise."""
    try:
        return LOSSES[name]
    except KeyError:
        raise UnknownLossError(
            f"method.loss: unknown loss {name!r}; valid losses: {', '.join(LOSSES)}"
        ) from None


def resolve_loss(method: str, name: str | None = None) -> LossSpec:
    """The loss a method trains with: ``name``, or the method's default when None.

    Raises `UnknownLossError` for an unknown method, an unknown loss, or a loss of another kind
    (e.g. method dpo with loss bradley_terry), naming the losses that fit.
    """
    if method not in catalog.METHODS:
        raise UnknownLossError(
            f"method.name: unknown method {method!r}; valid methods: {', '.join(catalog.METHODS)}"
        )
    info = catalog.METHODS[method]
    spec = get_loss(info.default_loss if name is None else name)
    if spec.kind != info.loss_kind:
        raise UnknownLossError(
            f"method.loss: {spec.name!r} is a {spec.kind} loss and does not fit method "
            f"{method!r}; use one of: {', '.join(catalog.losses_for(method))}"
        )
    return spec


def reward_metrics(out: LossOutput) -> dict[str, float]:
    """TRL's reward metrics from a preference/reward LossOutput (batch means, as floats).

    rewards/chosen, rewards/rejected, rewards/accuracies (fraction with chosen > rejected),
    rewards/margins (chosen - rejected), plus the variant's own ``metrics``.
    """
    if out.chosen_rewards is None or out.rejected_rewards is None:
        return {}
    c, r = out.chosen_rewards.float(), out.rejected_rewards.float()
    result = {
        "rewards/chosen": c.mean().item(),
        "rewards/rejected": r.mean().item(),
        "rewards/accuracies": (c > r).float().mean().item(),
        "rewards/margins": (c - r).mean().item(),
    }
    result.update({k: float(v) for k, v in out.metrics.items()})
    return result
