"""Online-RL policy losses and advantages against values computed by hand (arithmetic in each
docstring), their gradients, and the properties the loop relies on: on-policy REINFORCE,
tied groups, exact masking, micro-batch sums."""

from __future__ import annotations

import math

import pytest
import torch

from vlalign.losses import UnknownLossError
from vlalign.losses.policy import (
    ADVANTAGES,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    centered_advantages,
    dapo_group_filter,
    dapo_loss,
    dr_grpo_loss,
    entropy_from_logits,
    get_policy_loss,
    group_normalized_advantages,
    grpo_loss,
    gspo_loss,
    k3_kl,
    kl_penalized_rewards,
    leave_one_out_advantages,
    means_from_sums,
    overlong_penalty,
    rloo_loss,
    sampled_token_entropy,
)

D = torch.float64

# The hand-computed batch: N = 2 sequences, T = 3, old log-probs all -1.
# row 0: 2 response tokens (third is padding), ratios r = [1.5, 1.0], A = +1
# row 1: 3 response tokens, ratios r = [0.5, 1.0, 1.1], A = -1
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
ADV = torch.tensor([1.0, -1.0], dtype=D)


def batch(pad_value: float = -1.0) -> tuple[torch.Tensor, torch.Tensor]:
    old = torch.full((2, 3), -1.0, dtype=D)
    logps = old + torch.log(torch.tensor([[1.5, 1.0, 1.0], [0.5, 1.0, 1.1]], dtype=D))
    logps[0, 2] = pad_value
    return logps.clone().requires_grad_(True), old


def grad_of(out_loss: torch.Tensor, logps: torch.Tensor) -> list[list[float]]:
    (g,) = torch.autograd.grad(out_loss, logps)
    return g.tolist()


def test_grpo_by_hand() -> None:
    """eps 0.2. row 0, A = 1: min(1.5, clip 1.2) = 1.2 (clipped), min(1, 1) = 1 -> l = [-1.2, -1],
    token mean -2.2 / 2 = -1.1. row 1, A = -1: min(-0.5, -0.8) = -0.8 (clipped) -> 0.8; 1; 1.1
    (1.1 < 1.2, not clipped) -> token mean 2.9 / 3 = 0.966667. loss sum = -0.133333, count 2.
    Gradients d l / d logp = -r A / L_i on unclipped tokens, 0 on clipped ones:
    row 0: [0, -1/2, 0]; row 1: [0, 1/3, 1.1/3 = 0.366667].
    Metrics: 2 clipped of 5 tokens -> 0.4; ratio sum 1.5+1+0.5+1+1.1 = 5.1 -> 1.02."""
    logps, old = batch()
    out = grpo_loss(logps, old, None, MASK, ADV, eps_low=0.2)
    assert out.loss.item() == pytest.approx(-1.1 + 2.9 / 3)
    assert out.count == 2 and out.unit == "sequences"
    g = grad_of(out.loss, logps)
    assert g[0] == pytest.approx([0.0, -0.5, 0.0])
    assert g[1] == pytest.approx([0.0, 1 / 3, 1.1 / 3])
    m = out.means()
    assert m["clip_frac"] == pytest.approx(0.4)
    assert m["ratio_mean"] == pytest.approx(1.02)
    assert m["kl"] == 0.0
    assert out.sums["n_tokens"] == 5 and out.sums["n_sequences"] == 2


def test_dr_grpo_by_hand() -> None:
    """Same per-token terms as GRPO; token SUM per sequence / max_length 4:
    (-2.2 + 2.9) / 4 = 0.175. Gradients -r A / 4: row 0 [0, -0.25, 0]; row 1 [0, 0.25, 0.275].
    Without max_length it refuses."""
    logps, old = batch()
    out = dr_grpo_loss(logps, old, None, MASK, ADV, eps_low=0.2, max_length=4)
    assert out.loss.item() == pytest.approx(0.175)
    assert out.count == 2
    g = grad_of(out.loss, logps)
    assert g[0] == pytest.approx([0.0, -0.25, 0.0])
    assert g[1] == pytest.approx([0.0, 0.25, 0.275])
    with pytest.raises(ValueError, match="max_length"):
        dr_grpo_loss(logps, old, None, MASK, ADV)


