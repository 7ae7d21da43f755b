"""Built-in tiny VLMs: build, cache round trip, forward + backward with images, LoRA policy, inputs."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlalign.catalog import builtin_models
from vlalign.config.schema import ModelConfig, PeftConfig
from vlalign.models import apply_peft, build, lm_prefix
from vlalign.models.inputs import IGNORE_INDEX, ChatEncoder
from vlalign.models.lora import lora_targets, trainable_summary, vision_prefix

FAMILIES = builtin_models()  # every built-in tiny model -> its family, from the catalog


def image(color=(200, 10, 10)) -> Image.Image:
    return Image.new("RGB", (32, 32), color)


def model_inputs(built, enc: ChatEncoder, response: str = "I can't help with that.") -> dict:
    ex = enc.sft_example([image()], "What is shown in this image?", response)
    batch = {"input_ids": ex["input_ids"][None], "labels": ex["labels"][None]}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch.update(ex["image_inputs"])
    batch.update(enc.token_types(batch["input_ids"]))  # Qwen M-RoPE, Gemma 3 image attention
    return batch


@pytest.mark.parametrize("name", list(FAMILIES))
def test_tiny_model_builds_reloads_identically_and_trains(name, model_cache):
    cfg = ModelConfig(name=name, cache_dir=model_cache)
    a = build(cfg)
    b = build(cfg)  # second load comes from the materialized cache
    assert a.family == FAMILIES[name]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    enc = ChatEncoder(a.processor, a.family)
    out = a.model(**model_inputs(a, enc))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    vis = vision_prefix(a.model)
    grads = [p.grad for n, p in a.model.named_parameters() if not n.startswith(vis + ".")]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_different_seeds_give_different_weights(model_cache):
    a = build(ModelConfig(name="tiny-llava", seed=0, cache_dir=model_cache)).model
    b = build(ModelConfig(name="tiny-llava", seed=1, cache_dir=model_cache)).model
    assert not torch.equal(a.lm_head.weight, b.lm_head.weight)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_prompt_is_exact_prefix_and_labels_mask_prompt_and_images(name, model_cache):
    built = build(ModelConfig(name=name, cache_dir=model_cache))
    enc = ChatEncoder(built.processor, built.family)
    prompt, response = "What should I do with this?", "Sure! Here is how: first gather the parts."
    ex = enc.sft_example([image()], prompt, response)
    # Tokenizing the whole conversation at once gives the same ids as prompt ++ response.
    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
        {"role": "assistant", "content": [{"type": "text", "text": response}]},
    ]
    full_text = built.processor.apply_chat_template(msgs, tokenize=False)
    fam = enc.model_family
    imgs = fam.processor_images([[image()]])
    full = built.processor(text=[full_text], images=imgs, return_tensors="pt", **fam.prompt_kwargs)
    full = full["input_ids"][0]
    assert full.tolist() == ex["input_ids"].tolist()
    p = ex["prompt_len"]
    assert (ex["labels"][:p] == IGNORE_INDEX).all()
    assert (ex["labels"][ex["input_ids"] == enc.image_token_id] == IGNORE_INDEX).all()
    assert (ex["input_ids"] == enc.image_token_id).sum() > 0
    resp = ex["labels"][p:]
    assert (resp != IGNORE_INDEX).all()
    decoded = built.processor.tokenizer.decode(resp, skip_special_tokens=True)
    assert response in decoded


def test_truncation_cuts_response_tail_never_image_tokens(model_cache):
    built = build(ModelConfig(name="tiny-llava", cache_dir=model_cache))
    enc = ChatEncoder(built.processor, built.family, max_length=40)
    ex = enc.sft_example(
        [image()], "What is shown?", "one two three four five six seven eight nine ten " * 3
    )
    assert len(ex["input_ids"]) == 40 and ex["truncated"] > 0
    assert (ex["input_ids"] == enc.image_token_id).sum() == 16
    short = ChatEncoder(built.processor, built.family, max_length=16)
    with pytest.raises(Exception, match="image tokens are never truncated"):
        short.sft_example([image()], "What is shown?", "ok")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_lora_policy_trains_only_lm_projections(name, model_cache):
    built = build(ModelConfig(name=name, cache_dir=model_cache))
    lm = lm_prefix(built.model)
    targets = lora_targets(built.model, PeftConfig())
    assert targets and all(t.startswith(lm + ".") for t in targets)
    model = apply_peft(built.model, PeftConfig(r=4))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    vis = vision_prefix(built.model)
    assert not any(vis in n for n in trainable)
    # Training changes only the named parameters.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    enc = ChatEncoder(built.processor, built.family)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        model(**model_inputs(built, enc)).loss.backward()
        opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and changed <= set(trainable)
    assert any("lora_B" in n for n in changed)


def test_lora_options_projector_vision_modules_to_save_and_full(model_cache):
    built = build(ModelConfig(name="tiny-llava", cache_dir=model_cache))
    targets = lora_targets(built.model, PeftConfig(include_projector=True, include_vision=True))
    assert any("multi_modal_projector" in t for t in targets)
    assert any("vision_tower" in t for t in targets)
    m = apply_peft(built.model, PeftConfig(modules_to_save=["lm_head", "norm"]))
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert any("lm_head" in n and "modules_to_save" in n for n in trainable)
    assert any(n.endswith("language_model.norm.modules_to_save.default.weight") for n in trainable)
    assert not any("layernorm" in n for n in trainable)
    full = build(ModelConfig(name="tiny-llava", cache_dir=model_cache)).model
    full = apply_peft(full, PeftConfig(mode="full"))
    n_train, n_total = trainable_summary(full)
    vis = vision_prefix(full)
    n_vis = sum(p.numel() for n, p in full.named_parameters() if n.startswith(vis + "."))
    assert n_train == n_total - n_vis


def test_unknown_target_module_is_a_clear_error(model_cache):
    built = build(ModelConfig(name="tiny-llava", cache_dir=model_cache))
    with pytest.raises(Exception, match="peft.target_modules"):
        apply_peft(built.model, PeftConfig(target_modules=["nope_proj"]))
