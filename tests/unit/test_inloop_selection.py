"""In-loop scorecards, the pure parts: which checkpoint is exported, when a run stops early,
which prompts and splits are scored, and what the recipe refuses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from vlalign import gates
from vlalign.config import Recipe
from vlalign.config.checks import check_recipe
from vlalign.config.schema import BestConfig, EarlyStopConfig, PromotionConfig
from vlalign.evaluation.inloop import inloop_splits, stratified_indices
from vlalign.tracking import promotion
from vlalign.training.selection import choose, protected_step, record, stop_reason

GATES = PromotionConfig(
    gates=[
        {"metric": "harmful_refusal_rate", "op": ">=", "value": 0.9},
        {"metric": "benign_refusal_rate", "op": "<=", "value": 0.1},
    ]
)


def _hist(*rows: tuple[int, float, float], promo: PromotionConfig = GATES) -> list[dict]:
    """(step, harmful refusal, benign refusal) -> evaluation records under `promo`."""
    return [
        record(s, {"harmful_refusal_rate": h, "benign_refusal_rate": b}, promo) for s, h, b in rows
    ]


def test_record_holds_the_gate_verdict_or_none_without_gates():
    assert _hist((2, 0.95, 0.05))[0]["gates_passed"] is True
    assert _hist((2, 0.95, 0.20))[0]["gates_passed"] is False
    assert _hist((2, 0.95, 0.20), promo=PromotionConfig())[0]["gates_passed"] is None


def test_the_latest_evaluation_passing_the_gates_is_chosen():
    h = _hist((2, 0.5, 0.0), (4, 0.95, 0.05), (6, 0.99, 0.02), (8, 0.99, 0.3))
    c = choose(h, BestConfig(), final_step=8)
    assert (c.step, c.final) == (6, False)
    assert c.describe() == "step 6: latest passing the gates"
    assert protected_step(h, BestConfig()) == 6


def test_best_by_a_metric_follows_its_direction_among_passing_ties_to_the_later():
    h = _hist((2, 0.99, 0.5), (4, 0.95, 0.04), (6, 0.97, 0.02), (8, 0.99, 0.02), (10, 0.92, 0.08))
    # lower benign refusal is better; step 2 (0.5) fails the gates; 6 and 8 tie -> 8
    c = choose(h, BestConfig(metric="benign_refusal_rate"), final_step=10)
    assert c.step == 8
    assert c.reason == "best benign_refusal_rate (0.02) among those passing the gates"
    c = choose(h, BestConfig(metric="harmful_refusal_rate"), final_step=10)
    assert c.step == 8  # 0.99 at 8 (passing); the 0.99 of step 2 fails the gates


def test_without_gates_a_metric_ranks_every_evaluation_and_no_metric_means_final():
    h = _hist((2, 0.99, 0.5), (4, 0.5, 0.0), promo=PromotionConfig())
    assert choose(h, BestConfig(metric="harmful_refusal_rate"), 6).step == 2
    c = choose(h, BestConfig(), 6)
    assert (c.step, c.final) == (6, True)
    assert "no promotion.gates" in c.reason
    assert protected_step(h, BestConfig()) is None


def test_no_passing_evaluation_exports_the_final_weights_and_says_so():
    h = _hist((2, 0.5, 0.0), (4, 0.6, 0.0))
    c = choose(h, BestConfig(), final_step=5)
    assert (c.step, c.final) == (5, True)
    assert (
        c.describe() == "step 5: final weights: none of the 2 in-loop scorecards passed the gates"
    )
    assert choose([], BestConfig(), 5).final


def test_early_stop_needs_passing_gates_and_patience_evaluations_without_improvement():
    cfg = EarlyStopConfig(metric="harmful_refusal_rate", patience=2, min_delta=0.01)
    # 0.95 (best) -> 0.955 (+0.005: not an improvement beyond min_delta) -> 0.95
    h = _hist((2, 0.95, 0.0), (4, 0.955, 0.0))
    assert stop_reason(h, cfg) is None  # one evaluation without improvement
    h = _hist((2, 0.95, 0.0), (4, 0.955, 0.0), (6, 0.95, 0.0))
    why = stop_reason(h, cfg)
    assert why is not None and "harmful_refusal_rate has not improved by more than 0.01" in why
    assert "for 2 in-loop scorecards" in why
    # same stall, but the latest fails the gates: go on
    h = _hist((2, 0.95, 0.0), (4, 0.955, 0.0), (6, 0.95, 0.5))
    assert stop_reason(h, cfg) is None
    # an improvement resets the count
    h = _hist((2, 0.91, 0.0), (4, 0.91, 0.0), (6, 0.97, 0.0), (8, 0.97, 0.0))
    assert stop_reason(h, cfg) is None
    assert stop_reason(h, None) is None


def test_early_stop_reads_a_lower_is_better_metric_the_right_way():
    cfg = EarlyStopConfig(metric="benign_refusal_rate", patience=1)
    assert stop_reason(_hist((2, 0.95, 0.08), (4, 0.95, 0.05)), cfg) is None  # fell: improved
    assert stop_reason(_hist((2, 0.95, 0.05), (4, 0.95, 0.08)), cfg) is not None  # rose


def test_stratified_subset_takes_every_group_round_robin_in_reading_order():
    g = [("harmful", "a")] * 5 + [("benign", "b")] * 5 + [("harmful", "c")]
    assert stratified_indices(g, 3) == [0, 5, 10]
    assert stratified_indices(g, 5) == [0, 1, 5, 6, 10]
    assert stratified_indices(g, 100) == list(range(11))


def _recipe(**train) -> Recipe:
    return Recipe.model_validate({"train": train})


def test_in_loop_splits_default_to_the_held_out_one_and_those_the_gates_name():
    r = Recipe.model_validate(
        {
            "promotion": {
                "gates": [
                    {"metric": "harmful_refusal_rate", "op": ">=", "value": 0.9},
                    {"metric": "shift-visual/harmful_refusal_rate", "op": ">=", "value": 0.8},
                ]
            }
        }
    )
    assert inloop_splits(r) == ["eval", "shift-visual"]
    r.train.eval_splits = ["shift-text", "eval"]
    assert inloop_splits(r) == ["eval", "shift-text"]


def test_schema_names_the_field_of_a_bad_in_loop_setting():
    with pytest.raises(ValidationError, match="early_stop: needs eval_every"):
        _recipe(early_stop={"patience": 2})
    with pytest.raises(ValidationError, match=r"train\.best[\s\S]*'loss' is not an in-loop"):
        _recipe(eval_every=2, best={"metric": "loss"})
    with pytest.raises(ValidationError, match="reward_accuracy' is not an in-loop"):
        _recipe(eval_every=2, early_stop={"metric": "reward_accuracy"})
    with pytest.raises(ValidationError, match=r"train\.eval_every"):
        _recipe(eval_every=0)
    r = _recipe(eval_every=2, best={"metric": "shift-visual/benign_refusal_rate"})
    assert r.train.best.metric == "shift-visual/benign_refusal_rate"


def test_check_recipe_refuses_what_the_in_loop_scorecard_cannot_do(tmp_path):
    def problems(**sections) -> list[str]:
        base = {"model": {"name": "tiny-llava"}, "train": {"eval_every": 2}}
        for k, v in sections.items():
            base[k] = {**base.get(k, {}), **v} if k != "method" else v
        return [p for p in check_recipe(Recipe.model_validate(base)) if "train." in p]

    assert problems() == []
    assert any("engine.zero_stage" in p for p in problems(engine={"zero_stage": 3}))
    assert any("scalar head" in p for p in problems(method={"name": "reward"}))
    (tmp_path / "manifest.json").write_text("{}")
    assert any("no eval data" in p for p in problems(data={"train": str(tmp_path)}))
    assert any(
        p.startswith("train.early_stop")
        for p in problems(train={"eval_every": 2, "early_stop": {}}, promotion={"gates": []})
    )
    gate = {"metric": "shift-visual/harmful_refusal_rate", "op": ">=", "value": 0.5}
    out = problems(train={"eval_every": 2, "eval_splits": ["eval"]}, promotion={"gates": [gate]})
    assert any("reads split 'shift-visual'" in p for p in out), out


def test_promotion_and_the_loop_share_the_absolute_gates():
    assert promotion.GateReport is gates.GateReport and promotion.OPS is gates.OPS
    assert promotion.direction("shift-visual/benign_refusal_rate") == "lower"
    metrics = {"harmful_refusal_rate": 0.95, "benign_refusal_rate": 0.2}
    report = promotion.evaluate_gates(GATES, metrics)
    assert report.results == gates.absolute_gates(GATES.gates, metrics)
    assert record(1, metrics, GATES)["gates_passed"] is report.passed is False
