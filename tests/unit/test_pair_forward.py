"""The optimized pair forward (one [2B, T] forward, vision once per pair, response-only logits,
chunked log-probs) gives the naive path's log-probs and gradients, for every family."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from data_pipeline.collate import collate_pairs
from data_pipeline.transforms import encode_one
from vlalign.catalog import builtin_models
from vlalign.config.schema import ModelConfig, PeftConfig
from vlalign.methods.forward import PairOptions, pair_forward
from vlalign.models import apply_peft, build
from vlalign.models.inputs import ChatEncoder

NAIVE = PairOptions(
    concatenate=False, share_vision=False, keep_only_response=False, chunk_size=10**6
)


def pair_batch(built, enc: ChatEncoder) -> dict:
    examples = []
    for i in range(3):
        img = Image.new("RGB", (32, 32), (i * 60, 10, 200 - i * 50))
        sample = {
            "key": f"k{i}",
            "images": [img],
            "prompt": "What is shown" + "?" * i,
            "chosen": "I'm sorry, I can't.",
            "rejected": "Sure! Here is how: first gather the parts" * (i + 1),
        }
        examples.append(encode_one(enc, sample, "preference"))  # as the data pipeline does
    return collate_pairs(examples, built.processor.tokenizer.pad_token_id)


@pytest.mark.parametrize("name", list(builtin_models()))
def test_optimized_pair_forward_equals_naive(name, model_cache):
    built = build(ModelConfig(name=name, cache_dir=model_cache))
    enc = ChatEncoder(built.processor, built.family)
    model = apply_peft(built.model, PeftConfig())
    torch.manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_B" in n:  # a non-trivial adapter, so the policy differs from the base
            p.data.normal_(0, 0.1)
    batch = pair_batch(built, enc)
    pad = built.processor.tokenizer.pad_token_id
    ref_c, ref_r = pair_forward(model, batch, pad, NAIVE)
    for opts in (
        PairOptions(),
        PairOptions(share_vision=False),
        PairOptions(concatenate=False),
        PairOptions(chunk_size=3),
    ):
        c, r = pair_forward(model, batch, pad, opts)
        torch.testing.assert_close(c.sum, ref_c.sum, rtol=1e-6, atol=5e-5)
        torch.testing.assert_close(r.sum, ref_r.sum, rtol=1e-6, atol=5e-5)
        assert torch.equal(c.n_tokens, ref_c.n_tokens)

    def grads(opts):
        model.zero_grad()
        c, r = pair_forward(model, batch, pad, opts)
        (c.sum.sum() - 0.5 * r.sum.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast, slow = grads(PairOptions()), grads(NAIVE)
    assert fast.keys() == slow.keys() and fast
    for n in fast:
        torch.testing.assert_close(fast[n], slow[n], rtol=1e-4, atol=1e-5)


def test_vision_tower_runs_once_per_pair(model_cache):
    built = build(ModelConfig(name="tiny-llava", cache_dir=model_cache))
    enc = ChatEncoder(built.processor, built.family)
    model = apply_peft(built.model, PeftConfig())
    batch = pair_batch(built, enc)
    seen = []
    tower = built.model.model.vision_tower
    handle = tower.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    pad = built.processor.tokenizer.pad_token_id
    pair_forward(model, batch, pad, PairOptions())
    assert seen == [3]  # one call over the B = 3 images
    seen.clear()
    pair_forward(model, batch, pad, PairOptions(share_vision=False))
    assert seen == [6]  # naive: the image batch is repeated for chosen and rejected
    handle.remove()
