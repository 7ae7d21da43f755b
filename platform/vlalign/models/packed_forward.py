"""The forward of packed rows (several sequences sharing a prefix in one row, a dense mask).

Used by the DPO pair packing (`vlalign.methods.packing`) and the GRPO group packing
(`vlalign.rollout.group_packing`): both build rows, positions and a (query, key) visibility
matrix; this runs the model on them with the family's dense attention mask.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from vlalign.models.families import Family, family_of
from vlalign.models.unwrap import unwrap


def mask_dtype(model: torch.nn.Module, device_type: str) -> torch.dtype:
    """The dtype attention runs in: autocast's when active, else the embeddings'."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return unwrap(model).get_input_embeddings().weight.dtype


class PackedRows(Protocol):
    """What a packing builds: input_ids [B, T]; allowed [B, T, T] bool (query, key) visibility;
    position_ids [B, T] (or M-RoPE [3, B, T]); token_types [B, T] modality ids or None."""

    input_ids: Tensor
    allowed: Tensor
    position_ids: Tensor
    token_types: Tensor | None


def packed_logits(model: torch.nn.Module, packed: PackedRows, start: int, extra: dict) -> Tensor:
    """Logits [B, T - start, V] of packed rows, with the family's dense mask built from
    ``packed.allowed`` (it may read the token types) and the explicit positions; ``extra``: the
    images and other model kwargs. Differentiable when called with grad enabled."""
    input_ids, allowed = packed.input_ids, packed.allowed
    position_ids, token_types = packed.position_ids, packed.token_types
    dtype = mask_dtype(model, input_ids.device.type)
    family = family_of(unwrap(model)) or Family()
    mask = family.packed_attention_mask(unwrap(model), allowed, position_ids, token_types, dtype)
    T = input_ids.shape[1]
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=position_ids,
        logits_to_keep=torch.arange(start, T, device=input_ids.device) if start else 0,
        use_cache=False,
        **extra,
    )
    return out.logits
