"""Online-RL policy losses (GRPO family, RLOO) and the advantage / reward-side functions.

Pure tensor math, one function per variant, looked up by name in `POLICY_LOSSES` and
`ADVANTAGES`; nothing here knows about models, rollouts or the loop.

Conventions
-----------
- A batch holds N = P * G responses: G samples for each of P prompts, the G samples of one prompt
  in CONSECUTIVE rows (prompt p owns rows p*G .. p*G+G-1, as `repeat_interleave` lays them out).
- Per-token tensors are [N, T] and aligned with each other: ``logps`` (current policy, with grad),
  ``old_logps`` (the policy that sampled, detached), ``ref_logps`` (the reference, detached, or
  None), ``mask`` ([N, T] bool/0-1: 1 on response tokens, 0 on padding). ``advantages`` is [N].
  Values at masked positions are ignored exactly (multiplied by 0, never read through exp without
  masking first, so padding filled with any finite value changes nothing).
- Every loss returns `PolicyLossOutput`: ``loss`` is the SUM over the variant's averaging unit
  (sequences for grpo, dr_grpo, gspo, rloo; tokens for dapo) and ``count`` the number of those
  units in the micro-batch. The loop divides the summed loss by the count of the whole optimizer
  step (all micro-batches, all ranks), so micro-batching equals one large batch exactly: the same
  convention as `vlalign.methods.base.StepOutput`.
- Metrics come back as detached SUMS over response tokens (``sums``) with ``n_tokens``, so they
  add across micro-batches too; `PolicyLossOutput.means` divides.

Per-token surrogate (PPO clip, Schulman et al. 2017) used by every variant but gspo::

    r_t = exp(logp_t - old_t)
    l_t = -min(r_t A, clip(r_t, 1 - eps_low, 1 + eps_high) A) + kl_coef * k3_t
    k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1        (Schulman's k3; >= 0, unbiased)

Aggregation per variant (S_i = sum_t mask_it l_it, L_i = sum_t mask_it):

- ``grpo``    (Shao et al. 2024, DeepSeekMath eq. 3): sum_i S_i / L_i;           count = N
- ``dr_grpo`` (Liu et al. 2025, Dr. GRPO): sum_i S_i / max_length (a constant);   count = N
- ``dapo``    (Yu et al. 2025, DAPO eq. 8): sum_i S_i (token level);    count = sum_i L_i
  (clip-higher: pass eps_high > eps_low; DAPO used 0.2 / 0.28)
- ``gspo``    (Zheng et al. 2025, GSPO eq. 5-7): sequence ratio
  s_i = exp(sum_t mask (logp - old) / L_i); term_i = -min(s_i A_i, clip(s_i, 1-eps_low, 1+eps_high) A_i)
  + kl_coef * (sum_t mask k3 / L_i); loss = sum_i term_i;                         count = N
- ``rloo``    (Ahmadian et al. 2024): REINFORCE on the whole sequence log-prob, written in the
  same clipped surrogate form so that several epochs over one rollout stay safe:
  sum_i S_i (token SUM, no length normalization: on policy its gradient is exactly
  -A_i * grad log pi(y_i | x), the paper's REINFORCE estimator);              count = N.
  Pair it with `leave_one_out_advantages` (and KL folded into the reward, as the paper does).

Entropy is reported, never optimized: pass ``entropy`` [N, T] computed from the logits
(`entropy_from_logits`, exact) or leave it None to report the Monte-Carlo estimate from the
sampled tokens, mean of -old_logps (`sampled_token_entropy`: unbiased for the sampling
distribution only at temperature 1 and top_p 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from vlalign.losses.base import UnknownLossError

# --------------------------------------------------------------------------------------------
# Output


@dataclass
class PolicyLossOutput:
    """One micro-batch's policy loss.

    loss: [] with grad, the SUM over units (see ``unit``); count: number of units (float).
    sums: detached token sums of ``clipped`` (tokens whose clipped branch is active), ``ratio``,
    ``kl`` (k3; 0 without a reference) and ``entropy``, plus ``n_tokens`` (response tokens)
    and ``n_sequences``. Sum these across micro-batches / ranks, then call `means`.
    """

    loss: Tensor
    count: float
    unit: str
    sums: dict[str, float] = field(default_factory=dict)

    def means(self) -> dict[str, float]:
        """clip_frac, ratio_mean, kl, entropy: token means of the sums."""
        return means_from_sums(self.sums)


def means_from_sums(sums: dict[str, float]) -> dict[str, float]:
    """Token means of summed metrics: {clip_frac, ratio_mean, kl, entropy} (0 with no tokens)."""
    n = max(sums.get("n_tokens", 0.0), 1.0)
    return {
        "clip_frac": sums.get("clipped", 0.0) / n,
        "ratio_mean": sums.get("ratio", 0.0) / n,
        "kl": sums.get("kl", 0.0) / n,
        "entropy": sums.get("entropy", 0.0) / n,
    }


# --------------------------------------------------------------------------------------------
# Pieces


def _mask(mask: Tensor, like: Tensor) -> Tensor:
    """[N, T] 0/1 mask in the dtype of ``like``."""
    return mask.to(like.dtype)


def k3_kl(logps: Tensor, ref_logps: Tensor, mask: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1. -> [N, T].

    logps, ref_logps, mask: [N, T]; 0 on masked positions (the difference is masked before exp,
    so padding values cannot overflow). Gradient w.r.t. logps: 1 - exp(ref - logp).
    """
    m = _mask(mask, logps)
    d = (ref_logps - logps) * m
    return (torch.exp(d) - d - 1.0) * m


