"""Shared-prefix packing: one sequence [prefix, chosen, rejected] per preference pair.

Chosen and rejected share the prompt and the image, so the prompt (image tokens included) is
computed once per pair instead of twice. Pair i becomes one row of length P + Lc + Lr:

    tokens     p_0 .. p_{P-1} | c_0 .. c_{Lc-1}  | r_0 .. r_{Lr-1}
    positions  0   .. P-1     | P   .. P+Lc-1    | P   .. P+Lr-1      (rejected restarts after the prefix)

with a 4D attention mask [B, 1, T, T]: causal, padding keys masked, and rejected queries never
see chosen keys. Every token then sees exactly what it sees in its own unshared sequence, with the
same position ids, so its hidden states (and log-probs) are those of the unshared path. Log-probs:
c_0 and r_0 are both predicted from the last prefix position P-1; c_j (j > 0) from the position
before it; r_j (j > 0) from the position before it in the rejected block.

The shared prefix P of a pair is the longest run of identical, unscored leading tokens of its
chosen and rejected sequences (the prompt, as `ChatEncoder.pair_example` builds it).

What differs per family comes from the family (`vlalign/models/families/`): the positions of
the chosen and rejected sequences (`Family.position_ids`: 1-D for Llama-style LMs, Qwen's M-RoPE
[3, B, T] from the model's own `get_rope_index`), spliced the same way; and the mask the LM takes
(`Family.packed_attention_mask`: an additive float tensor, or Gemma 3's pair of full and
sliding-window masks with bidirectional attention inside each image). Transformers passes dense
masks unchanged to the `sdpa` and `eager` attention implementations; flash-attention and
flex-attention take no dense 4D mask and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vlalign.errors import VlalignError
from vlalign.logprobs import SequenceLogprobs, token_logprobs_from_logits
from vlalign.models.families import Family, family_of
from vlalign.models.families.base import (
    DENSE_MASK_ATTENTION,
    additive,
    attention_implementation,
)
from vlalign.models.inputs import IGNORE_INDEX
from vlalign.models.packed_forward import packed_logits
from vlalign.models.pair_inputs import (
    PIXEL_KEYS,
    PairOptions,
    encode_images,
    image_inputs,
    token_type_inputs,
)
from vlalign.models.unwrap import unwrap

CHOSEN, REJECTED = 1, 2


@dataclass
class PackedPairs:
    """B pairs packed into B rows of length T = max(P + Lc + Lr).

    input_ids [B, T] (pad_id after the row's end); position_ids [B, T], or [3, B, T] for M-RoPE;
    allowed [B, T, T] bool (query, key) visibility; labels [B, T]: the label of every chosen token
    and of every rejected token but the first, at its own position, -100 elsewhere; side [B, T]:
    1 on chosen tokens, 2 on rejected tokens, 0 elsewhere; prefix_lens [B]; first_rejected [B]:
    the label of r_0 (-100 when the rejected response is empty); token_types [B, T] (the prefix's
    modality ids, 0 on responses) under the model's kwarg `token_type_key`, when the batch
    carries them (Qwen2-VL mm_token_type_ids, Gemma 3 token_type_ids).
    """

    input_ids: Tensor
    position_ids: Tensor
    allowed: Tensor
    labels: Tensor
    side: Tensor
    prefix_lens: Tensor
    first_rejected: Tensor
    token_types: Tensor | None = None
    token_type_key: str | None = None

    def additive_mask(self, dtype: torch.dtype) -> Tensor:
        """[B, 1, T, T] float mask: 0 where a query may attend a key, dtype's min elsewhere."""
        return additive(self.allowed, dtype)


def shared_prefix_lens(batch: dict) -> Tensor:
    """[B] length of each pair's shared prefix: identical, unscored leading tokens of both sides."""
    c_ids, r_ids = batch["chosen_input_ids"], batch["rejected_input_ids"]
    c_lab, r_lab = batch["chosen_labels"], batch["rejected_labels"]
    n = min(c_ids.shape[1], r_ids.shape[1])
    same = (
        (c_ids[:, :n] == r_ids[:, :n])
        & (c_lab[:, :n] == IGNORE_INDEX)
        & (r_lab[:, :n] == IGNORE_INDEX)
        & batch["chosen_attention_mask"][:, :n].bool()
        & batch["rejected_attention_mask"][:, :n].bool()
    )
    # length of the leading run of True: index of the first False (n when none)
    lens = torch.where(same.all(dim=1), n, (~same).int().argmax(dim=1))
    keys = batch.get("keys") or [str(i) for i in range(len(lens))]
    for i, p in enumerate(lens.tolist()):
        if p < 1:
            raise VlalignError(
                f"packed prefix: pair {keys[i]!r} shares no leading prompt token between chosen and "
                "rejected; it cannot be packed (use the unshared pair forward)"
            )
    return lens


def _family(model: torch.nn.Module) -> Family:
    return family_of(unwrap(model)) or Family()


def _side_positions(model: torch.nn.Module, batch: dict, side: str) -> Tensor:
    """Position ids [B, T] (1-D RoPE) or [3, B, T] (M-RoPE) of one side's unshared sequences."""
    tt = token_type_inputs(batch, f"{side}_")
    return _family(model).position_ids(
        unwrap(model),
        batch[f"{side}_input_ids"],
        batch[f"{side}_attention_mask"],
        image_inputs(batch),
        next(iter(tt.values()), None),
    )


def pack_pairs(model: torch.nn.Module, batch: dict, pad_id: int) -> PackedPairs:
    """Build the packed rows of a pair batch (see the module docstring for the layout)."""
    P = shared_prefix_lens(batch)
    Lc = batch["chosen_attention_mask"].sum(dim=1) - P
    Lr = batch["rejected_attention_mask"].sum(dim=1) - P
    B = P.shape[0]
    T = int((P + Lc + Lr).max())
    dev = batch["chosen_input_ids"].device
    pos_c = _side_positions(model, batch, "chosen")
    pos_r = _side_positions(model, batch, "rejected")
    mrope = pos_c.dim() == 3
    ids = torch.full((B, T), pad_id, dtype=torch.long, device=dev)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long, device=dev)
    side = torch.zeros((B, T), dtype=torch.long, device=dev)
    pos = torch.zeros((3, B, T) if mrope else (B, T), dtype=torch.long, device=dev)
    tt_key, mm = next(iter(token_type_inputs(batch, "chosen_").items()), (None, None))
    mm_out = torch.zeros((B, T), dtype=mm.dtype, device=dev) if mm is not None else None
    first_rej = torch.full((B,), IGNORE_INDEX, dtype=torch.long, device=dev)
    for i in range(B):
        p, lc, lr = int(P[i]), int(Lc[i]), int(Lr[i])
        c_end, r_end = p + lc, p + lc + lr
        ids[i, :c_end] = batch["chosen_input_ids"][i, :c_end]
        ids[i, c_end:r_end] = batch["rejected_input_ids"][i, p : p + lr]
        labels[i, p:c_end] = batch["chosen_labels"][i, p:c_end]
        if lr > 0:
            first_rej[i] = batch["rejected_labels"][i, p]
            labels[i, c_end + 1 : r_end] = batch["rejected_labels"][i, p + 1 : p + lr]
        side[i, p:c_end] = CHOSEN
        side[i, c_end:r_end] = REJECTED
        if mrope:
            pos[:, i, :c_end] = pos_c[:, i, :c_end]
            pos[:, i, c_end:r_end] = pos_r[:, i, p : p + lr]
        else:
            pos[i, :c_end] = pos_c[i, :c_end]
            pos[i, c_end:r_end] = pos_r[i, p : p + lr]
        if mm_out is not None:
            mm_out[i, :p] = mm[i, :p]
    valid = torch.arange(T, device=dev)[None, :] < (P + Lc + Lr)[:, None]  # [B, T]
    causal = torch.ones((T, T), dtype=torch.bool, device=dev).tril()
    # rejected queries never see chosen keys; padding keys are never seen
    cross = (side == REJECTED)[:, :, None] & (side == CHOSEN)[:, None, :]
    allowed = causal[None] & valid[:, None, :] & ~cross
    return PackedPairs(ids, pos, allowed, labels, side, P, first_rej, mm_out, tt_key)


