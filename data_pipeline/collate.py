"""Collation of examples (from `data_pipeline.transforms`) into SFT and preference batches.

Padding is on the right. B = examples, T = longest sequence in the batch.

`collate_sft(examples, pad_id)`:
    input_ids [B, T] (pad_id), attention_mask [B, T] (1 on tokens), labels [B, T] (-100 on
    prompt, image and pad), the per-token modality ids [B, T] when the examples carry them
    (Qwen2-VL mm_token_type_ids, Gemma 3 token_type_ids: 1 on image tokens), image tensors (below), prompt_lens [B], keys list[str], n_examples,
    n_truncated (response tokens cut), n_image_tokens (image tokens in the batch's sequences),
    n_tokens (non-pad tokens).

`collate_pairs(examples, pad_id)`:
    chosen_input_ids / chosen_attention_mask / chosen_labels [B, Tc], rejected_* [B, Tr],
    chosen_/rejected_ modality ids when present, the image tensors ONCE
    per pair (same layout as SFT with B pairs: chosen and rejected of pair i share image i, so
    the vision tower can run once per pair), prompt_lens [B], keys, n_examples, n_truncated,
    n_image_tokens and n_tokens over chosen + rejected; chosen_safety_sign / rejected_safety_sign
    [B] long (+1 unsafe, -1 safe, 0 unknown) when any example carries the per-response safety
    labels (record meta chosen_safe / rejected_safe, booleans).

Image tensors, batched the way each family's model takes them:
    LLaVA     pixel_values [sum images, 3, H, W] (= [B, 3, H, W] with one image per sample);
              Gemma 3 the same
    Qwen2-VL  pixel_values [sum patches, D] + image_grid_thw [sum images, 3] (= [B, 3])
    Idefics3  pixel_values [B, N, 3, H, W] + pixel_attention_mask [B, N, H, W] (N = the most
              sub-images of any sample; missing ones are zero images with a zero mask)
"""

from __future__ import annotations

import torch

from vlalign.errors import DataError
from vlalign.models.inputs import IGNORE_INDEX, TOKEN_TYPE_KEYS


def pad_right(seqs: list[torch.Tensor], value: int) -> torch.Tensor:
    """[B, T] from B 1-d tensors, right-padded with `value`."""
    return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=value)


def _stack_padded(parts: list[torch.Tensor | None], like: torch.Tensor) -> torch.Tensor:
    """Idefics3-style [1, N_i, ...] parts -> [B, max N, ...] with zeros for missing sub-images."""
    n = max((p.shape[1] for p in parts if p is not None), default=0)
    out = torch.zeros((len(parts), n, *like.shape[2:]), dtype=like.dtype)
    for i, p in enumerate(parts):
        if p is not None:
            out[i, : p.shape[1]] = p[0]
    return out