def k1_kl(logps: Tensor, ref_logps: Tensor, mask: Tensor) -> Tensor:
    """Per-token k1 estimate of KL(pi || ref): logp - ref. -> [N, T], 0 on masked positions."""
    return (logps - ref_logps) * _mask(mask, logps)


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {"k1": k1_kl, "k3": k3_kl}


def kl_penalized_rewards(
    rewards: Tensor,
    logps: Tensor,
    ref_logps: Tensor,
    mask: Tensor,
    *,
    kl_coef: float,
    estimator: str = "k1",
) -> Tensor:
    """KL folded into the reward (RLOO / PPO-RLHF style): r_i - kl_coef * sum_t kl_it. -> [N].

    rewards: [N]; logps (the sampling policy's, detached), ref_logps, mask: [N, T]. ``estimator``
    names a `KL_ESTIMATORS` entry: k1 (logp - ref, as Ahmadian et al. 2024 and TRL's RLOO) or k3.
    The result is detached (a reward, not a loss term).
    """
    kl = KL_ESTIMATORS[estimator](logps.detach(), ref_logps.detach(), mask).sum(dim=1)
    return (rewards - kl_coef * kl.to(rewards.dtype)).detach()


def entropy_from_logits(logits: Tensor, chunk_size: int = 1024) -> Tensor:
    """Exact entropy of softmax(logits) per position, in chunks of rows. [..., V] -> [...] f32.

    H = logsumexp(x) - sum softmax(x) x. Detached (for reporting); at most ``chunk_size`` rows
    are upcast to float32 at a time.
    """
    flat = logits.detach().reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    for s in range(0, flat.shape[0], chunk_size):
        x = flat[s : s + chunk_size].float()
        lse = torch.logsumexp(x, dim=-1)
        out[s : s + chunk_size] = lse - (torch.softmax(x, dim=-1) * x).sum(-1)
    return out.view(logits.shape[:-1])


def sampled_token_entropy(logps: Tensor, mask: Tensor) -> Tensor:
    """Monte-Carlo entropy per token: -logp of the sampled token. [N, T] -> [N, T], detached.

    Its mean estimates the entropy of the distribution the tokens were drawn from, so it is
    unbiased for the policy only when sampling used temperature 1 and top_p 1.
    """
    return (-logps.detach()) * _mask(mask, logps)


