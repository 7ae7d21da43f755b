"""Group packing: one row [prompt, response_1, ..., response_k] per prompt of a rollout.

A GRPO rollout holds n responses per prompt, and the prompt (image tokens included: 82-274
tokens for the tiny models, ~1k for a 7B VLM) is most of every row. The unshared forward
recomputes it n times; packed, the prompt of each group runs once and the k responses follow:

    tokens     p_0 .. p_{P-1} | a_0 .. a_{L1-1} | b_0 .. b_{L2-1} | ...
    positions  0   .. P-1     | P   .. P+L1-1   | P   .. P+L2-1   | ...   (each restarts after P)

with a 4D attention mask [G, 1, T, T]: causal, padding keys hidden, and a response's queries see
the prompt and their own response only. Every token then sees exactly what it sees in its own
unshared row, with the same position ids, so its log-prob (and its gradient, through the shared
prompt states) is that of the unshared forward. The first token of every response is predicted
from the last prompt position P-1; the others from the position before them in their block.

It generalizes `vlalign.methods.packing` (two responses per pair) to k per group, and reuses what
the families provide for it: `Family.position_ids` (1-D, or Qwen's M-RoPE [3, B, T] from the
model's own `get_rope_index`) on the unshared rows, spliced block by block, and
`Family.packed_attention_mask`. It needs an attention implementation that takes a dense 4D mask
(`DENSE_MASK_ATTENTION`); `can_pack` says whether a model does.

Rows of a rollout are right-padded [prompt, response, padding]; a row's prompt length is its
length minus its response length. Rows of one group must carry the same prompt tokens (checked).

Cost. The linear layers see P + sum(L_i) tokens per group instead of n P + sum(L_i); attention
runs over the whole packed row with a dense [T, T] mask (T = P + sum(L_i)), so it costs T^2
against sum((P + L_i)^2) unpacked, and the mask itself is G T^2 elements. Packing wins where
prompts (images) are long against the responses (measured on CPU: bench/README "The prompt once
per group"); with long responses and a large n the quadratic term can eat the gain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vlalign.errors import VlalignError
from vlalign.logprobs import logprobs_at
from vlalign.models.families import Family
from vlalign.models.families.base import DENSE_MASK_ATTENTION, attention_implementation
from vlalign.models.packed_forward import packed_logits
from vlalign.models.unwrap import unwrap


def _logits_start(prefix_lens: Tensor) -> int:
    """The first packed position whose logits are needed: the last prompt position."""
    return int(prefix_lens.min()) - 1


def can_pack(model: torch.nn.Module) -> bool:
    """Whether the model's attention takes the dense 4D mask packed rows need."""
    return attention_implementation(unwrap(model)) in DENSE_MASK_ATTENTION


def groups_of(prompt_index: Sequence[int]) -> list[list[int]]:
    """Positions of rows by prompt, groups in order of first appearance, rows in order.

    prompt_index: the prompt of each of M rows -> G lists of positions into those M rows.
    """
    groups: dict[int, list[int]] = {}
    for m, p in enumerate(prompt_index):
        groups.setdefault(int(p), []).append(m)
    return list(groups.values())


@dataclass
class PackedGroups:
    """G packed rows of length T = max(P_g + sum of the group's response lengths).

    input_ids [G, T] (pad after the row's end); position_ids [G, T] or [3, G, T] (M-RoPE);
    allowed [G, T, T] bool (query, key) visibility; token_types [G, T] or None (the prompt's
    modality ids, 0 on responses); prefix_lens [G]. Scored tokens, K of them in all: src [K]
    the packed position predicting each (row g's position t is g * T + t), targets [K] the token
    ids, out_rows / out_cols [K] where each goes in the [M, T_rows] label-aligned result.
    """

    input_ids: Tensor
    position_ids: Tensor
    allowed: Tensor
    token_types: Tensor | None
    prefix_lens: Tensor
    src: Tensor
    targets: Tensor
    out_rows: Tensor
    out_cols: Tensor


