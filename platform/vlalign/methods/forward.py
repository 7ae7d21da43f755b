"""Model forwards shared by the methods: response log-probs, the pair forward, vision sharing.

Three optimizations live here, each switchable so `bench/dpo_step.py` shows what it buys:
- only the response positions get logits (`logits_to_keep` from the first scored position), and
  their log-probs are computed in chunks over the vocabulary (`vlalign.logprobs`);
- chosen and rejected run through ONE forward as a [2B, T] batch;
- the vision tower runs once per pair: its features (transformers' `mm_encoder_outputs`) are
  repeated for chosen and rejected, and reused by the reference when the vision path is frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vlalign.logprobs import SequenceLogprobs, sequence_logprobs
from vlalign.models.inputs import IGNORE_INDEX, TOKEN_TYPE_KEYS
from vlalign.models.pair_inputs import (
    PIXEL_KEYS,
    PairOptions,
    encode_images,
    image_inputs,
    repeat_features,
    repeat_images,
    token_type_inputs,
)


def _first_scored(labels: Tensor) -> int:
    scored = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    return int(scored[0]) if len(scored) else labels.shape[1] - 1


def sequence_forward(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    extra: dict,
    chunk_size: int,
    keep_only_response: bool = True,
) -> SequenceLogprobs:
    """Summed/mean response log-probs [B] of sequences input_ids [B, T].

    Logits are computed only from the position before the first scored label on (all rows), so
    the prompt and image tokens never reach the LM head.
    """
    start = max(0, _first_scored(labels) - 1) if keep_only_response else 0
    keep = torch.arange(start, input_ids.shape[1], device=input_ids.device) if start else 0
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        logits_to_keep=keep,
        use_cache=False,
        **extra,
    )
    return sequence_logprobs(out.logits, labels[:, start:], chunk_size)


def _pad_to(x: Tensor, length: int, value: int) -> Tensor:
    return F.pad(x, (0, length - x.shape[1]), value=value)


def stack_pairs(batch: dict, pad_id: int) -> dict[str, Tensor]:
    """chosen_* [B, Tc] and rejected_* [B, Tr] -> input_ids/attention_mask/labels [2B, T]
    (and the per-token modality ids [2B, T] when the batch has them)."""
    T = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    out = {}
    for key, pad in (
        ("input_ids", pad_id),
        ("attention_mask", 0),
        ("labels", IGNORE_INDEX),
        *((k, 0) for k in TOKEN_TYPE_KEYS),
    ):
        c, r = batch.get(f"chosen_{key}"), batch.get(f"rejected_{key}")
        if c is None:
            continue
        out[key] = torch.cat([_pad_to(c, T, pad), _pad_to(r, T, pad)], dim=0)
    return out


def stacked_pair_inputs(
    batch: dict, pad_id: int, features: BaseModelOutputWithPooling | None
) -> tuple[dict[str, Tensor], dict]:
    """Chosen + rejected as one [2B, T] batch and the model kwargs that carry its images.

    With `features` (the B pairs' image features) each image serves its two rows through
    `mm_encoder_outputs`; without, the image tensors are repeated (the vision tower runs twice).
    Returns (input_ids/attention_mask/labels [2B, T], extra forward kwargs).
    """
    images = image_inputs(batch)
    seq = stack_pairs(batch, pad_id)
    extra = repeat_images({k: v for k, v in images.items() if k not in PIXEL_KEYS}, 2)
    for k in TOKEN_TYPE_KEYS:
        if k in seq:
            extra[k] = seq.pop(k)
    if features is not None:
        extra["mm_encoder_outputs"] = {"image": repeat_features(features, 2)}
    else:
        extra.update(repeat_images(images, 2))
    return seq, extra


def pair_forward(
    model: torch.nn.Module,
    batch: dict,
    pad_id: int,
    opts: PairOptions,
    features: BaseModelOutputWithPooling | None = None,
) -> tuple[SequenceLogprobs, SequenceLogprobs]:
    """Log-probs of chosen and rejected responses [B] each, sharing the image per pair.

    `features`: precomputed image features of the B pairs (vision once per pair); when None and
    opts.share_vision, they are computed here once.
    """
    if opts.pack_prefix:  # the shared prompt + image computed once per pair
        from vlalign.methods.packing import packed_pair_forward

        return packed_pair_forward(model, batch, pad_id, opts, features)
    images = image_inputs(batch)
    lm_image_keys = {k: v for k, v in images.items() if k not in PIXEL_KEYS}
    if opts.share_vision and images and features is None:
        features = encode_images(model, images)
    if not opts.concatenate:
        results = []
        for side in ("chosen", "rejected"):
            extra = {**lm_image_keys, **token_type_inputs(batch, f"{side}_")}
            if opts.share_vision and features is not None:
                extra["mm_encoder_outputs"] = {"image": features}
            else:
                extra.update(images)
            results.append(
                sequence_forward(
                    model,
                    batch[f"{side}_input_ids"],
                    batch[f"{side}_attention_mask"],
                    batch[f"{side}_labels"],
                    extra,
                    opts.chunk_size,
                    opts.keep_only_response,
                )
            )
        return results[0], results[1]
    seq, extra = stacked_pair_inputs(batch, pad_id, features if opts.share_vision else None)
    lp = sequence_forward(
        model,
        seq["input_ids"],
        seq["attention_mask"],
        seq["labels"],
        extra,
        opts.chunk_size,
        opts.keep_only_response,
    )
    B = batch["chosen_input_ids"].shape[0]
    return (
        SequenceLogprobs(*(t[:B] for t in lp)),
        SequenceLogprobs(*(t[B:] for t in lp)),
    )
