"""KTO (Ethayarajh et al. 2024, eq. 8) against values and gradients computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from vlalign.losses import get_loss
from vlalign.losses.unpaired import kl_reference_point, kto_loss

POLICY = [-10.0, -12.0, -9.0, -11.0]
REF = [-11.0, -11.0, -10.0, -10.0]
DESIRABLE = [True, True, False, False]
KL_POLICY = [-20.0, -21.0]
KL_REF = [-21.0, -20.5]


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def t(values, requires_grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=requires_grad)


def test_kto_value_and_gradient_by_hand() -> None:
    """r = policy - ref = [1, -1, 1, -1]; z0 = max(0, mean([-20+21, -21+20.5])) = 0.25.

    beta 0.1, lambda_D 2, lambda_U 1:
      desirable   2 * (1 - sig(0.1 * (1 - 0.25)))  = 2 * (1 - sig(0.075))
                  2 * (1 - sig(0.1 * (-1 - 0.25))) = 2 * (1 - sig(-0.125))
      undesirable 1 * (1 - sig(0.1 * (0.25 - 1)))  = 1 - sig(-0.075)
                  1 * (1 - sig(0.1 * (0.25 + 1)))  = 1 - sig(0.125)
      loss = (0.962518 + 1.062418 + 0.518741 + 0.468791) / 4 = 0.753117
    d loss / d policy[0] = -2 * 0.1 * sig(0.075) * (1 - sig(0.075)) / 4 = -0.0124824
    d loss / d policy[2] = +1 * 0.1 * sig(-0.075) * (1 - sig(-0.075)) / 4 = +0.0062412
    The KL rows take no gradient (z0 is detached).
    """
    pol, kl_pol = t(POLICY, True), t(KL_POLICY, True)
    out = kto_loss(
        pol,
        t(REF),
        torch.tensor(DESIRABLE),
        kl_pol,
        t(KL_REF),
        beta=0.1,
        desirable_weight=2.0,
        undesirable_weight=1.0,
    )
    expected = (
        2 * (1 - sig(0.075)) + 2 * (1 - sig(-0.125)) + (1 - sig(-0.075)) + (1 - sig(0.125))
    ) / 4
    assert float(out.loss) == pytest.approx(expected, abs=1e-12)
    assert float(out.loss) == pytest.approx(0.753117, abs=1e-6)
    assert float(out.metrics["kl"]) == pytest.approx(0.25)
    out.loss.backward()
    assert float(pol.grad[0]) == pytest.approx(-2 * 0.1 * sig(0.075) * (1 - sig(0.075)) / 4)
    assert float(pol.grad[0]) == pytest.approx(-0.0124824, abs=1e-7)
    assert float(pol.grad[2]) == pytest.approx(0.1 * sig(-0.075) * (1 - sig(-0.075)) / 4)
    assert kl_pol.grad is None or float(kl_pol.grad.abs().sum()) == 0.0
    # rewards: beta * r, split by desirability
    assert out.chosen_rewards.tolist() == pytest.approx([0.1, -0.1])
    assert out.rejected_rewards.tolist() == pytest.approx([0.1, -0.1])


def test_reference_point_is_clamped_at_zero_and_detached() -> None:
    """mean([-1, -3]) = -2 -> z0 = 0; an empty KL batch gives 0 as well."""
    x = t([-11.0, -13.0], True)
    z0 = kl_reference_point(x, t([-10.0, -10.0]))
    assert float(z0) == 0.0 and not z0.requires_grad
    assert float(kl_reference_point(t([]), t([]))) == 0.0


def test_given_z0_overrides_the_batch_estimate() -> None:
    """With z0 = 0 and equal weights: mean(1 - sig(0.1), 1 - sig(-0.1), 1 - sig(-0.1),
    1 - sig(0.1)) = 0.5 exactly (sig(x) + sig(-x) = 1)."""
    out = kto_loss(t(POLICY), t(REF), torch.tensor(DESIRABLE), beta=0.1, z0=torch.tensor(0.0))
    assert float(out.loss) == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(ValueError, match="mismatched log-probs or z0"):
        kto_loss(t(POLICY), t(REF), torch.tensor(DESIRABLE), beta=0.1)


def test_kto_is_registered_under_its_catalog_name() -> None:
    spec = get_loss("kto")
    assert spec.fn is kto_loss and spec.kind == "unpaired" and not spec.reference_free
