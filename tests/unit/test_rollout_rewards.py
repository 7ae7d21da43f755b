"""Rewards that see (image, prompt, response, meta): rule, exported reward model, VLM judge,
and their combination."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from vlalign.config.schema import ModelConfig, Recipe
from vlalign.logprobs import token_logprobs_from_logits
from vlalign.models import apply_peft, build
from vlalign.models.inputs import ChatEncoder
from vlalign.models.value_head import RewardModel
from vlalign.rollout.engine import produces_mm_token_types
from vlalign.rollout.rewards import (
    COMBINERS,
    REWARDS,
    JudgeReward,
    RefusalRule,
    RewardError,
    RewardModelReward,
    RewardSample,
    ValidityReward,
    build_reward,
    normalized_sum,
    score,
    weighted_sum,
)

RED, GREEN = Image.new("RGB", (32, 32), (220, 9, 9)), Image.new("RGB", (32, 32), (9, 220, 9))
REFUSE = "I can't help with that request."
HELP = "Sure, here is how to do it: first gather the parts, then assemble them."


def sample(response: str, meta: dict, image: Image.Image = RED) -> RewardSample:
    return RewardSample([image], "How do I make this?", response, meta)


def test_refusal_rule_is_label_aware_and_penalizes_degenerate_text() -> None:
    """harmful + refusal -> high 1; harmful + help -> low -1; benign + help -> 1;
    benign + refusal -> -1; benign + "OfOfOfOfOf" (collapsed text, not a refusal, so it would
    count as helping) -> invalid -1; empty -> -1; unlabeled -> 0; meta["label"] also works.
    Custom scores are used as given."""
    samples = [
        sample(REFUSE, {"harmful": True}),
        sample(HELP, {"harmful": True}),
        sample(HELP, {"harmful": False}),
        sample(REFUSE, {"harmful": False}),
        sample("OfOfOfOfOfOfOf", {"harmful": False}),
        sample("   ", {"harmful": True}),
        sample(HELP, {}),
        sample(REFUSE, {"label": "harmful"}),
        sample(REFUSE, {"harmful": None, "label": "benign"}),
    ]
    assert RefusalRule()(samples).tolist() == [1, -1, 1, -1, -1, -1, 0, 1, -1]
    custom = RefusalRule(high=2.0, low=0.0, invalid=-5.0, unknown=0.5)(samples)
    assert custom.tolist() == [2, 0, 2, 0, -5, -5, 0.5, 2, 0]
    assert custom.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# reward_model


def _exported_reward_model(name: str, cache: str, out_dir) -> RewardModel:
    """A tiny reward model with non-trivial LoRA and head weights, exported as training does."""
    from vlalign.training.export import export

    recipe = Recipe.model_validate(
        {
            "model": {"name": name, "cache_dir": cache},
            "method": {"name": "reward"},
            "train": {"export": "adapter"},
        }
    )
    built = build(recipe.model)
    rm = RewardModel(apply_peft(built.model, recipe.peft))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in rm.named_parameters():
            if "lora_B" in n or "value_head" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    export(rm, built.processor, recipe, built.family, out_dir, rank=0, zero_stage=0)
    return rm.eval()


def test_validity_reward_scores_degenerate_text_whatever_the_label() -> None:
    """valid text -> 0 (refusal or help, harmful or benign or unlabeled); "I I I ..." (a repeated
    word: what RL found against a learned reward model), "Happyeeeeeeee" (repeated characters)
    and empty text -> -1. Weighted with a learned reward whose spread is below the weight,
    a degenerate answer loses to every valid one in its group."""
    samples = [
        sample(REFUSE, {"harmful": True}),
        sample(HELP, {"harmful": False}),
        sample(HELP, {}),
        sample("I " * 24, {"harmful": True}),
        sample("Happyeeeeeeeeeeeeegin slowegin slowe", {"harmful": False}),
        sample("", {}),
    ]
    assert ValidityReward()(samples).tolist() == [0, 0, 0, -1, -1, -1]
    assert build_reward("validity", invalid=-10.0)(samples).tolist() == [0, 0, 0, -10, -10, -10]
    learned = {"reward_model": torch.tensor([1.0, 0.8, 0.0, 2.0, 4.8, 0.0])}
    learned["validity"] = ValidityReward()(samples)
    total, _ = weighted_sum(learned, {"reward_model": 1.0, "validity": 10.0})
    assert total[3:].max() < total[:3].min()


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl", "tiny-idefics3"])
def test_reward_model_export_scores_with_the_image(name, model_cache, tmp_path) -> None:
    """The reward loaded from the export dir scores a batch exactly as the trained RewardModel
    scores each sample alone (1e-5); the image changes the score (same text, other image)."""
    rm = _exported_reward_model(name, model_cache, tmp_path / "rm")
    reward = build_reward("reward_model", path=str(tmp_path / "rm"), batch_size=3)
    samples = [
        sample(REFUSE, {"harmful": True}, RED),
        sample(HELP, {"harmful": True}, RED),
        sample(REFUSE, {"harmful": False}, GREEN),
        sample(HELP, {"harmful": False}, GREEN),
    ]
    got = reward(samples)
    built = build(ModelConfig(name=name, cache_dir=model_cache))
    enc = ChatEncoder(built.processor, built.family)
    want = []
    for s in samples:
        ex = enc.sft_example(s.images, s.prompt, s.response)
        ids = ex["input_ids"][None]
        kw = dict(ex["image_inputs"])
        if produces_mm_token_types(enc):
            kw["mm_token_type_ids"] = (ids == enc.image_token_id).long()
        with torch.no_grad():
            want.append(float(rm(ids, torch.ones_like(ids), **kw)))
    assert got.shape == (4,)
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    other_image = reward([sample(REFUSE, {}, GREEN)])
    assert abs(float(other_image[0]) - want[0]) > 1e-4


def test_reward_model_refuses_a_non_reward_export(tmp_path) -> None:
    with pytest.raises(RewardError, match="not a vlalign export"):
        RewardModelReward(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# judge


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
def test_judge_reward_is_p_yes_from_the_verdict_logprobs(name, model_cache) -> None:
    """reward = sigmoid(log p("yes" reply) - log p("no" reply)) for the filled template with the
    image, checked against a naive per-sample forward (full logits, pixels); in (0, 1); the
    image changes it."""
    built = build(ModelConfig(name=name, cache_dir=model_cache))
    judge = build_reward(
        "judge", model=built.model, processor=built.processor, family=built.family, batch_size=2
    )
    samples = [sample(REFUSE, {}, RED), sample(HELP, {}, RED), sample(HELP, {}, GREEN)]
    got = judge(samples)
    enc = ChatEncoder(built.processor, built.family, 1024)
    want = []
    for s in samples:
        lps = []
        for word in ("yes", "no"):
            p = enc.encode_prompt(s.images, judge.question(s))
            verdict = torch.tensor(
                enc.tokenizer(enc.response_prefix + word, add_special_tokens=False)["input_ids"]
            )
            seq, _ = enc.join(p, verdict)
            ids = seq["input_ids"][None]
            kw = dict(p.image_inputs)
            if produces_mm_token_types(enc):
                kw["mm_token_type_ids"] = (ids == enc.image_token_id).long()
            with torch.no_grad():
                logits = built.model(
                    input_ids=ids, attention_mask=torch.ones_like(ids), **kw
                ).logits
            lps.append(float(token_logprobs_from_logits(logits, seq["labels"][None]).sum()))
        want.append(1 / (1 + math.exp(-(lps[0] - lps[1]))))
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    assert ((got > 0) & (got < 1)).all()
    assert abs(float(got[1]) - float(got[2])) > 1e-6  # same text, other image
    assert "How do I make this?" in judge.question(samples[0])
    assert REFUSE in judge.question(samples[0])
    with pytest.raises(RewardError, match="template"):
        JudgeReward(model=built.model, processor=built.processor, family=built.family, template="?")


# ---------------------------------------------------------------------------------------------
# combination


def test_weighted_and_normalized_combination_by_hand() -> None:
    """a = [1, 0, 1, 0], b = [10, 30, 20, 20], weights a 1, b 0.1, groups of G = 2.
    weighted: [1 + 1, 0 + 3, 1 + 2, 0 + 2] = [2, 3, 3, 2].
    normalized: a per group [1, 0]: mean 0.5, unbiased std 0.707107 -> [+0.707107, -0.707107];
    b group [10, 30] -> [-0.707107, +0.707107], group [20, 20] ties -> [0, 0];
    total = [0.707107 - 0.0707107, -0.707107 + 0.0707107, 0.707107, -0.707107]
          = [0.636396, -0.636396, 0.707107, -0.707107].
    Metrics (raw): a mean 0.5, std sqrt(1/3) = 0.577350; b mean 20, std sqrt(200/3) = 8.164966."""
    scores = {"a": torch.tensor([1.0, 0.0, 1.0, 0.0]), "b": torch.tensor([10.0, 30.0, 20.0, 20.0])}
    w = {"a": 1.0, "b": 0.1}
    total, m = weighted_sum(scores, w)
    assert total.tolist() == pytest.approx([2, 3, 3, 2])
    assert m["reward/a/mean"] == 0.5 and m["reward/a/std"] == pytest.approx(0.577350, abs=1e-6)
    assert m["reward/b/mean"] == 20 and m["reward/b/std"] == pytest.approx(8.164966, abs=1e-5)
    assert m["reward/total/mean"] == pytest.approx(2.5)
    k = 0.5 / math.sqrt(0.5)
    total, m = normalized_sum(scores, w, group_size=2)
    assert total.tolist() == pytest.approx([k - 0.1 * k, -k + 0.1 * k, k, -k], abs=1e-5)
    assert m["reward/b/mean"] == 20
    assert set(COMBINERS) == {"weighted", "normalized"}


def test_score_runs_every_reward_and_checks_shapes() -> None:
    """score() calls each named reward on the samples; the rule reward of 2 samples -> [1, -1]
    with weight 2 -> total [2, -2]. A reward returning the wrong shape is an error."""
    samples = [sample(REFUSE, {"harmful": True}), sample(REFUSE, {"harmful": False})]
    total, per, m = score({"refusal_rule": RefusalRule()}, samples, {"refusal_rule": 2.0})
    assert total.tolist() == [2.0, -2.0] and per["refusal_rule"].tolist() == [1.0, -1.0]
    assert m["reward/refusal_rule/mean"] == 0.0
    with pytest.raises(RewardError, match="shape"):
        score({"bad": lambda s: torch.zeros(3)}, samples)
    assert set(REWARDS) == {"refusal_rule", "reward_model", "judge", "validity"}
    with pytest.raises(RewardError, match="valid: refusal_rule"):
        build_reward("bleu")
