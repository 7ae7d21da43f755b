"""Lagrange multipliers of Safe RLHF: the dual update by hand, bounds, window, delay, fixed
weights, JSON state round trip, and the combined advantage by hand."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from vlalign.losses.lagrange import OVER_REFUSAL, LagrangeMultipliers, combined_advantage


def test_update_sequence_by_hand_with_the_window():
    """budget 0, lr 0.5, lambda_0 = 1 (log 0), window 2:
    step 1: window [1, 0]   J = 0.5  log = 0   + 0.5 * 0.5 = 0.25  lambda = e^0.25 = 1.284025
    step 2: window [0, 1]   J = 0.5  log = 0.25 + 0.25    = 0.5   lambda = e^0.5  = 1.648721
    step 3: window [-1, -1] J = -1   log = 0.5 - 0.5      = 0.0   lambda = 1.0
    step 4: window [-1, 3]  J = 1    log = 0.0 + 0.5      = 0.5   lambda = 1.648721
    (each step's costs push out the oldest; the window keeps the last 2)
    """
    m = LagrangeMultipliers({"weapons": 0.0}, lr=0.5, init_lambda=1.0, window=2)
    expected = []
    got = []
    for step, (costs, lam, j) in enumerate(
        [
            ([1.0, 0.0], 1.284025, 0.5),
            ([1.0], 1.648721, 0.5),
            ([-1.0, -1.0], 1.0, -1.0),
            ([3.0], 1.648721, 1.0),
        ],
        start=1,
    ):
        m.record("weapons", costs)
        metrics = m.update(step)
        got.append((metrics["lagrange/lambda/weapons"], metrics["lagrange/constraint/weapons"]))
        expected.append((pytest.approx(lam, abs=1e-6), j))
        assert metrics["lagrange/budget/weapons"] == 0.0
    assert got == expected
    assert list(m.windows["weapons"]) == [-1.0, 3.0]


def test_satisfied_goes_to_zero_violated_to_max():
    """J = 0 < budget 0.5: log lambda falls by lr * 0.5 = 0.25 per step (100 steps: e^-25);
    with a floor it stops exactly there. J = 2 > budget 0: rises to max_lambda and stays."""
    m = LagrangeMultipliers({"drugs": 0.5, "weapons": 0.0}, lr=0.5, max_lambda=10.0)
    floored = LagrangeMultipliers({"drugs": 0.5}, lr=0.5, min_lambda=1e-3)
    trace = []
    for step in range(1, 101):
        m.record("drugs", [0.0])
        m.record("weapons", [2.0])
        floored.record("drugs", [0.0])
        m.update(step)
        floored.update(step)
        trace.append(m.lambdas["drugs"])
    assert all(b < a for a, b in itertools.pairwise(trace))  # strictly decreasing toward 0
    assert m.lambdas["drugs"] == pytest.approx(math.exp(-25.0))
    assert m.lambdas["weapons"] == pytest.approx(10.0)  # log(10) reached after 3 steps
    assert m.log_lambdas["weapons"] == math.log(10.0)
    assert floored.lambdas["drugs"] == pytest.approx(1e-3)


def test_delay_fixed_weights_and_empty_windows():
    """No update before step `delay`; lagrangian=False keeps lambdas constant; an empty window
    leaves its lambda alone."""
    m = LagrangeMultipliers({"a": 0.0, "b": 0.0}, lr=1.0, delay=3, init_lambda=2.0)
    m.record("a", [1.0])
    for step in (1, 2):
        m.update(step)
        assert m.lambdas == pytest.approx({"a": 2.0, "b": 2.0})
    m.update(3)  # a: log 2 + 1 * (1 - 0)
    assert m.lambdas["a"] == pytest.approx(2.0 * math.e)
    assert m.lambdas["b"] == pytest.approx(2.0)  # nothing recorded for b
    assert "lagrange/constraint/b" not in m.metrics()
    fixed = LagrangeMultipliers({"a": 0.0}, lagrangian=False, init_lambda=0.7)
    for step in range(1, 20):
        fixed.record("a", [5.0])
        metrics = fixed.update(step)
    assert fixed.lambdas["a"] == 0.7
    assert metrics["lagrange/constraint/a"] == 5.0


def test_over_refusal_has_its_own_multiplier():
    """Benign refusal rate 3/4 with budget 0.05, lr 1: log rho = 0 + (0.75 - 0.05) = 0.7."""
    m = LagrangeMultipliers({"weapons": 0.0}, over_refusal_budget=0.05, lr=1.0)
    assert m.names == ("weapons", OVER_REFUSAL)
    m.record(OVER_REFUSAL, [1, 1, 0, 1])
    m.update(1)
    assert m.refusal_lambda == pytest.approx(math.exp(0.7))
    assert m.lambdas["weapons"] == 1.0
    assert LagrangeMultipliers({"weapons": 0.0}).refusal_lambda == 0.0
    with pytest.raises(ValueError, match="reserved"):
        LagrangeMultipliers({OVER_REFUSAL: 0.1})
    with pytest.raises(KeyError, match="unknown constraint 'x'"):
        m.record("x", [1.0])


def test_state_round_trips_through_json_and_resumes_exactly():
    """A run saved at step 5 and resumed from JSON continues with bit-identical lambdas."""

    def make() -> LagrangeMultipliers:
        return LagrangeMultipliers(
            {"weapons": 0.1, "drugs": -0.2}, over_refusal_budget=0.05, lr=0.37, window=3, delay=2
        )

    costs = [(0.3 * i % 1.1, -0.07 * i, i % 2) for i in range(12)]

    def step(m: LagrangeMultipliers, i: int) -> None:
        w, d, r = costs[i]
        m.record("weapons", [w, w / 3])
        m.record("drugs", [d])
        m.record(OVER_REFUSAL, [r])
        m.update(i + 1)

    a = make()
    for i in range(5):
        step(a, i)
    saved = json.loads(json.dumps(a.state_dict()))
    b = make()
    b.load_state_dict(saved)
    assert b.state_dict() == a.state_dict()
    for i in range(5, 12):
        step(a, i)
        step(b, i)
        assert b.lambdas == a.lambdas  # exact equality, not approx
    other = LagrangeMultipliers({"weapons": 0.1})
    with pytest.raises(ValueError, match="saved multipliers"):
        other.load_state_dict(saved)


def test_combined_advantage_by_hand():
    """lambdas [1, 3] for categories 0, 1; refusal multiplier 0.5 on benign rows 2, 3:
    n0 (cat 0):        (1 - 1 * 2) / (1 + 1)          = -0.5
    n1 (cat 1):        (1 - 3 * -1) / (1 + 3)         = 1.0
    n2 (benign):       (1 - 0.5 * 1) / (1 + 0.5)      = 0.333333
    n3 (benign):       (2 - 0.5 * -1) / (1 + 0.5)     = 1.666667
    without the refusal term the benign rows keep their reward advantage (1, 2).
    """
    reward = torch.tensor([1.0, 1.0, 1.0, 2.0], requires_grad=True)
    cost = torch.tensor([2.0, -1.0, 5.0, 0.0])
    cat = torch.tensor([0, 1, -1, -1])
    lambdas = torch.tensor([1.0, 3.0], requires_grad=True)
    a = combined_advantage(
        reward,
        cost,
        cat,
        lambdas,
        refusal_adv=torch.tensor([0.0, 0.0, 1.0, -1.0]),
        refusal_mask=torch.tensor([False, False, True, True]),
        refusal_lambda=0.5,
    )
    assert a.tolist() == pytest.approx([-0.5, 1.0, 1 / 3, 5 / 3], abs=1e-6)
    a.sum().backward()
    assert lambdas.grad is None  # multipliers are constants in the policy step
    assert reward.grad.tolist() == pytest.approx([0.5, 0.25, 2 / 3, 2 / 3])
    plain = combined_advantage(reward, cost, cat, lambdas)
    assert plain.tolist() == pytest.approx([-0.5, 1.0, 1.0, 2.0])


def test_category_index_and_lambda_tensor():
    m = LagrangeMultipliers(
        {"weapons": 0.0, "drugs": 0.0}, init_lambda={"weapons": 2.0, "drugs": 0.5}
    )
    assert m.category_index(["drugs", "nature", None, "weapons"]).tolist() == [1, -1, -1, 0]
    assert m.lambda_tensor().tolist() == [2.0, 0.5]
    with pytest.raises(ValueError, match="init_lambda"):
        LagrangeMultipliers({"a": 0.0}, init_lambda=20.0, max_lambda=10.0)
