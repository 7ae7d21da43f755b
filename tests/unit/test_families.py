"""Model families as modules: the catalog finds each one, and what is family-specific (Qwen2.5-VL's
LLM-named vision projections, Gemma 3's soft image tokens, bidirectional image attention and
sliding window) is really used. The equivalence tests that every built-in passes are
parametrized over the catalog in test_models, test_pair_forward, test_bench_packing,
test_data_collate and test_eval_generation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipeline.collate import collate_pairs
from data_pipeline.transforms import encode_one
from vlalign import catalog
from vlalign.config.schema import ModelConfig, PeftConfig
from vlalign.errors import VlalignError
from vlalign.methods.forward import PairOptions, pair_forward
from vlalign.methods.packing import packed_pair_forward
from vlalign.models import apply_peft, build
from vlalign.models.families import Family, family, family_of
from vlalign.models.inputs import ChatEncoder
from vlalign.models.lora import lm_prefix, lora_targets, vision_prefix

NAIVE = PairOptions(
    concatenate=False, share_vision=False, keep_only_response=False, chunk_size=10**6
)


@pytest.mark.parametrize("name", list(catalog.FAMILIES))
def test_every_catalog_family_resolves_to_its_module(name):
    fam = family(name)
    info = catalog.FAMILIES[name]
    assert isinstance(fam, Family) and fam.name == name
    assert type(fam).__module__ == info.module
    for key in fam.pixel_keys:
        assert key in fam.image_keys
    if info.builtin:
        assert catalog.builtin_models()[info.builtin] == name


def test_unknown_family_is_a_clear_error():
    with pytest.raises(VlalignError, match="unknown family 'nope'"):
        family("nope")


@pytest.mark.parametrize("name", list(catalog.builtin_models()))
def test_family_of_a_loaded_model_and_its_processor_pickles(name, model_cache):
    built = build(ModelConfig(name=name, cache_dir=model_cache))
    assert family_of(built.model).name == built.family
    peft_model = apply_peft(built.model, PeftConfig(r=2))
    assert family_of(peft_model).name == built.family
    # processors travel to dataloader / Ray workers by pickle (image-only ones included)
    again = pickle.loads(pickle.dumps(built.processor))
    assert type(again) is type(built.processor)


def test_qwen2_5_vl_vision_mlp_shares_lm_names_yet_lora_stays_on_the_lm(model_cache):
    built = build(ModelConfig(name="tiny-qwen2.5-vl", cache_dir=model_cache))
    vis, lm = vision_prefix(built.model), lm_prefix(built.model)
    vision_mlps = [
        n
        for n, _ in built.model.named_modules()
        if n.startswith(vis + ".") and n.endswith(("gate_proj", "up_proj", "down_proj"))
    ]
    assert vision_mlps  # a suffix match on gate/up/down_proj would adapt these
    targets = lora_targets(built.model, PeftConfig())
    assert targets and all(t.startswith(lm + ".") for t in targets)
    with_vision = lora_targets(built.model, PeftConfig(include_vision=True))
    assert set(vision_mlps) <= set(with_vision)  # only when the recipe asks for it


def _gemma3(model_cache):
    built = build(ModelConfig(name="tiny-gemma3", cache_dir=model_cache))
    return built, ChatEncoder(built.processor, built.family)


def test_gemma3_soft_image_tokens_and_token_type_ids(model_cache):
    built, enc = _gemma3(model_cache)
    tok = built.processor.tokenizer
    # the processor's image_token_id is <start_of_image>; image features fill the soft tokens
    assert built.processor.image_token_id == tok.boi_token_id != enc.image_token_id
    assert enc.image_token_id == tok.image_token_id == built.model.config.image_token_id
    img = Image.new("RGB", (32, 32), (10, 200, 10))
    ex = enc.sft_example([img], "What is shown?", "A green square.")
    ids = ex["input_ids"]
    n_img = built.model.config.mm_tokens_per_image
    assert int((ids == enc.image_token_id).sum()) == n_img
    assert int((ids == tok.boi_token_id).sum()) == int((ids == tok.eoi_token_id).sum()) == 1
    assert int((ids == tok.bos_token_id).sum()) == 1 and ids[0] == tok.bos_token_id
    text = enc.prompt_text("What is shown?", 1)
    proc = built.processor(
        text=[text], images=[img], return_tensors="pt", **enc.model_family.prompt_kwargs
    )
    p = ex["prompt_len"]
    assert torch.equal(proc["input_ids"][0], ids[:p])
    # the processor's token_type_ids are what the family computes for any sequence
    assert torch.equal(proc["token_type_ids"][0], enc.token_types(ids[:p])["token_type_ids"])


def _gemma3_pairs(built, enc):
    """Three pairs with noise images (distinct image tokens, so their attention pattern shows)."""
    rng = np.random.default_rng(0)
    examples = []
    for i in range(3):
        noise = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        sample = {
            "key": f"k{i}",
            "images": [Image.fromarray(noise)],
            "prompt": "What is shown" + " here?" * i,
            "chosen": "I'm sorry, I can't." * (3 - i),
            "rejected": "Sure! Here is how: first gather the parts" * (i + 1),
        }
        examples.append(encode_one(enc, sample, "preference"))
    return collate_pairs(examples, built.processor.tokenizer.pad_token_id)


def test_gemma3_packed_mask_is_the_models_own_mask_on_unshared_rows(model_cache):
    """On unshared right-padded rows, the family's packed mask (causal + same-image blocks, the
    sliding window by position) equals the masks Gemma 3 builds itself from token_type_ids, for
    its full-attention and sliding-window layers alike."""
    from transformers.models.gemma3 import modeling_gemma3 as mg

    built, enc = _gemma3(model_cache)
    model = built.model
    batch = _gemma3_pairs(built, enc)
    ids, mask = batch["rejected_input_ids"], batch["rejected_attention_mask"]
    tt = batch["rejected_token_type_ids"]
    text = model.config.get_text_config()
    assert int(mask.sum(1).max()) > 2 * text.sliding_window  # the window cuts these rows
    T = ids.shape[1]
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    allowed = torch.ones(T, T, dtype=torch.bool).tril()[None] & mask.bool()[:, None, :]
    ours = enc.model_family.packed_attention_mask(model, allowed, pos, tt, torch.float32)
    theirs = mg.create_masks_for_vision_model(
        config=text,
        inputs_embeds=model.get_input_embeddings()(ids),
        attention_mask=mask,
        cache=None,
        position_ids=pos,
        block_sequence_ids=mg.get_block_sequence_ids_for_mask(tt),
    )
    assert set(ours) == set(theirs) == {"full_attention", "sliding_attention"}
    valid = mask.bool()
    for kind in ours:
        mine = ours[kind][:, 0] == 0  # additive 0 = visible
        want = theirs[kind][:, 0]
        assert torch.equal(mine[valid], want[valid]), kind  # every real query row
    blocks = ours["full_attention"][:, 0] == 0
    img = tt.bool()
    assert blocks[img][:, :].any()  # image queries see later image keys (bidirectional)
    i = int(img[0].nonzero()[0])
    assert blocks[0, i, i + 1] and not blocks[0, i - 1, i]


def test_gemma3_token_type_ids_reach_every_forward(model_cache):
    """token_type_ids (bidirectional image attention) go to the model in the SFT, pair and
    packed forwards; the packed one passes Gemma 3 its per-layer-kind masks."""
    from vlalign.methods.forward import sequence_forward, token_type_inputs

    built, enc = _gemma3(model_cache)
    model = built.model
    batch = _gemma3_pairs(built, enc)
    pad = built.processor.tokenizer.pad_token_id
    seen: list[dict] = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    with torch.no_grad():
        pair_forward(model, batch, pad, PairOptions())
        pair_forward(model, batch, pad, NAIVE)
        packed_pair_forward(model, batch, pad, PairOptions())
        sequence_forward(
            model,
            batch["chosen_input_ids"],
            batch["chosen_attention_mask"],
            batch["chosen_labels"],
            {"pixel_values": batch["pixel_values"], **token_type_inputs(batch, "chosen_")},
            1024,
        )
    hook.remove()
    assert len(seen) == 5 and all(kw.get("token_type_ids") is not None for kw in seen)
    assert (seen[0]["token_type_ids"].sum(1) == built.model.config.mm_tokens_per_image).all()
    assert isinstance(seen[3]["attention_mask"], dict)  # packed: full + sliding masks
