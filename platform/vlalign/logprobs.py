"""Response-token log-probabilities without ever holding [B, T, V] float32 at once.

Conventions (shared with `vlalign.models.inputs`):

- ``labels`` [B, T] are aligned with ``input_ids``; ``-100`` marks positions that are not scored
  (prompt, image tokens, padding). The logits at position t predict the token at position t + 1.
- Token log-probs come back aligned with the labels: ``out[b, t] = log p(labels[b, t] | tokens < t)``,
  read from the logits at position t - 1. ``out[:, 0]`` is always 0 (nothing predicts the first
  token, so ``labels[:, 0]`` is never scored) and every position whose label is -100 is 0.
- Results are float32 whatever the input dtype: each chunk is upcast on its own.

Why chunks. With V = 150k, B = 4 and T = 2048 the float32 log-softmax alone is 4.9 GB, and the
naive ``log_softmax(logits.float()).gather(...)`` keeps it (and its gradient) alive for backward.
Here only the positions whose target is scored are visited, ``chunk_size`` of them at a time
(chunks run over the flattened batch x sequence, so their size does not depend on B):

- `token_logprobs_from_logits`: a custom autograd function computes, per chunk, ``logsumexp`` of
  the upcast rows and the label's logit, and keeps only the [N] float32 logsumexp for backward.
  Backward rebuilds ``softmax = exp(logit - lse)`` chunk by chunk and writes
  ``grad * (onehot - softmax)`` into a gradient of the logits' own shape and dtype (which autograd
  needs anyway). Peak extra memory: a few [chunk_size, V] float32 buffers.
- `token_logprobs_from_hidden`: the LM head is applied per chunk (``hidden_chunk @ W.T + b``) inside
  ``torch.utils.checkpoint``, so a chunk's logits exist only while that chunk is computed, in
  forward and again when backward recomputes them; the [B, T, V] logits never exist at all. Only
  the chunk inputs (views of the [N, H] scored hidden rows) are kept for backward, and gradients
  flow to ``hidden``, ``weight`` and ``bias``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
DEFAULT_CHUNK_SIZE = 512


class SequenceLogprobs(NamedTuple):
    """Per-sequence response log-probs. sum, mean: [B] float32; n_tokens: [B] int64.

    ``mean = sum / max(n_tokens, 1)`` (a sequence with no scored token has sum = mean = 0).
    """

    sum: Tensor
    mean: Tensor
    n_tokens: Tensor


def _check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _scored_rows(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Flattened positions whose next token is scored, and those tokens.

    labels: [B, T] -> rows: [N] int64 indices into the flattened [B * T] positions (position p
    predicts ``labels.flatten()[p + 1]``), targets: [N] int64 token ids.
    """
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)
    rows = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    return rows, targets.index_select(0, rows).long()


def _label_aligned(values: Tensor, rows: Tensor, batch: int, seq: int) -> Tensor:
    """Scatter [N] per-position values to [B, T] aligned with the labels (see module docstring)."""
    flat = torch.zeros(batch * seq, dtype=values.dtype, device=values.device)
    by_position = flat.index_put((rows,), values).view(batch, seq)
    return F.pad(by_position[:, :-1], (1, 0))


class _ChunkedLabelLogprob(torch.autograd.Function):
    """log_softmax(logits2d[rows].float()).gather(targets), chunk by chunk, with a matching backward.

    logits2d: [R, V] any float dtype; rows, targets: [N] int64 -> [N] float32. A row may be
    listed more than once (group packing scores every response's first token from the same
    prompt position): backward accumulates the row's gradients.
    """

    @staticmethod
    def forward(ctx, logits2d: Tensor, rows: Tensor, targets: Tensor, chunk_size: int) -> Tensor:
        n = rows.numel()
        out = torch.empty(n, dtype=torch.float32, device=logits2d.device)
        lse = torch.empty(n, dtype=torch.float32, device=logits2d.device)
        for s in range(0, n, chunk_size):
            r, t = rows[s : s + chunk_size], targets[s : s + chunk_size]
            x = logits2d.index_select(0, r).float()  # [c, V] float32, the only big buffer
            chunk_lse = torch.logsumexp(x, dim=-1)
            out[s : s + chunk_size] = x.gather(-1, t.unsqueeze(-1)).squeeze(-1) - chunk_lse
            lse[s : s + chunk_size] = chunk_lse
            del x
        ctx.save_for_backward(logits2d, rows, targets, lse)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, None, None, None]:
        logits2d, rows, targets, lse = ctx.saved_tensors
        chunk_size = ctx.chunk_size
        grad = torch.zeros_like(logits2d)
        for s in range(0, rows.numel(), chunk_size):
            r, t = rows[s : s + chunk_size], targets[s : s + chunk_size]
            g = grad_out[s : s + chunk_size].float().unsqueeze(-1)  # [c, 1]
            x = logits2d.index_select(0, r).float()
            # d(x_t - lse)/dx = onehot(t) - softmax(x)
            gx = (x - lse[s : s + chunk_size].unsqueeze(-1)).exp_().mul_(-g)
            gx.scatter_add_(-1, t.unsqueeze(-1), g)
            grad.index_add_(0, r, gx.to(grad.dtype))
            del x, gx
        return grad, None, None, None