def collate_images(image_inputs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batch per-sample image tensors (see the module docstring for each family's layout)."""
    keys: list[str] = []
    for d in image_inputs:
        for k in d:
            if k not in keys:
                keys.append(k)
    if not keys:
        return {}
    out: dict[str, torch.Tensor] = {}
    pv = next(d["pixel_values"] for d in image_inputs if "pixel_values" in d)
    if pv.dim() == 5:  # Idefics3: one row per sample
        for k in keys:
            like = next(d[k] for d in image_inputs if k in d)
            out[k] = _stack_padded([d.get(k) for d in image_inputs], like)
        return out
    for k in keys:
        parts = [d[k] for d in image_inputs if k in d]
        try:
            out[k] = torch.cat(parts, dim=0)
        except RuntimeError as e:
            raise DataError(f"cannot batch image tensor {k!r}: {e}") from None
    return out


def _sequences(examples: list[dict], prefix: str, pad_id: int) -> dict[str, torch.Tensor]:
    ids = [ex[f"{prefix}input_ids"] for ex in examples]
    lengths = torch.tensor([len(s) for s in ids])
    input_ids = pad_right(ids, pad_id)
    out = {
        f"{prefix}input_ids": input_ids,
        f"{prefix}attention_mask": (
            torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]
        ).long(),
        f"{prefix}labels": pad_right([ex[f"{prefix}labels"] for ex in examples], IGNORE_INDEX),
    }
    for key in TOKEN_TYPE_KEYS:  # per-token modality ids, for families whose LM takes them
        tt = f"{prefix}{key}"
        if tt in examples[0]:
            out[tt] = pad_right([ex[tt] for ex in examples], 0)
    return out


def _counters(examples: list[dict], masks: list[torch.Tensor], n_seqs: int) -> dict:
    return {
        "keys": [ex.get("key", "") for ex in examples],
        "prompt_lens": torch.tensor([ex["prompt_len"] for ex in examples], dtype=torch.long),
        "n_examples": len(examples),
        "n_truncated": int(sum(ex.get("truncated", 0) for ex in examples)),
        "n_image_tokens": int(sum(ex.get("n_image_tokens", 0) for ex in examples)) * n_seqs,
        "n_tokens": int(sum(int(m.sum()) for m in masks)),
    }


def collate_sft(examples: list[dict], pad_id: int) -> dict:
    """SFT batch (shapes in the module docstring)."""
    if not examples:
        raise DataError("cannot collate an empty batch")
    out = _sequences(examples, "", pad_id)
    out.update(collate_images([ex["image_inputs"] for ex in examples]))
    out.update(_counters(examples, [out["attention_mask"]], 1))
    return out


def collate_pairs(examples: list[dict], pad_id: int) -> dict:
    """Preference batch: chosen_* and rejected_*, image tensors once per pair."""
    if not examples:
        raise DataError("cannot collate an empty batch")
    out = _sequences(examples, "chosen_", pad_id)
    out.update(_sequences(examples, "rejected_", pad_id))
    out.update(collate_images([ex["image_inputs"] for ex in examples]))
    masks = [out["chosen_attention_mask"], out["rejected_attention_mask"]]
    out.update(_counters(examples, masks, 2))
    if any("chosen_safe" in ex or "rejected_safe" in ex for ex in examples):
        for side in ("chosen", "rejected"):  # +1 unsafe, -1 safe, 0 unknown (Safe RLHF's s)
            out[f"{side}_safety_sign"] = torch.tensor(
                [{None: 0, True: -1, False: 1}[ex.get(f"{side}_safe")] for ex in examples],
                dtype=torch.long,
            )
    return out


def mismatched(examples: list[dict]) -> list[dict]:
    """KTO's mismatched examples: the prompt (and image) of example i with a completion of
    example (i + 1) % B: its chosen one for even i, its rejected one for odd i.

    Built from the encoded pairs (the prompt is an exact prefix of each sequence, tested per
    family), so nothing is re-tokenized. Returns per-example kl_input_ids / kl_labels [T_i]
    (and kl_mm_token_type_ids when the family uses them)."""
    out = []
    n = len(examples)
    for i, ex in enumerate(examples):
        other = examples[(i + 1) % n]
        side = "chosen_" if i % 2 == 0 else "rejected_"
        p, q = ex["prompt_len"], other["prompt_len"]
        completion = other[f"{side}input_ids"][q:]
        row = {
            "kl_input_ids": torch.cat([ex["chosen_input_ids"][:p], completion]),
            "kl_labels": torch.cat(
                [torch.full((p,), IGNORE_INDEX, dtype=torch.long), other[f"{side}labels"][q:]]
            ),
        }
        if "chosen_mm_token_type_ids" in ex:
            row["kl_mm_token_type_ids"] = torch.cat(
                [ex["chosen_mm_token_type_ids"][:p], torch.zeros_like(completion)]
            )
        out.append(row)
    return out


def collate_unpaired(examples: list[dict], pad_id: int) -> dict:
    """KTO batch from pairs: the preference batch (chosen rows are the desirable completions,
    rejected rows the undesirable ones; image once per pair) plus kl_input_ids /
    kl_attention_mask / kl_labels [B, Tk] (and kl_mm_token_type_ids) of `mismatched` rows, row i
    using image i. With one example the only completion is its own (no mismatch exists)."""
    out = collate_pairs(examples, pad_id)
    kl = _sequences(mismatched(examples), "kl_", pad_id)
    out.update(kl)
    out["n_tokens"] += int(kl["kl_attention_mask"].sum())
    return out


def collate_prompts(samples: list[dict], pad_id: int) -> dict:
    """RL prompt batch: keys, prompts, images (lists of PIL images) and meta of B samples, in
    order; eval records also give label and category (the policy generates the responses)."""
    if not samples:
        raise DataError("cannot collate an empty batch")
    return {
        "keys": [s["key"] for s in samples],
        "prompts": [s["prompt"] for s in samples],
        "images": [s["images"] for s in samples],
        "meta": [
            {**(s.get("meta") or {}), **{k: s[k] for k in ("label", "category") if s.get(k)}}
            for s in samples
        ],
        "n_examples": len(samples),
        "n_tokens": 0,
    }


COLLATE = {
    "sft": collate_sft,
    "preference": collate_pairs,
    "unpaired": collate_unpaired,
    "prompts": collate_prompts,
}
