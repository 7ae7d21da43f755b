"""Generating with merged LoRA adapters: same samples, plain linears, the exact base restored."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlalign.config.schema import ModelConfig, PeftConfig
from vlalign.models import apply_peft, build
from vlalign.rollout.engine import GenerationEngine, SamplingSettings
from vlalign.rollout.merging import lora_layers, merged_adapters


def lora_model(dtype: torch.dtype = torch.float32, family: str = "tiny-llava"):
    built = build(ModelConfig(name=family))
    model = apply_peft(built.model, PeftConfig(include_projector=True), seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():  # trained adapters: B != 0, so merging changes W
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return built, model.to(dtype)


def base_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


def prompts() -> list[dict]:
    return [
        {"key": "a", "prompt": "What is this?", "images": [Image.new("RGB", (32, 32), (200, 9, 9))]},
        {"key": "b", "prompt": "How do I use it?", "images": [Image.new("RGB", (32, 32), (9, 9, 200))]},
    ]  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_base_weights_come_back_bit_identical(dtype) -> None:
    """W + BA - BA is not W in floating point (bf16 most of all): the context copies the saved
    base back, so after it every base weight is bit-identical and the adapters are live again."""
    _, model = lora_model(dtype)
    before = base_weights(model)
    layers = lora_layers(model)
    assert layers
    with merged_adapters(model) as n:
        assert n == len(layers)
        assert all(layer.merged for layer in layers)
        changed = [k for k, v in base_weights(model).items() if not torch.equal(v, before[k])]
        assert changed  # merged: the adapted base weights hold W + (alpha/r) B A
    assert not any(layer.merged for layer in layers)
    after = base_weights(model)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)


def test_merged_forward_equals_adapter_forward_and_skips_the_adapter_path() -> None:
    """Inside the context the model computes the same logits without running lora_A/lora_B."""
    _, model = lora_model()
    ids = torch.randint(5, 200, (2, 12))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    calls: list[int] = []
    hooks = [
        m.register_forward_hook(lambda *_: calls.append(1))
        for n, m in model.named_modules()
        if n.endswith("lora_A.default")
    ]
    try:
        with merged_adapters(model), torch.no_grad():
            got = model(input_ids=ids).logits
        assert calls == []
        with torch.no_grad():
            model(input_ids=ids)
        assert calls  # unmerged again: the adapter path runs
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_restored_after_an_exception_and_disabled_is_a_no_op() -> None:
    _, model = lora_model()
    before = base_weights(model)
    layers = lora_layers(model)
    with pytest.raises(RuntimeError, match="boom"), merged_adapters(model):
        assert all(layer.merged for layer in layers)
        raise RuntimeError("boom")
    assert layers and not any(layer.merged for layer in layers)
    assert all(torch.equal(base_weights(model)[k], v) for k, v in before.items())
    with merged_adapters(model, enabled=False) as n:
        assert n == 0 and not any(layer.merged for layer in layers)
    plain = build(ModelConfig(name="tiny-llava")).model
    with merged_adapters(plain) as n:
        assert n == 0


@pytest.mark.parametrize("family", ["tiny-llava", "tiny-qwen2-vl"])
def test_rollout_merged_samples_what_the_adapter_model_samples(family) -> None:
    """The engine with merge_adapters on and off: the same texts from the same seeds, the same
    old log-probs (computed on the unmerged model either way), the base untouched after."""
    built, model = lora_model(family=family)
    before = base_weights(model)
    outs = []
    for merge in (False, True):
        settings = SamplingSettings(n=3, max_new_tokens=8, merge_adapters=merge)
        eng = GenerationEngine(model, built.processor, built.family, settings)
        outs.append(eng.rollout(prompts(), step=3))
    assert outs[0].texts == outs[1].texts
    assert torch.equal(outs[0].input_ids, outs[1].input_ids)
    torch.testing.assert_close(outs[1].old_logps, outs[0].old_logps, rtol=0, atol=0)
    assert all(torch.equal(base_weights(model)[k], v) for k, v in before.items())


@pytest.mark.parametrize(
    ("zero_stage", "merge", "expected"), [(2, True, True), (3, True, False), (0, False, False)]
)
def test_grpo_merges_unless_zero3_or_switched_off(zero_stage, merge, expected) -> None:
    """method.rollout.merge_adapters reaches the engine; ZeRO-3's partitioned weights never merge."""
    from vlalign.config.schema import (
        EngineConfig,
        GrpoMethod,
        Recipe,
        RewardSpec,
        RolloutConfig,
        TrainConfig,
    )
    from vlalign.methods.base import Run
    from vlalign.methods.grpo import Grpo

    built, model = lora_model()
    cfg = GrpoMethod(
        rewards=[RewardSpec(name="refusal_rule")], rollout=RolloutConfig(merge_adapters=merge)
    )
    recipe = Recipe(
        method=cfg, train=TrainConfig(seed=0), engine=EngineConfig(zero_stage=zero_stage)
    )
    m = Grpo(cfg)
    run = Run(
        recipe=recipe,
        model=model,
        built=built,
        encoder=None,
        pad_id=built.processor.tokenizer.pad_token_id,
        one_epoch=lambda kind: iter(()),
        device=torch.device("cpu"),
    )
    m.prepare(run)
    assert m.generator.settings.merge_adapters is expected