def pack_groups(
    family: Family,
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_lengths: Tensor,
    groups: list[list[int]],
    pad_id: int,
    row_images: dict[str, Tensor] | None = None,
    token_types: Tensor | None = None,
) -> PackedGroups:
    """Pack M right-padded rows (input_ids, attention_mask [M, T_rows]; response_lengths [M])
    into one row per group (`groups_of`). row_images: the rows' LM-side image tensors (Qwen's
    image_grid_thw, one entry per image of each row, in row order) and token_types [M, T_rows]:
    what the family's positions need. `model`: the transformers model (no wrappers)."""
    dev = input_ids.device
    lengths = attention_mask.sum(dim=1)
    prompt_lens = lengths - response_lengths.to(lengths.device)
    pos_rows = family.position_ids(model, input_ids, attention_mask, row_images or {}, token_types)
    mrope = pos_rows.dim() == 3
    G = len(groups)
    totals = [
        int(prompt_lens[ms[0]]) + int(sum(int(response_lengths[m]) for m in ms)) for ms in groups
    ]
    T = max(totals)
    ids = torch.full((G, T), pad_id, dtype=torch.long, device=dev)
    pos = torch.zeros((3, G, T) if mrope else (G, T), dtype=torch.long, device=dev)
    block = torch.full((G, T), -1, dtype=torch.long, device=dev)  # 0 prompt, j>0 response j
    tt = None if token_types is None else torch.zeros((G, T), dtype=token_types.dtype, device=dev)
    src, targets, out_rows, out_cols = [], [], [], []
    for g, ms in enumerate(groups):
        lead = ms[0]
        P = int(prompt_lens[lead])
        if P < 1:
            raise VlalignError(f"group packing: row {lead} has no prompt token")
        for m in ms[1:]:
            if int(prompt_lens[m]) != P or not torch.equal(input_ids[m, :P], input_ids[lead, :P]):
                raise VlalignError(
                    f"group packing: rows {lead} and {m} of one group have different prompts"
                )
        ids[g, :P] = input_ids[lead, :P]
        block[g, :P] = 0
        if mrope:
            pos[:, g, :P] = pos_rows[:, lead, :P]
        else:
            pos[g, :P] = pos_rows[lead, :P]
        if tt is not None:
            tt[g, :P] = token_types[lead, :P]
        off = P
        for j, m in enumerate(ms, start=1):
            L = int(response_lengths[m])
            ids[g, off : off + L] = input_ids[m, P : P + L]
            block[g, off : off + L] = j
            if mrope:
                pos[:, g, off : off + L] = pos_rows[:, m, P : P + L]
            else:
                pos[g, off : off + L] = pos_rows[m, P : P + L]
            here = torch.arange(off, off + L, device=dev)
            before = here - 1
            before[0] = P - 1  # the first response token is predicted from the prompt's end
            src.append(g * T + before)
            targets.append(input_ids[m, P : P + L])
            out_rows.append(torch.full((L,), m, dtype=torch.long, device=dev))
            out_cols.append(torch.arange(P, P + L, device=dev))
            off += L
    causal = torch.ones((T, T), dtype=torch.bool, device=dev).tril()
    q, k = block[:, :, None], block[:, None, :]
    allowed = causal[None] & (k >= 0) & ((k == 0) | (k == q))
    return PackedGroups(
        input_ids=ids,
        position_ids=pos,
        allowed=allowed,
        token_types=tt,
        prefix_lens=torch.tensor([int(prompt_lens[ms[0]]) for ms in groups], device=dev),
        src=torch.cat(src),
        targets=torch.cat(targets).long(),
        out_rows=torch.cat(out_rows),
        out_cols=torch.cat(out_cols),
    )


def packed_token_logps(
    model: torch.nn.Module,
    packed: PackedGroups,
    group_extra: dict,
    shape: tuple[int, int],
    chunk_size: int = 1024,
    token_type_key: str | None = None,
) -> Tensor:
    """Per-token log-probs [M, T_rows] float32, label-aligned like `token_forward`'s, from ONE
    forward of the G packed rows. group_extra: the model kwargs carrying each group's images
    (features or pixels, image_grid_thw: one group per packed row, in order); `shape`: (M,
    T_rows) of the unpacked rows. Differentiable when called with grad enabled."""
    G, T = packed.input_ids.shape
    start = _logits_start(packed.prefix_lens)
    extra = dict(group_extra)
    if packed.token_types is not None and token_type_key:
        extra[token_type_key] = packed.token_types
    logits = packed_logits(model, packed, start, extra)  # [G, T - start, V]
    kept = T - start
    rows2d = (packed.src // T) * kept + (packed.src % T) - start
    lp = logprobs_at(logits.reshape(G * kept, -1), rows2d, packed.targets, chunk_size)  # [K]
    result = torch.zeros(shape, dtype=torch.float32, device=lp.device)
    return result.index_put((packed.out_rows, packed.out_cols), lp)
