"""Shared-prefix packing ([prefix, chosen, rejected] in one row, 4D mask) gives the unshared
pair forward's log-probs and gradients, for every family, with sdpa and eager attention."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from data_pipeline.collate import collate_pairs
from data_pipeline.transforms import encode_one
from vlalign.catalog import builtin_models
from vlalign.config.schema import ModelConfig, PeftConfig
from vlalign.errors import VlalignError
from vlalign.methods import packing
from vlalign.methods.forward import PairOptions, pair_forward
from vlalign.methods.packing import pack_pairs, packed_pair_forward, packed_tokens
from vlalign.models import apply_peft, build
from vlalign.models.inputs import ChatEncoder

NAIVE = PairOptions(
    concatenate=False, share_vision=False, keep_only_response=False, chunk_size=10**6
)


def _batch(built, enc: ChatEncoder) -> dict:
    """Three pairs with different prompt and response lengths (ragged prefixes and rows)."""
    examples = []
    for i in range(3):
        img = Image.new("RGB", (32, 32), (i * 60, 10, 200 - i * 50))
        sample = {
            "key": f"k{i}",
            "images": [img],
            "prompt": "What is shown" + " here?" * i,
            "chosen": "I'm sorry, I can't." * (3 - i),
            "rejected": "Sure! Here is how: first gather the parts" * (i + 1),
        }
        examples.append(encode_one(enc, sample, "preference"))  # as the data pipeline does
    return collate_pairs(examples, built.processor.tokenizer.pad_token_id)


def _policy(name: str, cache: str, attn: str = "sdpa"):
    built = build(ModelConfig(name=name, cache_dir=cache))
    built.model.set_attn_implementation(attn)
    model = apply_peft(built.model, PeftConfig())
    torch.manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_B" in n:  # a non-trivial adapter: the policy differs from the base
            p.data.normal_(0, 0.1)
    enc = ChatEncoder(built.processor, built.family)
    return built, model, _batch(built, enc)


def _grads(model, fn) -> dict[str, torch.Tensor]:
    model.zero_grad()
    c, r = fn()
    (c.sum.sum() - 0.5 * r.sum.sum()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(builtin_models()))
def test_packed_equals_unshared(name, model_cache):
    built, model, batch = _policy(name, model_cache)
    pad = built.processor.tokenizer.pad_token_id
    ref_c, ref_r = pair_forward(model, batch, pad, NAIVE)
    for opts in (PairOptions(), PairOptions(keep_only_response=False, chunk_size=3)):
        c, r = packed_pair_forward(model, batch, pad, opts)
        torch.testing.assert_close(c.sum, ref_c.sum, rtol=1e-6, atol=5e-5)
        torch.testing.assert_close(r.sum, ref_r.sum, rtol=1e-6, atol=5e-5)
        torch.testing.assert_close(c.mean, ref_c.mean, rtol=1e-6, atol=5e-6)
        assert torch.equal(c.n_tokens, ref_c.n_tokens)
        assert torch.equal(r.n_tokens, ref_r.n_tokens)
    fast = _grads(model, lambda: packed_pair_forward(model, batch, pad, PairOptions()))
    slow = _grads(model, lambda: pair_forward(model, batch, pad, NAIVE))
    assert fast.keys() == slow.keys() and fast
    for n in fast:
        torch.testing.assert_close(fast[n], slow[n], rtol=1e-4, atol=1e-5)


def test_packed_eager_attention_and_shared_features(model_cache):
    """The float 4D mask also passes through eager attention; precomputed features are reused."""
    built, model, batch = _policy("tiny-llava", model_cache, attn="eager")
    assert built.model.config.get_text_config()._attn_implementation == "eager"
    pad = built.processor.tokenizer.pad_token_id
    ref_c, ref_r = pair_forward(model, batch, pad, NAIVE)
    from vlalign.models.pair_inputs import encode_images, image_inputs

    feats = encode_images(model, image_inputs(batch))
    c, r = packed_pair_forward(model, batch, pad, PairOptions(), feats)
    torch.testing.assert_close(c.sum, ref_c.sum, rtol=1e-6, atol=5e-5)
    torch.testing.assert_close(r.sum, ref_r.sum, rtol=1e-6, atol=5e-5)


def test_mask_keeps_responses_apart(model_cache, monkeypatch):
    """Without the chosen/rejected separation the rejected log-probs change: the mask matters."""
    built, model, batch = _policy("tiny-llava", model_cache)
    pad = built.processor.tokenizer.pad_token_id
    ref_c, ref_r = pair_forward(model, batch, pad, NAIVE)
    real = packing.pack_pairs

    def leaky(*a, **k):
        packed = real(*a, **k)
        T = packed.allowed.shape[-1]
        packed.allowed = torch.ones(T, T, dtype=torch.bool).tril().expand_as(packed.allowed)
        return packed

    monkeypatch.setattr(packing, "pack_pairs", leaky)
    c, r = packed_pair_forward(model, batch, pad, PairOptions())
    torch.testing.assert_close(c.sum, ref_c.sum, rtol=1e-6, atol=5e-5)  # chosen sees no rejected
    assert (r.sum - ref_r.sum).abs().max() > 1e-2


def test_pack_layout(model_cache):
    built, model, batch = _policy("tiny-llava", model_cache)
    pad = built.processor.tokenizer.pad_token_id
    packed = pack_pairs(model, batch, pad)
    n_c = batch["chosen_attention_mask"].sum(dim=1)
    n_r = batch["rejected_attention_mask"].sum(dim=1)
    P = packed.prefix_lens
    assert torch.equal(P, batch["prompt_lens"])  # the prompt is the shared prefix
    assert packed.input_ids.shape[1] == int((n_c + n_r - P).max())
    assert packed_tokens(batch) == int((n_c + n_r - P).sum())
    i, p = 2, int(P[2])
    lc = int(n_c[2]) - p
    # rejected positions restart after the prefix; its first token sees the prefix, not chosen
    assert packed.position_ids[i, p + lc] == p
    assert packed.allowed[i, p + lc, :p].all() and not packed.allowed[i, p + lc, p : p + lc].any()
    assert packed.allowed[i, p + lc, p + lc]


def test_unpackable_inputs_are_refused(model_cache):
    built, model, batch = _policy("tiny-llava", model_cache)
    pad = built.processor.tokenizer.pad_token_id
    bad = dict(batch)
    bad["rejected_input_ids"] = batch["rejected_input_ids"].clone()
    bad["rejected_input_ids"][1, 0] += 1  # pair k1 shares no leading token
    with pytest.raises(VlalignError, match="k1"):
        packed_pair_forward(model, bad, pad, PairOptions())
    model.base_model.model.config._attn_implementation = "flash_attention_2"
    model.base_model.model.config.get_text_config()._attn_implementation = "flash_attention_2"
    with pytest.raises(VlalignError, match="flash_attention_2"):
        packed_pair_forward(model, batch, pad, PairOptions())