def test_dapo_by_hand() -> None:
    """Clip-higher eps_low 0.2, eps_high 0.28. row 0 (A = 1): min(1.5, 1.28) = 1.28 -> -1.28; -1.
    row 1 (A = -1): 0.8; 1; 1.1. Token-level sum = -2.28 + 2.9 = 0.62, count = 5 tokens.
    Gradients -r A on unclipped tokens: row 0 [0, -1, 0]; row 1 [0, 1, 1.1]."""
    logps, old = batch()
    out = dapo_loss(logps, old, None, MASK, ADV, eps_low=0.2, eps_high=0.28)
    assert out.loss.item() == pytest.approx(0.62)
    assert out.count == 5 and out.unit == "tokens"
    g = grad_of(out.loss, logps)
    assert g[0] == pytest.approx([0.0, -1.0, 0.0])
    assert g[1] == pytest.approx([0.0, 1.0, 1.1])


def test_clip_higher_changes_what_is_clipped() -> None:
    """r = 1.25 with A = 1: clipped at 1.2 with eps_high 0.2 (grad 0), not at 0.28
    (d(-r A)/dlogp = -r A = -1.25)."""
    old = torch.zeros(1, 1, dtype=D)
    logps = torch.full((1, 1), math.log(1.25), dtype=D, requires_grad=True)
    m, a = torch.ones(1, 1, dtype=torch.bool), torch.ones(1, dtype=D)
    sym = dapo_loss(logps, old, None, m, a, eps_low=0.2, eps_high=0.2)
    hi = dapo_loss(logps, old, None, m, a, eps_low=0.2, eps_high=0.28)
    assert sym.loss.item() == pytest.approx(-1.2) and hi.loss.item() == pytest.approx(-1.25)
    assert grad_of(sym.loss, logps) == [[0.0]]
    assert grad_of(hi.loss, logps)[0] == pytest.approx([-1.25])


def test_gspo_by_hand() -> None:
    """eps_low 0.2, eps_high 0.3. row 0: s = exp((ln 1.5 + 0) / 2) = sqrt(1.5) = 1.224745 < 1.3,
    A = 1 -> term -1.224745; d/dlogp_t = -s / 2 = -0.612372 on both tokens.
    row 1: s = exp((ln 0.5 + 0 + ln 1.1) / 3) = 0.55^(1/3) = 0.819321 > 0.8, A = -1 -> term
    +0.819321; d/dlogp_t = s / 3 = 0.273107. loss sum = -0.405424, count 2, nothing clipped.
    With eps_high 0.2, row 0 is clipped at 1.2 (term -1.2, zero gradient)."""
    logps, old = batch()
    out = gspo_loss(logps, old, None, MASK, ADV, eps_low=0.2, eps_high=0.3)
    s0, s1 = math.sqrt(1.5), 0.55 ** (1 / 3)
    assert out.loss.item() == pytest.approx(-s0 + s1)
    assert out.count == 2
    g = grad_of(out.loss, logps)
    assert g[0] == pytest.approx([-s0 / 2, -s0 / 2, 0.0])
    assert g[1] == pytest.approx([s1 / 3] * 3)
    assert out.means()["clip_frac"] == 0.0
    assert out.means()["ratio_mean"] == pytest.approx((2 * s0 + 3 * s1) / 5)
    clipped = gspo_loss(logps, old, None, MASK, ADV, eps_low=0.2, eps_high=0.2)
    assert clipped.loss.item() == pytest.approx(-1.2 + s1)
    assert grad_of(clipped.loss, logps)[0] == [0.0, 0.0, 0.0]
    assert clipped.means()["clip_frac"] == pytest.approx(2 / 5)  # row 0's two tokens


def test_rloo_by_hand() -> None:
    """Token SUM per sequence, summed: -2.2 + 2.9 = 0.7, count 2 sequences.
    Gradients -r A: row 0 [0, -1, 0]; row 1 [0, 1, 1.1]."""
    logps, old = batch()
    out = rloo_loss(logps, old, None, MASK, ADV, eps_low=0.2)
    assert out.loss.item() == pytest.approx(0.7)
    assert out.count == 2
    g = grad_of(out.loss, logps)
    assert g[0] == pytest.approx([0.0, -1.0, 0.0])
    assert g[1] == pytest.approx([0.0, 1.0, 1.1])


@pytest.mark.parametrize("name", list(POLICY_LOSSES))
def test_k3_kl_term_by_hand(name: str) -> None:
    """One token, on policy, A = 0: only the KL term. ref - logp = ln 2:
    k3 = e^(ln 2) - ln 2 - 1 = 1 - 0.693147 = 0.306853; coefficient 0.1 -> 0.0306853 (every
    variant: one token, one sequence). d k3 / d logp = 1 - e^(ref - logp) = -1 -> grad -0.1.
    The reported kl is the k3 token mean, 0.306853."""
    logps = torch.full((1, 1), -1.0, dtype=D, requires_grad=True)
    ref = torch.full((1, 1), -1.0 + math.log(2), dtype=D)
    m, a = torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, dtype=D)
    out = POLICY_LOSSES[name].fn(logps, logps.detach(), ref, m, a, kl_coef=0.1, max_length=1)
    k3 = 1 - math.log(2)
    assert out.loss.item() == pytest.approx(0.1 * k3)
    assert grad_of(out.loss, logps)[0] == pytest.approx([-0.1])
    assert out.means()["kl"] == pytest.approx(k3)


