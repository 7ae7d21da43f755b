"""Shared prefill (`GenerationEngine._shared_prefill`, `method.rollout.share_prefill`): each
prompt's image and text run through the LM once, its n samples continue from copies of that KV
cache, and the rollout is the same as with one prefill per sample: same sampled tokens, same old
log-probs, on every family's tiny twin (LLaVA's 1-D positions, Qwen2-VL's and Qwen2.5-VL's M-RoPE,
whose rope deltas the family repeats, Idefics3's image splitting, Gemma 3's bidirectional image
attention), with the LoRA adapters merged for generation or not."""

from __future__ import annotations

import pytest
import torch
from test_rollout_group_packing import prompts

from vlalign.config.schema import ModelConfig, PeftConfig
from vlalign.models import apply_peft, build
from vlalign.models.unwrap import unwrap
from vlalign.rollout.engine import GenerationEngine, SamplingSettings


def _policy(name: str, model_cache):
    built = build(ModelConfig(name=name, cache_dir=model_cache))
    policy = apply_peft(built.model, PeftConfig(r=4, alpha=8), seed=0)
    with torch.no_grad():  # trained-looking adapters: merged and unmerged paths differ
        for pname, p in policy.named_parameters():
            if "lora_B" in pname:
                p.copy_(torch.randn_like(p) * 0.05)
    return built, policy


def _rollout(built, policy, share: bool, merge: bool = True, n: int = 3):
    settings = SamplingSettings(n=n, max_new_tokens=8, share_prefill=share, merge_adapters=merge)
    engine = GenerationEngine(policy, built.processor, built.family, settings)
    return engine.rollout(prompts(), step=0)


FAMILIES = ["tiny-llava", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-idefics3", "tiny-gemma3"]


@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("name", FAMILIES)
def test_shared_prefill_gives_the_same_rollout(name: str, merge: bool, model_cache) -> None:
    built, policy = _policy(name, model_cache)
    shared = _rollout(built, policy, share=True, merge=merge)
    each = _rollout(built, policy, share=False, merge=merge)
    assert shared.texts == each.texts
    assert torch.equal(shared.input_ids, each.input_ids)
    assert torch.equal(shared.labels, each.labels)
    torch.testing.assert_close(shared.old_logps, each.old_logps, rtol=0, atol=1e-5)
    assert len(set(shared.texts)) > 3  # sampled, not one repeated answer


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
def test_the_lm_prefills_each_prompt_once(name: str, model_cache) -> None:
    """Token rows entering the LM's embedding: shared, the P prompts once ([3, L-1]) then one
    token per sample per step ([9, 1]); unshared, the 9 rows' whole prompts ([9, L])."""
    built, policy = _policy(name, model_cache)
    embed = unwrap(policy).get_input_embeddings()
    shapes: list[tuple[int, int]] = []
    hook = embed.register_forward_hook(lambda m, a, o: shapes.append(tuple(a[0].shape)))
    try:
        for share in (True, False):
            shapes.clear()
            ro = _rollout(built, policy, share=share)
            L = int((ro.attention_mask.sum(1) - ro.response_lengths).max())  # padded prompt
            generate = shapes[:-1]  # the last call is the packed old-log-prob forward
            if share:
                assert generate[0] == (3, L - 1)
                assert all(s == (9, 1) for s in generate[1:]), generate
            else:
                assert generate[0] == (9, L)
                assert all(s == (9, 1) for s in generate[1:]), generate
    finally:
        hook.remove()


def test_a_prompt_ending_in_an_image_token_is_not_shared(model_cache) -> None:
    built, policy = _policy("tiny-llava", model_cache)
    engine = GenerationEngine(policy, built.processor, built.family, SamplingSettings(n=2))
    batch = engine.prompt_batch(prompts())
    assert engine._can_share_prefill(batch)
    batch["input_ids"][1, -1] = engine.encoder.image_token_id
    assert not engine._can_share_prefill(batch)
