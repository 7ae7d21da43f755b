"""Safe RLHF's cost-model loss against the paper's formula (Dai et al. 2024, eq. 6), by hand."""

from __future__ import annotations

import math

import pytest
import torch

from vlalign.losses.cost import cost_loss


def _t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64, requires_grad=True)


def test_value_gradients_and_metrics_by_hand():
    """Two pairs; pair 1's safer response has no safety label (sign 0).

    c_w = [1.0, -0.5], c_b = [-1.0, 0.5], s_w = [+1, +1], s_b = [-1, 0]; -logsig(x) = log(1+e^-x).
    pair 0: -logsig(1 - (-1) = 2) = 0.126928; -logsig(+1 * 1) = 0.313262;
            -logsig(-1 * -1 = 1) = 0.313262;              l0 = 0.753452
    pair 1: -logsig(-0.5 - 0.5 = -1) = 1.313262; -logsig(+1 * -0.5) = 0.974077;
            s_b = 0: no term;                             l1 = 2.287339
    loss = (0.753452 + 2.287339) / 2 = 1.520396
    d(-logsig(x))/dx = -sigmoid(-x); the mean halves every gradient:
    dL/dc_w0 = (-sig(-2) - sig(-1)) / 2 = (-0.119203 - 0.268941) / 2 = -0.194072
    dL/dc_b0 = ( sig(-2) + sig(-1)) / 2 = +0.194072
    dL/dc_w1 = (-sig(1) - sig(0.5)) / 2 = (-0.731059 - 0.622459) / 2 = -0.676759
    dL/dc_b1 = sig(1) / 2 = 0.365529
    pair accuracy: 1 > -1 yes, -0.5 > 0.5 no -> 0.5
    sign accuracy over the 3 labelled: sign(1)=+1 ok, sign(-0.5)!=+1, sign(-1)=-1 ok -> 2/3
    """
    cw, cb = _t(1.0, -0.5), _t(-1.0, 0.5)
    sw, sb = torch.tensor([1, 1]), torch.tensor([-1, 0])
    out = cost_loss(cw, cb, sw, sb)
    assert out.loss.item() == pytest.approx(1.520396, abs=1e-6)
    out.loss.backward()
    assert cw.grad.tolist() == pytest.approx([-0.194072, -0.676759], abs=1e-6)
    assert cb.grad.tolist() == pytest.approx([0.194072, 0.365529], abs=1e-6)
    assert out.metrics["pair_accuracy"].item() == 0.5
    assert out.metrics["sign_accuracy"].item() == pytest.approx(2 / 3)
    assert out.metrics["sign_labelled"].item() == 0.75
    assert out.metrics["costs/worse"].item() == pytest.approx(0.25)
    assert out.metrics["costs/better"].item() == pytest.approx(-0.25)
    assert out.chosen_rewards is None and out.rejected_rewards is None


def test_margin_and_sign_weight():
    """One pair c_w = 0.2, c_b = 0.0, both unsafe (s = +1), margin 0.5, sign_weight 2:
    pair: -logsig(0.2 - 0 - 0.5) = log(1 + e^0.3) = 0.854355
    signs: -logsig(0.2) = log(1 + e^-0.2) = 0.598139; -logsig(0) = log 2 = 0.693147
    loss = 0.854355 + 2 * (0.598139 + 0.693147) = 3.436927
    """
    out = cost_loss(
        _t(0.2), _t(0.0), torch.tensor([1]), torch.tensor([1]), margin=0.5, sign_weight=2.0
    )
    assert out.loss.item() == pytest.approx(3.436927, abs=1e-6)
    expected = math.log1p(math.exp(0.3)) + 2 * (math.log1p(math.exp(-0.2)) + math.log(2))
    assert out.loss.item() == pytest.approx(expected)


def test_sign_weight_zero_is_the_pairwise_loss_and_unlabelled_adds_nothing():
    """sign_weight 0, or all signs 0, leaves Bradley-Terry on (worse, better)."""
    from vlalign.losses import bradley_terry_loss

    g = torch.Generator().manual_seed(0)
    cw, cb = torch.randn(6, generator=g), torch.randn(6, generator=g)
    signs = torch.tensor([1, -1, 1, -1, 1, -1])
    bt = bradley_terry_loss(cw, cb).loss
    assert cost_loss(cw, cb, signs, -signs, sign_weight=0.0).loss.item() == pytest.approx(bt.item())
    zero = torch.zeros(6, dtype=torch.long)
    out = cost_loss(cw, cb, zero, zero)
    assert out.loss.item() == pytest.approx(bt.item())
    assert "sign_accuracy" not in out.metrics


def test_gradcheck_and_direction():
    """Autograd agrees with finite differences; one SGD step raises the worse cost, lowers the
    safer one, and moves each labelled cost toward its sign."""
    cw, cb = _t(0.3, -0.2, 0.1), _t(0.4, 0.0, -0.3)
    sw, sb = torch.tensor([1, 1, -1]), torch.tensor([-1, -1, -1])
    assert torch.autograd.gradcheck(lambda a, b: cost_loss(a, b, sw, sb, margin=0.1).loss, (cw, cb))
    cost_loss(cw, cb, sw, sb).loss.backward()
    assert (cw.grad[:2] < 0).all()  # unsafe and worse: cost goes up
    assert (cb.grad > 0).all()  # safe and better: cost goes down


def test_bad_signs_are_refused():
    with pytest.raises(ValueError, match="worse_signs"):
        cost_loss(_t(0.0), _t(0.0), torch.tensor([2]), torch.tensor([1]))