def test_kl_needs_a_reference_and_k3_ignores_padding() -> None:
    """kl_coef without ref_logps is an error. k3 at a padded position is 0 even when the padded
    values would overflow exp (ref - logp = 1000)."""
    logps, old = batch()
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(logps, old, None, MASK, ADV, kl_coef=0.1)
    ref = old.clone()
    ref[0, 2] = 1000.0
    kl = k3_kl(logps.detach(), ref, MASK)
    assert torch.isfinite(kl).all() and kl[0, 2] == 0.0
    assert set(KL_ESTIMATORS) == {"k1", "k3"}


def test_kl_folded_into_reward_by_hand() -> None:
    """k1: sum_t (logp - ref) = (-1 - -1.5) + (-2 - -2) = 0.5; r = 1 - 0.1 * 0.5 = 0.95.
    k3 on the same: d = [-0.5, 0]: e^-0.5 + 0.5 - 1 = 0.106531 -> 1 - 0.0106531 = 0.989347.
    The padded third position (mask 0) contributes nothing."""
    r = torch.tensor([1.0], dtype=D)
    lp = torch.tensor([[-1.0, -2.0, 5.0]], dtype=D)
    ref = torch.tensor([[-1.5, -2.0, -9.0]], dtype=D)
    m = torch.tensor([[1, 1, 0]])
    assert kl_penalized_rewards(r, lp, ref, m, kl_coef=0.1).item() == pytest.approx(0.95)
    k3 = math.exp(-0.5) + 0.5 - 1
    got = kl_penalized_rewards(r, lp, ref, m, kl_coef=0.1, estimator="k3")
    assert got.item() == pytest.approx(1 - 0.1 * k3)


def test_entropy_from_logits_and_sampled_estimate() -> None:
    """Logits [0, ln 3] -> p = [0.25, 0.75]: H = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335.
    Uniform over 7 -> ln 7 = 1.945910. Chunks of 1 row give the same. The sampled-token estimate
    is -logp on response tokens, 0 elsewhere."""
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0]]])
    h = entropy_from_logits(logits, chunk_size=1)
    assert h.shape == (1, 2)
    assert h[0, 0].item() == pytest.approx(0.562335, abs=1e-6)
    assert h[0, 1].item() == pytest.approx(math.log(2), abs=1e-6)
    assert entropy_from_logits(torch.zeros(3, 7)).tolist() == pytest.approx([math.log(7)] * 3)
    lp = torch.tensor([[-0.5, -2.0]])
    assert sampled_token_entropy(lp, torch.tensor([[1, 0]])).tolist() == [[0.5, 0.0]]