def _clipped_surrogate(
    logps: Tensor, old_logps: Tensor, mask: Tensor, adv: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token -min(r A, clip(r) A), ratio r and the clipped-branch flags. All [N, T].

    adv: [N, 1] or [N, T]. log-ratios are masked before exp (padding cannot overflow).
    """
    m = _mask(mask, logps)
    ratio = torch.exp((logps - old_logps) * m)
    clipped_ratio = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    per_token = -torch.min(ratio * adv, clipped_ratio * adv) * m
    clipped = (((ratio < 1.0 - eps_low) & (adv < 0)) | ((ratio > 1.0 + eps_high) & (adv > 0))) & (
        m > 0
    )
    return per_token, ratio, clipped


def _kl_term(logps: Tensor, ref_logps: Tensor | None, mask: Tensor, kl_coef: float) -> Tensor:
    """kl_coef * k3 per token [N, T], or zeros without a reference / with kl_coef 0."""
    if ref_logps is None:
        if kl_coef != 0.0:
            raise ValueError("kl_coef != 0 needs ref_logps (the reference's token log-probs)")
        return torch.zeros_like(logps)
    return kl_coef * k3_kl(logps, ref_logps, mask)


def _metric_sums(
    logps: Tensor,
    old_logps: Tensor,
    ref_logps: Tensor | None,
    mask: Tensor,
    ratio: Tensor,
    clipped: Tensor,
    entropy: Tensor | None,
) -> dict[str, float]:
    m = _mask(mask, logps).detach()
    ent = entropy * m if entropy is not None else sampled_token_entropy(old_logps, mask)
    kl = k3_kl(logps.detach(), ref_logps, mask) if ref_logps is not None else torch.zeros_like(m)
    return {
        "clipped": float(clipped.sum()),
        "ratio": float((ratio.detach() * m).sum()),
        "kl": float(kl.sum()),
        "entropy": float(ent.sum()),
        "n_tokens": float(m.sum()),
        "n_sequences": float(m.shape[0]),
    }


def _check(logps: Tensor, old_logps: Tensor, mask: Tensor, advantages: Tensor) -> None:
    if logps.dim() != 2 or old_logps.shape != logps.shape or mask.shape != logps.shape:
        raise ValueError(
            f"logps, old_logps and mask must all be [N, T]; got {tuple(logps.shape)}, "
            f"{tuple(old_logps.shape)}, {tuple(mask.shape)}"
        )
    if advantages.shape != (logps.shape[0],):
        raise ValueError(f"advantages must be [N={logps.shape[0]}], got {tuple(advantages.shape)}")


# --------------------------------------------------------------------------------------------
# Variants. Shared signature:
#   fn(logps [N,T], old_logps [N,T], ref_logps [N,T] | None, mask [N,T], advantages [N], *,
#      eps_low, eps_high, kl_coef, max_length, entropy [N,T] | None) -> PolicyLossOutput


def _token_level_parts(
    logps, old_logps, ref_logps, mask, advantages, eps_low, eps_high, kl_coef, entropy
) -> tuple[Tensor, dict[str, float]]:
    _check(logps, old_logps, mask, advantages)
    eps_high = eps_low if eps_high is None else eps_high
    adv = advantages.to(logps.dtype).unsqueeze(1)
    per_token, ratio, clipped = _clipped_surrogate(
        logps, old_logps.detach(), mask, adv, eps_low, eps_high
    )
    per_token = per_token + _kl_term(logps, ref_logps, mask, kl_coef)
    sums = _metric_sums(logps, old_logps, ref_logps, mask, ratio, clipped, entropy)
    return per_token, sums


def grpo_loss(
    logps: Tensor,
    old_logps: Tensor,
    ref_logps: Tensor | None,
    mask: Tensor,
    advantages: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    kl_coef: float = 0.0,
    max_length: int | None = None,
    entropy: Tensor | None = None,
) -> PolicyLossOutput:
    """GRPO (Shao et al. 2024): per-sequence token mean of l_t, summed over sequences.

    loss = sum_i (sum_t mask_it l_it) / max(L_i, 1); count = N (the loop divides by the global N,
    giving the batch mean). eps_high defaults to eps_low (symmetric clip). ``max_length`` unused.
    """
    per_token, sums = _token_level_parts(
        logps, old_logps, ref_logps, mask, advantages, eps_low, eps_high, kl_coef, entropy
    )
    lengths = _mask(mask, logps).sum(dim=1).clamp(min=1.0)
    loss = (per_token.sum(dim=1) / lengths).sum()
    return PolicyLossOutput(loss, float(logps.shape[0]), "sequences", sums)


def dr_grpo_loss(
    logps: Tensor,
    old_logps: Tensor,
    ref_logps: Tensor | None,
    mask: Tensor,
    advantages: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    kl_coef: float = 0.0,
    max_length: int | None = None,
    entropy: Tensor | None = None,
) -> PolicyLossOutput:
    """Dr. GRPO (Liu et al. 2025): no length normalization. loss = sum_i sum_t mask l / max_length.

    ``max_length`` is a constant (the generation budget, max_new_tokens), the same for every
    micro-batch, so the loss does not depend on how long responses are; count = N. Pair with
    `centered_advantages` (no std normalization).
    """
    if max_length is None or max_length < 1:
        raise ValueError("loss 'dr_grpo' needs max_length >= 1 (the generation's max_new_tokens)")
    per_token, sums = _token_level_parts(
        logps, old_logps, ref_logps, mask, advantages, eps_low, eps_high, kl_coef, entropy
    )
    return PolicyLossOutput(per_token.sum() / max_length, float(logps.shape[0]), "sequences", sums)


def dapo_loss(
    logps: Tensor,
    old_logps: Tensor,
    ref_logps: Tensor | None,
    mask: Tensor,
    advantages: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float | None = 0.28,
    kl_coef: float = 0.0,
    max_length: int | None = None,
    entropy: Tensor | None = None,
) -> PolicyLossOutput:
    """DAPO (Yu et al. 2025): token-level loss. loss = sum_i sum_t mask l; count = sum mask.

    Every token of the step weighs the same (long responses are not down-weighted). Clip-higher:
    eps_high (default 0.28) > eps_low (0.2). DAPO drops the KL term (kl_coef 0 by default) and
    filters tied groups (`dapo_group_filter`) and shapes over-long rewards (`overlong_penalty`).
    """
    per_token, sums = _token_level_parts(
        logps, old_logps, ref_logps, mask, advantages, eps_low, eps_high, kl_coef, entropy
    )
    return PolicyLossOutput(per_token.sum(), sums["n_tokens"], "tokens", sums)


def gspo_loss(
    logps: Tensor,
    old_logps: Tensor,
    ref_logps: Tensor | None,
    mask: Tensor,
    advantages: Tensor,
    *,
    eps_low: float = 3e-4,
    eps_high: float | None = 4e-4,
    kl_coef: float = 0.0,
    max_length: int | None = None,
    entropy: Tensor | None = None,
) -> PolicyLossOutput:
    """GSPO (Zheng et al. 2025): sequence-level importance ratio, clipped per sequence.

    s_i = exp(sum_t mask (logp - old) / L_i)  [N];
    term_i = -min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i) + kl_coef * mean_t k3_it;
    loss = sum_i term_i; count = N. Defaults are the paper's eps (3e-4 / 4e-4). Metrics: a
    sequence's ratio and clipped flag count once for each of its tokens.
    """
    _check(logps, old_logps, mask, advantages)
    eps_high = eps_low if eps_high is None else eps_high
    m = _mask(mask, logps)
    lengths = m.sum(dim=1).clamp(min=1.0)
    log_s = ((logps - old_logps.detach()) * m).sum(dim=1) / lengths  # [N]
    s = torch.exp(log_s)
    adv = advantages.to(logps.dtype)
    term = -torch.min(s * adv, s.clamp(1.0 - eps_low, 1.0 + eps_high) * adv)
    term = term + _kl_term(logps, ref_logps, mask, kl_coef).sum(dim=1) / lengths
    clipped_seq = ((s < 1.0 - eps_low) & (adv < 0)) | ((s > 1.0 + eps_high) & (adv > 0))
    ratio_tok = s.detach().unsqueeze(1).expand_as(m)
    clipped_tok = clipped_seq.unsqueeze(1).expand_as(m) & (m > 0)
    sums = _metric_sums(logps, old_logps, ref_logps, mask, ratio_tok, clipped_tok, entropy)
    return PolicyLossOutput(term.sum(), float(logps.shape[0]), "sequences", sums)


def rloo_loss(
    logps: Tensor,
    old_logps: Tensor,
    ref_logps: Tensor | None,
    mask: Tensor,
    advantages: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    kl_coef: float = 0.0,
    max_length: int | None = None,
    entropy: Tensor | None = None,
) -> PolicyLossOutput:
    """RLOO (Ahmadian et al. 2024): REINFORCE on the sequence log-prob, clipped-surrogate form.

    loss = sum_i sum_t mask_it l_it (token SUM per sequence, no length normalization); count = N.
    On policy (ratio 1) the gradient is -(1/N) sum_i A_i grad log pi(y_i | x_i): the paper's
    estimator. With several epochs per rollout the per-token clip bounds the step. Use
    `leave_one_out_advantages`; the paper folds KL into the reward (`kl_penalized_rewards`), so
    kl_coef defaults to 0 here.
    """
    per_token, sums = _token_level_parts(
        logps, old_logps, ref_logps, mask, advantages, eps_low, eps_high, kl_coef, entropy
    )
    return PolicyLossOutput(per_token.sum(), float(logps.shape[0]), "sequences", sums)


# --------------------------------------------------------------------------------------------
# Advantages. Shared signature: fn(rewards [N], group_size G, *, eps) -> advantages [N]
# (rows of one prompt consecutive; N divisible by G; detached).


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1 or group_size < 2 or rewards.shape[0] % group_size:
        raise ValueError(
            f"rewards must be [N] with N a multiple of group_size >= 2; got "
            f"{tuple(rewards.shape)} and group_size {group_size}"
        )
    return rewards.detach().view(-1, group_size)


def _zero_tied(g: Tensor, adv: Tensor) -> Tensor:
    """adv [P, G] with the rows of tied groups (all rewards equal) set to exactly 0, flattened.

    (r - mean) is not always exactly 0 in floating point when rewards tie (0.7 * 3 / 3 != 0.7).
    """
    tied = (g == g[:, :1]).all(dim=1, keepdim=True)
    return torch.where(tied, torch.zeros_like(adv), adv).reshape(-1)


def group_normalized_advantages(rewards: Tensor, group_size: int, *, eps: float = 1e-4) -> Tensor:
    """GRPO: A_i = (r_i - mean_g) / (std_g + eps), per group of G. [N] -> [N].

    std is the unbiased (Bessel-corrected) sample std, as TRL's GRPOTrainer; a group whose
    rewards all tie gets exactly 0 (0 / eps), never NaN.
    """
    g = _groups(rewards, group_size)
    mean, std = g.mean(dim=1, keepdim=True), g.std(dim=1, keepdim=True)
    return _zero_tied(g, (g - mean) / (std + eps))


def centered_advantages(rewards: Tensor, group_size: int, *, eps: float = 1e-4) -> Tensor:
    """Dr. GRPO: A_i = r_i - mean_g (no std normalization; eps unused). [N] -> [N]."""
    g = _groups(rewards, group_size)
    return _zero_tied(g, g - g.mean(dim=1, keepdim=True))


def leave_one_out_advantages(rewards: Tensor, group_size: int, *, eps: float = 1e-4) -> Tensor:
    """RLOO: A_i = r_i - (sum_g - r_i) / (G - 1) = G / (G - 1) (r_i - mean_g). [N] -> [N]."""
    g = _groups(rewards, group_size)
    baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return _zero_tied(g, g - baseline)


ADVANTAGES: dict[str, Callable[..., Tensor]] = {
    "group_normalized": group_normalized_advantages,
    "centered": centered_advantages,
    "leave_one_out": leave_one_out_advantages,
}


@dataclass(frozen=True)
class GroupFilter:
    """DAPO's dynamic-sampling filter. keep: [N] bool (rows of kept groups); kept/dropped: groups."""

    keep: Tensor
    kept_groups: int
    dropped_groups: int


