"""Model forwards shared by the methods: response log-probs, the pair forward, vision sharing.

Three optimizations live here, each switchable so `bench/dpo_step.py` shows what it buys:
- only the response positions get logits (`logits_to_keep` from the first scored position), and
  their log-probs are computed in chunks over the vocabulary (`vlalign.logprobs`);
- chosen and rejected run through ONE forward as a [2B, T] batch;
- the vision tower runs once per pair: its features (transformers' `mm_encoder_outputs`) are
  repeated for chosen and rejected, and reused by the reference when the vision path is frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vlalign.logprobs import SequenceLogprobs, sequence_logprobs
from vlalign.models.families import all_families
from vlalign.models.inputs import IGNORE_INDEX, TOKEN_TYPE_KEYS

# Batch keys that carry images, per image (or per patch, for Qwen2-VL's pixel_values): every
# family's `image_keys` (a batch holds one family's).
IMAGE_KEYS = tuple(dict.fromkeys(k for f in all_families() for k in f.image_keys))
# The keys only the vision encoder consumes; the others (image_grid_thw) the LM needs as well.
PIXEL_KEYS = tuple(dict.fromkeys(k for f in all_families() for k in f.pixel_keys))


def hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under PEFT / DeepSpeed wrappers."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        else:
            return model


def image_inputs(batch: dict) -> dict[str, Tensor]:
    """The image tensors of a batch (pixel_values and friends), once per sample or pair."""
    return {k: batch[k] for k in IMAGE_KEYS if k in batch and batch[k] is not None}


def token_type_inputs(batch: dict, prefix: str = "") -> dict[str, Tensor]:
    """The per-token modality ids [B, T] of a batch's `prefix` sequences, under the model's
    kwarg name (Qwen2-VL mm_token_type_ids, Gemma 3 token_type_ids); {} for other families."""
    return {k: batch[prefix + k] for k in TOKEN_TYPE_KEYS if batch.get(prefix + k) is not None}


def repeat_images(images: dict[str, Tensor], n: int) -> dict[str, Tensor]:
    """Each image tensor repeated n times along its per-image dim 0 (naive pair path)."""
    return {k: torch.cat([v] * n, dim=0) for k, v in images.items()}


def encode_images(model: torch.nn.Module, images: dict[str, Tensor]) -> BaseModelOutputWithPooling:
    """Run the vision tower + projector once. pooler_output: per-image features."""
    base = hf_model(model)
    kwargs = {k: v for k, v in images.items() if k in IMAGE_KEYS}
    return base.get_image_features(**kwargs, return_dict=True)


def repeat_features(feats: BaseModelOutputWithPooling, n: int) -> BaseModelOutputWithPooling:
    """Features of B images -> features for n*B sequences (image i serves rows i, B+i, ...)."""
    po = feats.pooler_output
    if isinstance(po, (list, tuple)):
        po = tuple(po) * n
    else:
        po = torch.cat([po] * n, dim=0)
    return BaseModelOutputWithPooling(pooler_output=po)


def vision_is_trainable(model: torch.nn.Module) -> bool:
    """True when any vision-tower or projector parameter trains (features then need grad)."""
    from vlalign.models.lora import projector_prefix, vision_prefix

    base = hf_model(model)
    prefixes = [p for p in (vision_prefix(base), projector_prefix(base)) if p]
    return any(
        p.requires_grad
        for name, p in base.named_parameters()
        if any(name.startswith(x + ".") for x in prefixes)
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


@dataclass
class PairOptions:
    """Switches of the pair forward (all on by default; the bench turns each off)."""

    concatenate: bool = True  # chosen + rejected in one [2B, T] forward
    share_vision: bool = True  # vision tower once per pair
    chunk_size: int = 1024  # tokens per log-prob chunk
    keep_only_response: bool = True  # logits only for response positions
    pack_prefix: bool = False  # one row [prompt, chosen, rejected] per pair (methods/packing.py)


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