def _check_attention(model: torch.nn.Module) -> None:
    impl = attention_implementation(unwrap(model))
    if impl not in DENSE_MASK_ATTENTION:
        raise VlalignError(
            f"packed prefix needs a dense 4D attention mask, which attention implementation "
            f"{impl!r} does not take; load the model with attn_implementation in {DENSE_MASK_ATTENTION}"
        )


def packed_pair_forward(
    model: torch.nn.Module,
    batch: dict,
    pad_id: int,
    opts: PairOptions,
    features: BaseModelOutputWithPooling | None = None,
) -> tuple[SequenceLogprobs, SequenceLogprobs]:
    """Chosen and rejected response log-probs [B] each from ONE packed forward of B rows.

    Same signature and results as `vlalign.methods.forward.pair_forward` (`opts.concatenate` is
    moot: both responses are in one row). The vision tower runs once per pair: each row carries
    its pair's image once. `features`: precomputed image features of the B pairs, reused as is.
    """
    _check_attention(model)
    packed = pack_pairs(model, batch, pad_id)
    images = image_inputs(batch)
    extra = {k: v for k, v in images.items() if k not in PIXEL_KEYS}
    if features is None and opts.share_vision and images:
        features = encode_images(model, images)
    if features is not None:
        extra["mm_encoder_outputs"] = {"image": features}
    else:
        extra.update({k: v for k, v in images.items() if k in PIXEL_KEYS})
    if packed.token_types is not None:
        extra[packed.token_type_key] = packed.token_types
    start = int(packed.prefix_lens.min()) - 1 if opts.keep_only_response else 0
    logits = packed_logits(model, packed, start, extra)  # [B, T - start, V]
    token_lp = token_logprobs_from_logits(logits, packed.labels[:, start:], opts.chunk_size)
    side = packed.side[:, start:]
    scored = packed.labels[:, start:] != IGNORE_INDEX
    c_sum = (token_lp * (side == CHOSEN)).sum(dim=1)
    r_sum = (token_lp * (side == REJECTED)).sum(dim=1)
    c_n = (scored & (side == CHOSEN)).sum(dim=1)
    r_n = (scored & (side == REJECTED)).sum(dim=1)
    # r_0 is predicted from the last prefix position, not from the position before it
    rows = torch.arange(logits.shape[0], device=logits.device)
    has_first = packed.first_rejected != IGNORE_INDEX
    last_prefix = logits[rows, packed.prefix_lens - 1 - start].float()  # [B, V]
    first_lp = torch.log_softmax(last_prefix, dim=-1).gather(
        1, packed.first_rejected.clamp(min=0)[:, None]
    )[:, 0]
    r_sum = r_sum + first_lp * has_first
    r_n = r_n + has_first.long()
    return (
        SequenceLogprobs(c_sum, c_sum / c_n.clamp(min=1), c_n),
        SequenceLogprobs(r_sum, r_sum / r_n.clamp(min=1), r_n),
    )


def packed_tokens(batch: dict) -> int:
    """Tokens the packed rows hold (prefix once per pair + both responses), padding excluded."""
    P = shared_prefix_lens(batch)
    n_c = batch["chosen_attention_mask"].sum()
    n_r = batch["rejected_attention_mask"].sum()
    return int(n_c + n_r - P.sum())
