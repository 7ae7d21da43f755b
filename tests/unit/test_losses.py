"""Every loss against values computed by hand (the arithmetic is in each docstring)."""

from __future__ import annotations

import pytest
import torch

from vlalign import catalog
from vlalign.errors import VlalignError
from vlalign.losses import (
    LOSSES,
    LossOutput,
    UnknownLossError,
    bradley_terry_loss,
    get_loss,
    hinge_loss,
    ipo_loss,
    mean_token_nll,
    orpo_loss,
    resolve_loss,
    reward_metrics,
    robust_loss,
    sft_loss,
    sigmoid_loss,
    simpo_loss,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def leaf(*values: float) -> torch.Tensor:
    return t(*values).requires_grad_(True)


# Pair used by the DPO-family tests: h = (pc - pr) - (rc - rr) = (-1 - -2) - (-1.5 - -1.5) = 1.
PC, PR, RC, RR = -1.0, -2.0, -1.5, -1.5


def test_sft_is_mean_token_nll() -> None:
    """sum logps = -3 + -5 = -8 over 2 + 3 = 5 tokens -> 8 / 5 = 1.6.
    With the whole step's 10 tokens (gradient accumulation): 8 / 10 = 0.8."""
    logps, n = leaf(-3.0, -5.0), torch.tensor([2, 3])
    out = sft_loss(logps, n)
    assert out.loss.item() == pytest.approx(1.6)
    assert out.chosen_rewards is None
    assert sft_loss(logps, n, total_tokens=10).loss.item() == pytest.approx(0.8)
    assert mean_token_nll(logps, n, torch.tensor(10)).item() == pytest.approx(0.8)
    out.loss.backward()  # d/dlogps = -1/5 each
    assert logps.grad.tolist() == pytest.approx([-0.2, -0.2])


def test_sigmoid_dpo_by_hand() -> None:
    """h = 1; beta h = 0.1; -log(sigmoid(0.1)) = log(1 + e^-0.1) = 0.644397.
    rewards: 0.1 * (-1 - -1.5) = 0.05 and 0.1 * (-2 - -1.5) = -0.05.
    dL/dpc = -beta * sigmoid(-beta h) = -0.1 * 0.475021 = -0.0475021; dL/dpr = +0.0475021."""
    pc, pr = leaf(PC), leaf(PR)
    out = sigmoid_loss(pc, pr, t(RC), t(RR), beta=0.1)
    assert out.loss.item() == pytest.approx(0.644397, abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.05])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.05])
    assert not out.chosen_rewards.requires_grad
    out.loss.backward()
    assert pc.grad.item() == pytest.approx(-0.0475021, abs=1e-7)
    assert pr.grad.item() == pytest.approx(0.0475021, abs=1e-7)


def test_conservative_dpo_by_hand() -> None:
    """eps = 0.2, beta h = 0.1:
    -(0.8) log sigmoid(0.1) - 0.2 log sigmoid(-0.1) = 0.8 * 0.644397 + 0.2 * 0.744397
    = 0.515517 + 0.148879 = 0.664397."""
    out = sigmoid_loss(t(PC), t(PR), t(RC), t(RR), beta=0.1, label_smoothing=0.2)
    assert out.loss.item() == pytest.approx(0.664397, abs=1e-6)


def test_label_smoothing_zero_is_plain_dpo() -> None:
    """eps = 0 must equal -logsigmoid(beta h) written out directly, for several pairs."""
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g, dtype=torch.float64) * 5 for _ in range(4))
    plain = -torch.nn.functional.logsigmoid(0.3 * ((pc - pr) - (rc - rr))).mean()
    for fn in (sigmoid_loss, robust_loss):
        out = fn(pc, pr, rc, rr, beta=0.3, label_smoothing=0.0)
        torch.testing.assert_close(out.loss, plain)


def test_robust_dpo_by_hand() -> None:
    """eps = 0.2, beta h = 0.1:
    (0.8 * (-log sigmoid(0.1)) + 0.2 * log sigmoid(-0.1)) / (1 - 0.4)
    = (0.515517 - 0.148879) / 0.6 = 0.366638 / 0.6 = 0.611063."""
    out = robust_loss(t(PC), t(PR), t(RC), t(RR), beta=0.1, label_smoothing=0.2)
    assert out.loss.item() == pytest.approx(0.611063, abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.05])


