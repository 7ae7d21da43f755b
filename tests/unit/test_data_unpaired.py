"""KTO batches: each pair split into a desirable and an undesirable completion, and mismatched
rows (prompt + image of one pair, a completion of another) equal to encoding them directly."""

from __future__ import annotations

import pytest
import torch
from data_support import encoder_for

from data_pipeline.collate import collate_unpaired
from data_pipeline.reader import iter_samples
from data_pipeline.synth import synthesize
from data_pipeline.transforms import make_transform


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    out = tmp_path_factory.mktemp("unpaired") / "ds"
    synthesize(out, pairs=6, seed=2, eval_pairs=2)
    return list(iter_samples(str(out), "train"))[:4]


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl", "tiny-idefics3"])
def test_mismatched_rows_equal_direct_encoding(samples, model_cache, name):
    enc = encoder_for(name, model_cache)
    pad = enc.tokenizer.pad_token_id
    examples = [make_transform(enc, "unpaired")(s) for s in samples]
    batch = collate_unpaired(examples, pad)
    B = len(samples)
    assert batch["chosen_input_ids"].shape[0] == batch["rejected_input_ids"].shape[0] == B
    assert batch["kl_input_ids"].shape[0] == B
    for i, s in enumerate(samples):
        other = samples[(i + 1) % B]
        completion = other["chosen"] if i % 2 == 0 else other["rejected"]
        assert completion != s["chosen"] and other["key"] != s["key"]
        direct = enc.sft_example(s["images"], s["prompt"], completion)
        n = int(batch["kl_attention_mask"][i].sum())
        assert torch.equal(batch["kl_input_ids"][i, :n], direct["input_ids"])
        assert torch.equal(batch["kl_labels"][i, :n], direct["labels"])
        assert not batch["kl_attention_mask"][i, n:].any()
        if "kl_mm_token_type_ids" in batch:
            ids = batch["kl_input_ids"][i, :n]
            assert torch.equal(
                batch["kl_mm_token_type_ids"][i, :n], (ids == enc.image_token_id).long()
            )
    kl_tokens = int(batch["kl_attention_mask"].sum())
    pair_tokens = int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())
    assert batch["n_tokens"] == pair_tokens + kl_tokens
