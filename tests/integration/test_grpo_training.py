"""Online RL (method grpo) through the real loop on the tiny LLaVA: rollouts, rewards, the
policy update on DeepSpeed, metrics, and resume equivalence (a run cut at a checkpoint and
resumed regenerates the same samples and continues the same losses)."""

from __future__ import annotations

import pytest

from vlalign.config import Recipe
from vlalign.training.context import TrainContext
from vlalign.training.loop import run_training


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    from data_pipeline.synth import synthesize

    out = tmp_path_factory.mktemp("grpo-shards")
    synthesize(out, pairs=32, seed=5)
    return str(out)


def recipe(tmp_path, shards, model_cache, name, method=None, train=None) -> Recipe:
    return Recipe.model_validate(
        {
            "name": name,
            "model": {"name": "tiny-llava", "cache_dir": model_cache},
            "peft": {"r": 4, "alpha": 8, "modules_to_save": ["lm_head", "norm"]},
            "data": {"train": shards, "max_length": 96, "shuffle_buffer": 16},
            "method": {
                "name": "grpo",
                "num_generations": 4,
                "max_new_tokens": 6,
                "kl_coef": 0.05,
                **(method or {}),
            },
            "train": {
                "max_steps": 4,
                "micro_batch_size": 2,
                "lr": 1e-3,
                "schedule": "constant",
                "output_dir": str(tmp_path / name),
                **(train or {}),
            },
            "tracking": {"enabled": False},
        }
    )


@pytest.mark.parametrize("loss", ["grpo", "dapo", "rloo"])
def test_grpo_family_trains_and_reports(tmp_path, shards, model_cache, loss):
    method = {"loss": loss}
    if loss == "dapo":
        method.update(epsilon_high=0.28, filter_ties=True, overlong_cache=2)
    if loss == "rloo":
        method.update(kl_in_reward=True, kl_estimator="k1")
    res = run_training(recipe(tmp_path, shards, model_cache, f"g-{loss}", method, {"max_steps": 2}))
    m = res.metrics[-1]
    for key in (
        "reward/mean",
        "reward/std",
        "reward/refusal_rule/mean",
        "clip_frac",
        "kl",
        "entropy",
        "response_length",
        "tokens_per_s",
        "expand_s",
        "update_s",
    ):
        assert key in m, key
    # one rollout per optimizer step here (no mini-batches): each step's expand generates
    assert all(x["expand_s"] > 0 and x["update_s"] > 0 for x in res.metrics)
    assert all(x["expand_s"] + x["update_s"] <= x["step_time_s"] + 1e-9 for x in res.metrics)
    assert all(v == v for v in res.losses)  # no NaN
    assert 0 < m["response_length"] <= 6
    assert (res.export_dir / "adapter_model.safetensors").is_file()


def test_grpo_resume_regenerates_the_same_samples(tmp_path, shards, model_cache):
    """Two policy epochs over mini-batches of 4 responses (4 updates per rollout), checkpoint
    every 4 steps: a run stopped after step 4 and resumed equals an uninterrupted run."""
    method = {"epochs": 2, "mini_batch_size": 4}
    train = {"max_steps": 8, "checkpoint_every": 4}
    full = run_training(recipe(tmp_path, shards, model_cache, "gfull", method, train))
    cut = recipe(tmp_path, shards, model_cache, "gcut", method, train)
    part = run_training(cut, TrainContext(stop_after=4))
    assert len(part.losses) == 4
    rest = run_training(cut)
    assert rest.resumed_from_step == 4
    assert rest.losses == pytest.approx(full.losses, abs=1e-6)
    # rollout statistics come with the first update of each rollout (steps 1 and 5 here)
    rewards = [m.get("reward/mean") for m in rest.metrics]
    assert rewards == [m.get("reward/mean") for m in full.metrics]
    assert sum(r is not None for r in rewards) == 2


def test_safe_rlhf_multipliers_move_and_resume_exactly(tmp_path, shards, model_cache):
    """Safe RLHF through the loop: per-category multipliers and the over-refusal multiplier are
    logged every step; a random policy complies with harmful requests (cost above the budget 0)
    so the harm multipliers rise; a run cut at a checkpoint and resumed continues with exactly
    the same lambdas and losses."""
    method = {
        "name": "safe_rlhf",
        "budgets": {"weapons": 0.0, "drugs": 0.0, "self_harm": 0.0},
        "over_refusal_budget": 0.5,
        "lambda_lr": 0.5,
    }
    train = {"max_steps": 4, "checkpoint_every": 2}
    full = run_training(recipe(tmp_path, shards, model_cache, "sfull", method, train))
    last = full.metrics[-1]
    for k in ("weapons", "drugs", "self_harm", "over_refusal"):
        assert f"lagrange/lambda/{k}" in last and f"lagrange/budget/{k}" in last
    seen = [k for k in ("weapons", "drugs", "self_harm") if f"lagrange/constraint/{k}" in last]
    assert seen, last
    for k in seen:  # violated (costs > 0 = budget on a random policy) -> lambda rose from 1
        if last[f"lagrange/constraint/{k}"] > 0:
            assert last[f"lagrange/lambda/{k}"] > 1.0
    png = full.output_dir / "report" / "lagrange.png"
    assert png.is_file() and png.stat().st_size > 10_000  # the lambda curves, drawn
    cut = recipe(tmp_path, shards, model_cache, "scut", method, train)
    run_training(cut, TrainContext(stop_after=2))
    rest = run_training(cut)
    assert rest.losses == pytest.approx(full.losses, abs=1e-6)
    for a, b in zip(rest.metrics, full.metrics, strict=True):
        lam = {k: v for k, v in a.items() if k.startswith("lagrange/")}
        assert lam == pytest.approx({k: v for k, v in b.items() if k.startswith("lagrange/")})
