"""What the pair forwards share: a batch's image tensors, the vision tower run once, PairOptions.

`vlalign.methods.forward` (the unshared and concatenated pair forwards) and
`vlalign.methods.packing` (the shared-prefix pair forward) both build on these.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vlalign.models.families import all_families
from vlalign.models.inputs import TOKEN_TYPE_KEYS
from vlalign.models.lora import projector_prefix, vision_prefix
from vlalign.models.unwrap import unwrap

# Batch keys that carry images, per image (or per patch, for Qwen2-VL's pixel_values): every
# family's `image_keys` (a batch holds one family's).
IMAGE_KEYS = tuple(dict.fromkeys(k for f in all_families() for k in f.image_keys))
# The keys only the vision encoder consumes; the others (image_grid_thw) the LM needs as well.
PIXEL_KEYS = tuple(dict.fromkeys(k for f in all_families() for k in f.pixel_keys))


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
    base = unwrap(model)
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
    base = unwrap(model)
    prefixes = [p for p in (vision_prefix(base), projector_prefix(base)) if p]
    return any(
        p.requires_grad
        for name, p in base.named_parameters()
        if any(name.startswith(x + ".") for x in prefixes)
    )


@dataclass
class PairOptions:
    """Switches of the pair forward (all on by default; the bench turns each off)."""

    concatenate: bool = True  # chosen + rejected in one [2B, T] forward
    share_vision: bool = True  # vision tower once per pair
    chunk_size: int = 1024  # tokens per log-prob chunk
    keep_only_response: bool = True  # logits only for response positions
    pack_prefix: bool = False  # one row [prompt, chosen, rejected] per pair (methods/packing.py)