def dapo_group_filter(rewards: Tensor, group_size: int, *, atol: float = 0.0) -> GroupFilter:
    """Drop groups whose rewards all tie (max - min <= atol): they carry no gradient. [N] -> mask.

    DAPO (Yu et al. 2025, eq. 11) keeps sampling until the batch has only groups with
    0 < #correct < G; this returns which rows survive and how many groups were dropped, and the
    loop decides whether to resample or train on the rest.
    """
    g = _groups(rewards, group_size)
    spread = g.max(dim=1).values - g.min(dim=1).values
    keep_group = spread > atol
    kept = int(keep_group.sum())
    return GroupFilter(keep_group.repeat_interleave(group_size), kept, g.shape[0] - kept)


def overlong_penalty(lengths: Tensor, max_length: int, cache_length: int) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to the reward. [N] -> [N].

    L_max = max_length, L_cache = cache_length, |y| = lengths:
    0 if |y| <= L_max - L_cache; (L_max - L_cache - |y|) / L_cache if L_max - L_cache < |y| <= L_max;
    -1 if |y| > L_max.
    """
    if not 0 < cache_length <= max_length:
        raise ValueError(f"need 0 < cache_length <= max_length, got {cache_length}, {max_length}")
    lengths = lengths.to(torch.float32)
    start = float(max_length - cache_length)
    soft = (start - lengths) / cache_length
    out = torch.where(lengths <= start, torch.zeros_like(lengths), soft)
    return torch.where(lengths > max_length, torch.full_like(lengths, -1.0), out)


# --------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class PolicyLossSpec:
    """A registered policy loss: function, unit it averages over, the advantage it pairs with."""

    name: str
    fn: Callable[..., PolicyLossOutput]
    unit: str
    advantage: str
    summary: str
    needs_max_length: bool = False


POLICY_LOSSES: dict[str, PolicyLossSpec] = {
    s.name: s
    for s in (
        PolicyLossSpec(
            "grpo", grpo_loss, "sequences", "group_normalized", "GRPO, per-sequence token mean"
        ),
        PolicyLossSpec(
            "dr_grpo",
            dr_grpo_loss,
            "sequences",
            "centered",
            "Dr. GRPO, token sum / constant max length",
            needs_max_length=True,
        ),
        PolicyLossSpec(
            "dapo", dapo_loss, "tokens", "group_normalized", "DAPO, token mean, clip-higher"
        ),
        PolicyLossSpec(
            "gspo", gspo_loss, "sequences", "group_normalized", "GSPO, sequence-level ratio"
        ),
        PolicyLossSpec(
            "rloo", rloo_loss, "sequences", "leave_one_out", "RLOO, REINFORCE (clipped form)"
        ),
    )
}


def get_policy_loss(name: str) -> PolicyLossSpec:
    """The registered policy loss ``name``; `UnknownLossError` listing the valid names otherwise."""
    try:
        return POLICY_LOSSES[name]
    except KeyError:
        raise UnknownLossError(
            f"method.loss: unknown policy loss {name!r}; valid: {', '.join(POLICY_LOSSES)}"
        ) from None