def test_ipo_averages_over_tokens() -> None:
    """chosen length 2, rejected length 3:
    a_pc = -4/2 = -2, a_pr = -9/3 = -3, a_rc = -6/2 = -3, a_rr = -9/3 = -3;
    h = (-2 - -3) - (-3 - -3) = 1; beta = 0.25 -> 1/(2 beta) = 2; (1 - 2)^2 = 1.
    rewards (summed, as for all DPO variants): 0.25 * (-4 - -6) = 0.5 and 0.25 * (-9 - -9) = 0.
    (On summed log-probs h would be (-4 - -9) - (-6 - -9) = 2 and the loss 0: lengths matter.)"""
    lc, lr = torch.tensor([2]), torch.tensor([3])
    pc = leaf(-4.0)
    out = ipo_loss(pc, t(-9.0), t(-6.0), t(-9.0), beta=0.25, chosen_lengths=lc, rejected_lengths=lr)
    assert out.loss.item() == pytest.approx(1.0)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5])
    assert out.rejected_rewards.tolist() == pytest.approx([0.0])
    out.loss.backward()  # d/dpc = 2 (h - 2) * (1/2) = -1
    assert pc.grad.item() == pytest.approx(-1.0)


def test_hinge_by_hand_and_batch_mean() -> None:
    """beta = 0.5. Pair 1: h = 1 -> relu(1 - 0.5) = 0.5. Pair 2: pc = 2, so
    h = (2 - -2) - 0 = 4 -> relu(1 - 2) = 0. Mean over the batch: 0.25."""
    out = hinge_loss(t(PC, 2.0), t(PR, PR), t(RC, RC), t(RR, RR), beta=0.5)
    assert out.loss.item() == pytest.approx(0.25)
    assert out.chosen_rewards.tolist() == pytest.approx([0.25, 1.75])  # 0.5*(-1+1.5), 0.5*(2+1.5)


def test_simpo_by_hand() -> None:
    """lengths 4 and 4: a_c = -2/4 = -0.5, a_r = -6/4 = -1.5; beta = 2, gamma = 0.5:
    z = 2 * (-0.5 - -1.5) - 0.5 = 1.5; -log sigmoid(1.5) = log(1 + e^-1.5) = 0.201413.
    rewards: 2 * -0.5 = -1 and 2 * -1.5 = -3. References are not needed."""
    n = torch.tensor([4])
    out = simpo_loss(
        t(-2.0), t(-6.0), None, None, beta=2.0, gamma=0.5, chosen_lengths=n, rejected_lengths=n
    )
    assert out.loss.item() == pytest.approx(0.201413, abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([-1.0])
    assert out.rejected_rewards.tolist() == pytest.approx([-3.0])


def test_orpo_by_hand() -> None:
    """a_c = -2/2 = -1, a_r = -6/3 = -2.
    log odds(-1) = -1 - log(1 - e^-1) = -1 - log(0.632121) = -1 + 0.458675 = -0.541325;
    log odds(-2) = -2 - log(1 - e^-2) = -2 - log(0.864665) = -2 + 0.145413 = -1.854587;
    l = -0.541325 - -1.854587 = 1.313262; log sigmoid(l) = -log(1 + e^-1.313262) = -0.238183.
    chosen_nll = 2/2 = 1; beta = 0.1: loss = 1 - 0.1 * -0.238183 = 1.023818.
    rewards: 0.1 * -1 = -0.1 and 0.1 * -2 = -0.2."""
    pc = leaf(-2.0)
    nll = mean_token_nll(pc, torch.tensor([2]))
    out = orpo_loss(
        pc,
        t(-6.0),
        beta=0.1,
        chosen_lengths=torch.tensor([2]),
        rejected_lengths=torch.tensor([3]),
        chosen_nll=nll,
    )
    assert out.loss.item() == pytest.approx(1.023818, abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([-0.1])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.2])
    assert out.metrics["log_odds_chosen"].item() == pytest.approx(1.313262, abs=1e-6)
    assert out.metrics["log_odds_ratio"].item() == pytest.approx(-0.238183, abs=1e-6)
    assert out.metrics["nll_loss"].item() == pytest.approx(1.0)
    out.loss.backward()
    assert pc.grad.item() < 0  # raising the chosen log-prob lowers the loss


def test_orpo_is_finite_near_probability_one() -> None:
    """float32, a_c = -1e-9 (p ~ 1): exp(a_c) rounds to 1.0, so log1p(-exp(a_c)) would be -inf;
    log(-expm1(a_c)) = log(1e-9) = -20.723266 instead. log odds(-3) = -3 - log(1 - e^-3)
    = -3 + 0.051069 = -2.948931; l = (-1e-9 + 20.723266) - -2.948931 = 23.672197."""
    pc = torch.tensor([-1e-9], requires_grad=True)
    n = torch.tensor([1])
    nll = mean_token_nll(pc, n)
    out = orpo_loss(
        pc, torch.tensor([-3.0]), beta=0.1, chosen_lengths=n, rejected_lengths=n, chosen_nll=nll
    )
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(pc.grad).all()
    assert out.metrics["log_odds_chosen"].item() == pytest.approx(23.672197, abs=1e-4)


