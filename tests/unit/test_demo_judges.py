"""The Safe RLHF demo stage with learned judges: the overrides the demo and the study share."""

from __future__ import annotations

from vlalign.config import load_recipe
from vlalign.demo import LEARNED_JUDGE_KL, learned_judge_overrides


def test_learned_judges_add_the_validity_guard_the_cost_model_and_a_stronger_kl():
    base = load_recipe("tiny/demo-safe-rlhf")
    r = load_recipe("tiny/demo-safe-rlhf", learned_judge_overrides("/m/rm", "/m/cm"))
    assert [(w.name, w.weight, w.model) for w in r.method.rewards] == [
        ("reward_model", 1.0, "/m/rm"),
        ("validity", 10.0, None),
    ]
    assert [(c.name, c.model) for c in r.method.costs] == [("cost_model", "/m/cm")]
    assert r.method.kl_coef == LEARNED_JUDGE_KL > base.method.kl_coef
    # everything else is the recipe's: budgets, the over-refusal constraint, steps
    assert r.method.budgets == base.method.budgets
    assert r.method.over_refusal_budget == base.method.over_refusal_budget
    assert r.train.max_steps == base.train.max_steps


def test_a_later_override_still_wins():
    r = load_recipe(
        "tiny/demo-safe-rlhf", [*learned_judge_overrides("/m/rm", "/m/cm"), "method.kl_coef=0.5"]
    )
    assert r.method.kl_coef == 0.5