def token_logprobs_from_logits(
    logits: Tensor, labels: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Tensor:
    """Per-token log-probs of the labels. logits: [B, T, V]; labels: [B, T] -> [B, T] float32.

    Label-aligned (``out[:, t]`` scores ``labels[:, t]`` with ``logits[:, t-1]``); 0 where the
    label is -100 and at t = 0. At most ``chunk_size`` positions are upcast to float32 at a time,
    in forward and in backward. Differentiable w.r.t. ``logits``.
    """
    _check_chunk_size(chunk_size)
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be [B, T, V] and labels [B, T]; got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    b, t, v = logits.shape
    rows, targets = _scored_rows(labels)
    values = _ChunkedLabelLogprob.apply(logits.reshape(b * t, v), rows, targets, chunk_size)
    return _label_aligned(values, rows, b, t)


def logprobs_at(
    logits2d: Tensor, rows: Tensor, targets: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Tensor:
    """log p(targets[i] | logits2d[rows[i]]) -> [N] float32, chunk by chunk as above.

    logits2d: [R, V] (flattened positions); rows, targets: [N] int64. Rows may repeat.
    Differentiable w.r.t. ``logits2d``.
    """
    _check_chunk_size(chunk_size)
    return _ChunkedLabelLogprob.apply(logits2d, rows, targets, chunk_size)


def _head_chunk_logprobs(h: Tensor, weight: Tensor, bias: Tensor | None, t: Tensor) -> Tensor:
    """log p(t | h) for one chunk. h: [c, H]; weight: [V, H]; bias: [V] | None; t: [c] -> [c] f32."""
    x = F.linear(h, weight, bias).float()  # [c, V]
    return x.gather(-1, t.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(x, dim=-1)


def token_logprobs_from_hidden(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    bias: Tensor | None = None,
) -> Tensor:
    """Per-token log-probs through the LM head, chunk by chunk. -> [B, T] float32.

    hidden: [B, T, H] final hidden states (after the final norm); weight: [V, H] (lm_head.weight);
    bias: [V] or None; labels: [B, T]. Same alignment as `token_logprobs_from_logits`. Each chunk
    of ``chunk_size`` scored positions is run under ``torch.utils.checkpoint`` when gradients are
    needed, so neither forward nor backward holds more than one chunk's [chunk_size, V] logits.
    Gradients reach ``hidden``, ``weight`` and ``bias``.
    """
    _check_chunk_size(chunk_size)
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(
            f"hidden must be [B, T, H] and labels [B, T]; got {tuple(hidden.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must be [V, H] with H = {hidden.shape[-1]}; got {tuple(weight.shape)}"
        )
    b, t, h = hidden.shape
    rows, targets = _scored_rows(labels)
    scored = hidden.reshape(b * t, h).index_select(0, rows)  # [N, H]
    inputs = (hidden, weight) if bias is None else (hidden, weight, bias)
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in inputs)
    pieces = []
    for s in range(0, rows.numel(), chunk_size):
        args = (scored[s : s + chunk_size], weight, bias, targets[s : s + chunk_size])
        if needs_grad:
            pieces.append(checkpoint(_head_chunk_logprobs, *args, use_reentrant=False))
        else:
            pieces.append(_head_chunk_logprobs(*args))
    if pieces:
        values = torch.cat(pieces)
    else:
        # Nothing scored: all zeros, but keep the result attached to the graph (zero gradients)
        # so that a rank whose batch has no response token still joins the backward pass.
        values = hidden.new_zeros(0, dtype=torch.float32)
        if needs_grad:
            values = values + sum(x.sum() for x in inputs).float() * 0.0
    return _label_aligned(values, rows, b, t)


def _per_sequence(token_logps: Tensor, labels: Tensor) -> SequenceLogprobs:
    """token_logps: [B, T] label-aligned; labels: [B, T] -> SequenceLogprobs of [B] tensors."""
    scored = labels != IGNORE_INDEX
    scored[:, 0] = False
    n_tokens = scored.sum(dim=1)
    total = token_logps.sum(dim=1)
    return SequenceLogprobs(total, total / n_tokens.clamp(min=1), n_tokens)


def sequence_logprobs(
    logits: Tensor, labels: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> SequenceLogprobs:
    """Summed and mean response log-probs per sequence from logits [B, T, V] and labels [B, T]."""
    return _per_sequence(token_logprobs_from_logits(logits, labels, chunk_size), labels)


def sequence_logprobs_from_hidden(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    bias: Tensor | None = None,
) -> SequenceLogprobs:
    """Summed and mean response log-probs per sequence from hidden [B, T, H] and lm_head [V, H]."""
    token_logps = token_logprobs_from_hidden(hidden, weight, labels, chunk_size, bias)
    return _per_sequence(token_logps, labels)