def test_bradley_terry_by_hand() -> None:
    """r_c = 2, r_r = 1, margin 0.5: -log sigmoid(2 - 1 - 0.5) = log(1 + e^-0.5) = 0.474077.
    Without margin: log(1 + e^-1) = 0.313262. Per-pair margins [0.5, 0] average the two."""
    rc, rr = leaf(2.0), t(1.0)
    assert bradley_terry_loss(rc, rr, margin=0.5).loss.item() == pytest.approx(0.474077, abs=1e-6)
    assert bradley_terry_loss(rc, rr).loss.item() == pytest.approx(0.313262, abs=1e-6)
    both = bradley_terry_loss(t(2.0, 2.0), t(1.0, 1.0), margin=t(0.5, 0.0)).loss.item()
    assert both == pytest.approx((0.474077 + 0.313262) / 2, abs=1e-6)
    out = bradley_terry_loss(rc, rr)
    out.loss.backward()  # d/dr_c = -sigmoid(-1) = -0.268941
    assert rc.grad.item() == pytest.approx(-0.268941, abs=1e-6)


def test_reward_metrics_follow_trl_names() -> None:
    """chosen [1, 0], rejected [0, 2] -> mean 0.5 and 1.0; accuracy 1/2; margins (1 + -2)/2 = -0.5."""
    m = reward_metrics(LossOutput(torch.tensor(0.0), t(1.0, 0.0), t(0.0, 2.0)))
    assert m == {
        "rewards/chosen": 0.5,
        "rewards/rejected": 1.0,
        "rewards/accuracies": 0.5,
        "rewards/margins": -0.5,
    }
    assert reward_metrics(LossOutput(torch.tensor(1.0))) == {}


@pytest.mark.parametrize("name", [n for n, s in LOSSES.items() if s.kind == "preference"])
def test_every_preference_loss_takes_the_common_signature_and_backprops(name: str) -> None:
    spec = get_loss(name)
    pc, pr = leaf(-3.0, -4.0), leaf(-5.0, -4.5)
    n = torch.tensor([3, 2])
    out = spec.fn(
        pc,
        pr,
        None if spec.reference_free else t(-4.0, -4.0),
        None if spec.reference_free else t(-4.0, -4.0),
        beta=0.1,
        label_smoothing=0.1 if spec.uses_label_smoothing else 0.0,
        gamma=0.5,
        chosen_lengths=n,
        rejected_lengths=n,
        chosen_nll=mean_token_nll(pc, n),
    )
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.chosen_rewards.shape == (2,) and out.rejected_rewards.shape == (2,)
    out.loss.backward()
    assert pc.grad is not None and torch.all(pc.grad < 0), "raising chosen must lower the loss"
    assert torch.all(pr.grad > 0), "raising rejected must raise the loss"


def test_registry_covers_recipe_names_and_rejects_unknown() -> None:
    for name in catalog.LOSSES:
        assert get_loss(name).name == name
    with pytest.raises(UnknownLossError) as err:
        get_loss("dpo_v2")
    msg = str(err.value)
    assert isinstance(err.value, VlalignError)
    assert "'dpo_v2'" in msg and all(name in msg for name in LOSSES)


def test_resolve_loss_defaults_and_kind_mismatch() -> None:
    defaults = {m.name: m.default_loss for m in catalog.METHODS.values()}
    assert {m: resolve_loss(m).name for m in defaults} == defaults
    assert resolve_loss("dpo", "ipo").fn is ipo_loss
    with pytest.raises(UnknownLossError, match="does not fit method 'dpo'.*sigmoid"):
        resolve_loss("dpo", "bradley_terry")
    with pytest.raises(UnknownLossError, match="unknown method 'ppo'"):
        resolve_loss("ppo")


def test_missing_inputs_and_unused_label_smoothing_raise() -> None:
    with pytest.raises(ValueError, match="'ipo' needs chosen_lengths, rejected_lengths"):
        ipo_loss(t(PC), t(PR), t(RC), t(RR), beta=0.1)
    with pytest.raises(ValueError, match="'sigmoid' needs ref_chosen_logps"):
        sigmoid_loss(t(PC), t(PR), None, None, beta=0.1)
    with pytest.raises(ValueError, match="'orpo' needs chosen_nll"):
        orpo_loss(t(PC), t(PR), beta=0.1, chosen_lengths=t(1.0), rejected_lengths=t(1.0))
    with pytest.raises(ValueError, match="'hinge' does not use method.label_smoothing"):
        hinge_loss(t(PC), t(PR), t(RC), t(RR), beta=0.1, label_smoothing=0.1)
