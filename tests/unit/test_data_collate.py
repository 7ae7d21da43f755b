"""Transforms and collation on tiny-llava / tiny-qwen2-vl / tiny-idefics3 examples: shapes, label
masks, truncation, batched == per-sample encoding, and the batch runs through the model."""

from __future__ import annotations

import pytest
import torch
from data_support import encoder_for

from data_pipeline.collate import collate_pairs, collate_sft
from data_pipeline.reader import iter_samples
from data_pipeline.skips import SkipCounter
from data_pipeline.synth import synthesize
from data_pipeline.transforms import encode_batch, encode_one, make_batch_transform, make_transform
from vlalign.catalog import builtin_models
from vlalign.errors import DataError
from vlalign.models.inputs import IGNORE_INDEX, TOKEN_TYPE_KEYS


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    out = tmp_path_factory.mktemp("collate") / "ds"
    synthesize(out, pairs=6, seed=1, eval_pairs=2)
    s = list(iter_samples(str(out), "train"))
    s[1] = {**s[1], "images": s[1]["images"] + [s[2]["images"][0].resize((40, 24))]}  # 2 images
    return s


def _check_sequences(batch: dict, prefix: str, examples: list[dict], enc, pad_id: int) -> None:
    ids, mask, labels = (batch[f"{prefix}{k}"] for k in ("input_ids", "attention_mask", "labels"))
    assert ids.shape == mask.shape == labels.shape and ids.shape[0] == len(examples)
    for i, ex in enumerate(examples):
        n, p = len(ex[f"{prefix}input_ids"]), ex["prompt_len"]
        assert mask[i, :n].all() and not mask[i, n:].any()
        assert (ids[i, n:] == pad_id).all()
        assert (labels[i, :p] == IGNORE_INDEX).all()  # prompt (with every image token)
        assert (labels[i, n:] == IGNORE_INDEX).all()  # padding
        assert torch.equal(labels[i, p:n], ids[i, p:n])  # the response is learned
        assert (labels[i][ids[i] == enc.image_token_id] == IGNORE_INDEX).all()
        assert (ids[i, :p] == enc.image_token_id).sum() == ex["n_image_tokens"] > 0
        for key in TOKEN_TYPE_KEYS:
            if f"{prefix}{key}" in batch:
                assert torch.equal(
                    batch[f"{prefix}{key}"][i, :n], (ids[i, :n] == enc.image_token_id).long()
                )


@pytest.mark.parametrize("name", list(builtin_models()))
def test_collate_shapes_and_masks(samples, model_cache, name):
    enc = encoder_for(name, model_cache)
    pad = enc.tokenizer.pad_token_id
    one = [s for s in samples if len(s["images"]) == 1][:4]
    sft = [make_transform(enc, "sft")(s) for s in one]
    pairs = [make_transform(enc, "preference")(s) for s in one]
    b = collate_sft(sft, pad)
    _check_sequences(b, "", sft, enc, pad)
    assert torch.equal(
        sft[0]["labels"][sft[0]["prompt_len"] :], enc.encode_response(one[0]["chosen"])
    )
    p = collate_pairs(pairs, pad)
    _check_sequences(p, "chosen_", pairs, enc, pad)
    _check_sequences(p, "rejected_", pairs, enc, pad)
    assert p["keys"] == [s["key"] for s in one] and p["prompt_lens"].tolist() == [
        e["prompt_len"] for e in pairs
    ]
    assert p["n_tokens"] == int(
        p["chosen_attention_mask"].sum() + p["rejected_attention_mask"].sum()
    )
    assert b["n_tokens"] == int(b["attention_mask"].sum()) and b["n_truncated"] == 0
    assert p["n_image_tokens"] == 2 * sum(e["n_image_tokens"] for e in pairs)
    fam = enc.model_family  # one image tensor per pair, shared by chosen and rejected
    if "image_grid_thw" in fam.image_keys:  # Qwen: patches of all images + their grids
        assert p["image_grid_thw"].shape == (4, 3)
        assert p["pixel_values"].shape[0] == int(p["image_grid_thw"].prod(-1).sum())
    elif "pixel_attention_mask" in fam.image_keys:  # Idefics3: [B, sub-images, 3, H, W]
        assert p["pixel_values"].shape[:3] == (4, 1, 3)
    else:  # LLaVA, Gemma 3: [images, 3, H, W]
        assert p["pixel_values"].shape == (4, 3, 32, 32)
    tt = fam.token_type_key
    assert {k for k in TOKEN_TYPE_KEYS if k in b} == ({tt} if tt else set())
    assert not tt or (f"chosen_{tt}" in p and f"rejected_{tt}" in p)
    assert torch.equal(p["pixel_values"], b["pixel_values"])


