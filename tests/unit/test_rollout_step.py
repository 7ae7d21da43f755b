"""The pieces together, as methods/grpo.py will use them: rollout -> rewards -> advantages ->
policy loss on the trainer's forward -> optimizer step -> weight sync with parity."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from vlalign.config.schema import ModelConfig, PeftConfig
from vlalign.losses.policy import POLICY_LOSSES, group_normalized_advantages
from vlalign.models import apply_peft, build
from vlalign.models.lora import vision_prefix
from vlalign.models.unwrap import unwrap
from vlalign.rollout.engine import (
    GenerationEngine,
    SamplingSettings,
    rollout_logps,
    token_forward,
)
from vlalign.rollout.rewards import RefusalRule, RewardSample, score
from vlalign.rollout.weights import apply_update, make_probe, make_update


def prompts() -> list[dict]:
    cues = [((220, 9, 9), True), ((9, 220, 9), False)]
    return [
        {
            "key": f"p{i}",
            "prompt": "What should I do with this?",
            "images": [Image.new("RGB", (32, 32), color)],
            "meta": {"harmful": harmful},
        }
        for i, (color, harmful) in enumerate(cues)
    ]


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
@pytest.mark.parametrize("loss", ["grpo", "dapo"])
def test_one_online_step_on_policy_then_sync(name: str, loss: str, model_cache) -> None:
    """First step: the trainer's forward on the rollout batch (reusing the rollout's image
    features: the vision tower does not run again) reproduces the old log-probs exactly, so the
    ratio is 1 and nothing is clipped; the adapter-disabled reference equals the policy at LoRA
    init (kl 0). The loss trains the LoRA weights (not the vision tower); after the step the
    policy moved (ratio != 1 on the same batch), and a synced rollout model passes parity."""
    peft = PeftConfig(r=4, alpha=8, modules_to_save=["lm_head"])
    built = build(ModelConfig(name=name, cache_dir=model_cache))
    policy = apply_peft(built.model, peft, seed=0)
    rollout_model = apply_peft(build(ModelConfig(name=name, cache_dir=model_cache)).model, peft)
    engine = GenerationEngine(
        rollout_model, built.processor, built.family, SamplingSettings(n=4, max_new_tokens=6)
    )
    r = engine.rollout(prompts(), step=0)
    samples = [
        RewardSample(p["images"], p["prompt"], text, p["meta"])
        for p, text in zip([prompts()[int(i)] for i in r.prompt_index], r.texts, strict=True)
    ]
    # the rule alone ties on a random model's output; response length makes groups differ
    rewards = {
        "refusal_rule": RefusalRule(),
        "length": lambda ss: torch.tensor([-len(s.response) / 10 for s in ss]),
    }
    total, per, metrics = score(rewards, samples, {"refusal_rule": 1.0, "length": 1.0})
    assert per["refusal_rule"].shape == (8,) and "reward/length/std" in metrics
    adv = group_normalized_advantages(total, 4)
    assert adv.abs().sum() > 0

    vp = vision_prefix(unwrap(policy))
    vision = unwrap(policy).get_submodule(vp)
    calls: list[int] = []
    hook = vision.register_forward_hook(lambda m, a, o: calls.append(1))
    extra = r.forward_kwargs()
    policy.train()
    rows = range(len(r.texts))
    new = rollout_logps(policy, r, rows)  # the packed forward GRPO's update runs
    _, ent = token_forward(policy, r.input_ids, r.attention_mask, r.labels, extra, entropy=True)
    with torch.no_grad(), policy.disable_adapter():
        ref = rollout_logps(policy, r, rows)
    hook.remove()
    assert calls == []
    assert torch.equal(new.detach(), r.old_logps)
    assert torch.equal(ref, r.old_logps)  # LoRA B = 0 and lm_head copy = base at init
    mask = r.response_mask
    assert (ent[~mask] == 0).all() and (ent[mask] > 0).all()
    assert (ent[mask] <= math.log(unwrap(policy).config.get_text_config().vocab_size) + 1e-4).all()

    out = POLICY_LOSSES[loss].fn(new, r.old_logps, ref, mask, adv, kl_coef=0.04, entropy=ent)
    m = out.means()
    assert m["ratio_mean"] == pytest.approx(1.0) and m["clip_frac"] == 0.0 and m["kl"] == 0.0
    assert m["entropy"] == pytest.approx(float(ent[mask].mean()), rel=1e-6)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    (out.loss / out.count).backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_" in n)
    assert not any(f".{vp}." in n for n in grads)
    opt.step()
    opt.zero_grad()

    with torch.no_grad():
        moved = rollout_logps(policy, r, rows)
    assert not torch.equal(moved, r.old_logps)
    probe = make_probe(built.processor, built.family)
    result = apply_update(rollout_model, make_update(policy, probe, version=1), probe)
    assert result.ok and result.max_abs_diff == 0.0
    # the synced rollout model now reproduces the trainer's log-probs on the rollout batch too
    with torch.no_grad():
        synced = rollout_logps(rollout_model, r, rows)
    torch.testing.assert_close(synced, moved, rtol=0, atol=1e-6)