def test_reported_entropy_uses_given_entropy_else_sampled_tokens() -> None:
    """Given entropy 2 everywhere (padding 99, ignored): mean 2. Without: mean of -old_logps = 1."""
    logps, old = batch()
    ent = torch.full((2, 3), 2.0, dtype=D)
    ent[0, 2] = 99.0
    assert grpo_loss(logps, old, None, MASK, ADV, entropy=ent).means()["entropy"] == 2.0
    assert grpo_loss(logps, old, None, MASK, ADV).means()["entropy"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# Advantages


def test_group_advantages_by_hand() -> None:
    """Rewards [1, 0, 0, 1 | 2, 2, 2, 2], G = 4.
    Group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.577350; A = +-0.5 / (0.577350 + 1e-4)
    = +-0.865876. Group 2 ties: std 0 -> A = 0 / 1e-4 = 0 exactly.
    Dr. GRPO: r - mean = [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0].
    RLOO: r = 1 -> 1 - (1 + 0 + 0) / 3 = 2/3; r = 0 -> 0 - 2/3 = -2/3; tied group 0."""
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert group_normalized_advantages(r, 4).tolist() == pytest.approx(
        [a, -a, -a, a, 0, 0, 0, 0], abs=1e-6
    )
    assert centered_advantages(r, 4).tolist() == [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]
    assert leave_one_out_advantages(r, 4).tolist() == pytest.approx(
        [2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0]
    )
    assert set(ADVANTAGES) == {"group_normalized", "centered", "leave_one_out"}
    with pytest.raises(ValueError, match="group_size"):
        group_normalized_advantages(r, 3)
    with pytest.raises(ValueError, match="group_size"):
        leave_one_out_advantages(r, 1)


@pytest.mark.parametrize("adv_name", list(ADVANTAGES))
@pytest.mark.parametrize("name", list(POLICY_LOSSES))
def test_equal_rewards_give_zero_advantage_and_no_nan(name: str, adv_name: str) -> None:
    """All G = 4 rewards equal (also all zero): advantages exactly 0, loss 0, gradient 0, no NaN."""
    for value in (0.0, 0.7):
        r = torch.full((4,), value, dtype=D)
        adv = ADVANTAGES[adv_name](r, 4)
        assert adv.tolist() == [0.0] * 4
        logps = torch.randn(4, 5, dtype=D).requires_grad_(True)
        mask = torch.ones(4, 5, dtype=torch.bool)
        out = POLICY_LOSSES[name].fn(logps, logps.detach() + 0.1, None, mask, adv, max_length=5)
        (g,) = torch.autograd.grad(out.loss, logps)
        assert out.loss.item() == 0.0
        assert torch.isfinite(g).all() and (g == 0).all()


def test_dapo_group_filter_counts_tied_groups() -> None:
    """[1, 0 | 1, 1 | 0, 0 | 0.5, 0.25], G = 2: groups 2 and 3 tie -> kept 2, dropped 2."""
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5, 0.25])
    f = dapo_group_filter(r, 2)
    assert f.keep.tolist() == [True, True, False, False, False, False, True, True]
    assert (f.kept_groups, f.dropped_groups) == (2, 2)
    assert dapo_group_filter(r, 2, atol=0.3).kept_groups == 1  # 0.25 spread counts as a tie


def test_overlong_penalty_by_hand() -> None:
    """L_max 10, L_cache 4 -> soft zone from 6: |y| 5 -> 0, 6 -> 0, 8 -> (6 - 8) / 4 = -0.5,
    10 -> (6 - 10) / 4 = -1, 11 -> -1 (over the limit)."""
    got = overlong_penalty(torch.tensor([5, 6, 8, 10, 11]), max_length=10, cache_length=4)
    assert got.tolist() == [0.0, 0.0, -0.5, -1.0, -1.0]
    with pytest.raises(ValueError):
        overlong_penalty(torch.tensor([1]), max_length=4, cache_length=5)


# ---------------------------------------------------------------------------------------------
# Properties


def _toy_policy(seed: int = 0):
    """A linear softmax policy over V = 6 tokens: logits = h @ W.T; sampled tokens y [N, T]."""
    g = torch.Generator().manual_seed(seed)
    N, T, H, V = 8, 5, 4, 6
    h = torch.randn(N, T, H, generator=g, dtype=D)
    W = torch.randn(V, H, generator=g, dtype=D).requires_grad_(True)
    y = torch.randint(0, V, (N, T), generator=g)
    mask = torch.ones(N, T, dtype=torch.bool)
    mask[0, 3:] = False  # variable lengths
    mask[5, 1:] = False
    mask[6, 4:] = False

    def logps_fn() -> torch.Tensor:
        return torch.log_softmax(h @ W.T, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)

    rewards = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 0.0, 1.0, 0.25], dtype=D)
    return W, logps_fn, mask, rewards


# (loss, advantage, REINFORCE objective whose gradient the on-policy step must equal).
# lp: [N, T] log-probs, m: [N, T] mask, A: [N]. Each returns the mean-over-the-unit objective.
REINFORCE = {
    "grpo": lambda lp, m, A: -(A * (lp * m).sum(1) / m.sum(1)).mean(),
    "gspo": lambda lp, m, A: -(A * (lp * m).sum(1) / m.sum(1)).mean(),
    "dr_grpo": lambda lp, m, A: -(A * (lp * m).sum(1) / 5).mean(),
    "dapo": lambda lp, m, A: -(A * (lp * m).sum(1)).sum() / m.sum(),
    "rloo": lambda lp, m, A: -(A * (lp * m).sum(1)).mean(),
}