@pytest.mark.parametrize("name", list(builtin_models()))
def test_batched_encoding_equals_per_sample_and_runs_in_the_model(
    samples, model_cache, name, monkeypatch
):
    from vlalign.config.schema import ModelConfig
    from vlalign.models.builder import build

    enc = encoder_for(name, model_cache)
    mixed = [*samples[:4], {**samples[4], "images": []}]  # 2-image and text-only samples too
    for kind in ("sft", "preference"):
        single = [encode_one(enc, s, kind) for s in mixed]
        batched = encode_batch(enc, mixed, kind)
        for a, b in zip(single, batched, strict=True):
            assert a.keys() == b.keys()
            for k, v in a.items():
                if isinstance(v, torch.Tensor):
                    assert torch.equal(v, b[k]), k
                elif k == "image_inputs":
                    assert v.keys() == b[k].keys()
                    assert all(torch.equal(v[x], b[k][x]) for x in v), k
                else:
                    assert v == b[k], k
    model = build(ModelConfig(name=name, cache_dir=model_cache)).model.eval()
    from data_pipeline import transforms

    one_by_one = []
    monkeypatch.setattr(transforms, "_safe_one", lambda *a: one_by_one.append(a))
    examples = encode_batch(enc, samples[:4], "preference")  # 1- and 2-image samples
    assert one_by_one == []  # one processor call: the family's image layout splits back
    batch = collate_pairs(examples, enc.tokenizer.pad_token_id)
    if name == "tiny-idefics3":
        assert batch["pixel_values"].shape[:2] == (4, 2) and batch["pixel_attention_mask"].shape[
            :2
        ] == (4, 2)
    inputs = {
        k.removeprefix("chosen_"): v
        for k, v in batch.items()
        if isinstance(v, torch.Tensor) and not k.startswith("rejected_") and k != "prompt_lens"
    }
    with torch.no_grad():
        out = model(**inputs)
    assert torch.isfinite(out.loss) and out.logits.shape[:2] == batch["chosen_input_ids"].shape


def test_truncation_cuts_the_response_tail_never_image_tokens(samples, model_cache):
    base = encoder_for("tiny-llava", model_cache)
    s = samples[0]
    p = len(base.encode_prompt(s["images"], s["prompt"]).input_ids)
    enc = encoder_for("tiny-llava", model_cache, max_length=p + 3)
    ex = make_transform(enc, "preference")(s)
    full_c = len(base.encode_response(s["chosen"]))
    full_r = len(base.encode_response(s["rejected"]))
    assert len(ex["chosen_input_ids"]) == p + 3 and ex["truncated"] == (full_c - 3) + (full_r - 3)
    assert (ex["chosen_input_ids"][:p] == enc.image_token_id).sum() == 16  # all image tokens kept
    assert collate_pairs([ex], 0)["n_truncated"] == ex["truncated"]
    tight = encoder_for("tiny-llava", model_cache, max_length=p - 1)
    with pytest.raises(DataError, match=rf"key '{s['key']}': prompt is {p} tokens"):
        make_transform(tight, "sft")(s)
    skips = SkipCounter()
    assert make_batch_transform(tight, "sft", on_error="skip", skips=skips)(samples[:3]) == []
    assert skips.count == 3 and all("max_length" in r for r in skips.reasons)
    with pytest.raises(DataError, match="needs chosen and rejected"):
        make_transform(base, "preference")({**s, "chosen": None})