@pytest.mark.parametrize("name", list(POLICY_LOSSES))
def test_on_policy_first_step_is_reinforce_with_group_baseline(name: str) -> None:
    """old = current (ratio 1, nothing clipped): grad of loss / count w.r.t. the policy's weights
    equals grad of the REINFORCE objective -A_i * log pi (with the variant's aggregation) and the
    variant's group baseline (advantages from 2 groups of G = 4)."""
    W, logps_fn, mask, rewards = _toy_policy()
    spec = POLICY_LOSSES[name]
    adv = ADVANTAGES[spec.advantage](rewards, 4)
    lp = logps_fn()
    out = spec.fn(lp, lp.detach(), None, mask, adv, max_length=5)
    (g_loss,) = torch.autograd.grad(out.loss / out.count, W)
    (g_ref,) = torch.autograd.grad(REINFORCE[name](logps_fn(), mask.to(D), adv), W)
    assert g_loss.abs().max() > 1e-3  # not trivially zero
    torch.testing.assert_close(g_loss, g_ref, rtol=1e-10, atol=1e-12)
    assert out.means()["ratio_mean"] == pytest.approx(1.0)
    assert out.means()["clip_frac"] == 0.0


@pytest.mark.parametrize("name", list(POLICY_LOSSES))
def test_padding_changes_nothing(name: str) -> None:
    """Garbage in padded positions (large finite values) and extra padded columns leave the
    loss, the count, the metrics and the gradient on real tokens unchanged."""
    W, logps_fn, mask, rewards = _toy_policy(1)
    adv = group_normalized_advantages(rewards, 4)
    ref = (logps_fn().detach() - 0.3).clone()
    old = logps_fn().detach() + 0.05
    kw = dict(eps_low=0.2, eps_high=0.28, kl_coef=0.05, max_length=8)
    base = POLICY_LOSSES[name].fn(logps_fn(), old, ref, mask, adv, **kw)
    (g_base,) = torch.autograd.grad(base.loss, W)

    pad = ~mask
    lp_dirty = torch.where(pad, torch.full_like(old, 50.0), logps_fn())
    old_dirty = torch.where(pad, torch.full_like(old, -80.0), old)
    ref_dirty = torch.where(pad, torch.full_like(old, 300.0), ref)
    extra = 3  # wider padded tensors
    widen = lambda x, v: torch.cat([x, torch.full((x.shape[0], extra), v, dtype=x.dtype)], 1)  # noqa: E731
    dirty = POLICY_LOSSES[name].fn(
        widen(lp_dirty, 7.0),
        widen(old_dirty, -7.0),
        widen(ref_dirty, 70.0),
        widen(mask, False),
        adv,
        **kw,
    )
    (g_dirty,) = torch.autograd.grad(dirty.loss, W)
    assert dirty.loss.item() == pytest.approx(base.loss.item(), rel=1e-12)
    assert dirty.count == base.count
    assert dirty.means() == pytest.approx(base.means())
    torch.testing.assert_close(g_dirty, g_base, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(POLICY_LOSSES))
def test_micro_batch_sums_equal_the_whole_batch(name: str) -> None:
    """Rows split 3 + 5: (loss_a + loss_b) / (count_a + count_b) and its gradient equal the whole
    batch's loss / count; metric sums add up to the whole batch's."""
    W, logps_fn, mask, rewards = _toy_policy(2)
    adv = group_normalized_advantages(rewards, 4)
    old = logps_fn().detach() + 0.1 * torch.randn(8, 5, dtype=D, generator=torch.Generator())
    ref = logps_fn().detach() - 0.2
    kw = dict(eps_low=0.2, eps_high=0.28, kl_coef=0.05, max_length=8)
    fn = POLICY_LOSSES[name].fn
    whole = fn(logps_fn(), old, ref, mask, adv, **kw)
    (g_whole,) = torch.autograd.grad(whole.loss / whole.count, W)
    lp = logps_fn()
    parts = [fn(lp[s], old[s], ref[s], mask[s], adv[s], **kw) for s in (slice(0, 3), slice(3, 8))]
    total = sum(p.count for p in parts)
    (g_parts,) = torch.autograd.grad(sum(p.loss for p in parts) / total, W)
    assert total == whole.count
    torch.testing.assert_close(g_parts, g_whole, rtol=1e-10, atol=1e-12)
    assert (parts[0].loss + parts[1].loss).item() == pytest.approx(whole.loss.item(), rel=1e-12)
    summed = {k: parts[0].sums[k] + parts[1].sums[k] for k in whole.sums}
    assert summed == pytest.approx(whole.sums)
    assert means_from_sums(summed) == pytest.approx(whole.means())


def test_registry_lookup() -> None:
    assert set(POLICY_LOSSES) == {"grpo", "dr_grpo", "dapo", "gspo", "rloo"}
    assert get_policy_loss("gspo").fn is gspo_loss
    assert get_policy_loss("dr_grpo").needs_max_length
    with pytest.raises(UnknownLossError, match="valid: grpo"):
        get_policy_loss("ppo")
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), None, MASK, torch.zeros(3))
