"""Chunked log-probs equal the naive full log-softmax, in forward and in gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlalign.logprobs import (
    IGNORE_INDEX,
    sequence_logprobs,
    sequence_logprobs_from_hidden,
    token_logprobs_from_hidden,
    token_logprobs_from_logits,
)

B, T, H, V = 3, 11, 8, 37
CHUNKS = [1, 4, 7, 33, 1000]  # 33 = B * T: one chunk; 4 and 7 do not divide the 24 scored rows


def _naive_token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, T, V], [B, T] -> [B, T]: full log_softmax in float32, gather, label-aligned."""
    logp = torch.log_softmax(logits.float(), dim=-1)[:, :-1]  # position t predicts t + 1
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    return F.pad(picked, (1, 0))


def _labels(generator: torch.Generator) -> torch.Tensor:
    """Prompt masked per row (like a chat encoder), right padding masked, last row all masked."""
    labels = torch.randint(0, V, (B, T), generator=generator)
    labels[0, :3] = IGNORE_INDEX  # prompt
    labels[1, :5] = IGNORE_INDEX
    labels[1, 9:] = IGNORE_INDEX  # padding
    labels[2, :] = IGNORE_INDEX  # nothing to score in this row
    labels[2, 4] = 5  # ...except one token in the middle
    return labels


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_logits_path_matches_naive_forward_and_grad(chunk: int, gen: torch.Generator) -> None:
    labels = _labels(gen)
    logits = torch.randn(B, T, V, generator=gen) * 3
    weights = torch.randn(B, T, generator=gen)  # a non-uniform upstream gradient

    x1 = logits.clone().requires_grad_(True)
    naive = _naive_token_logprobs(x1, labels)
    (naive * weights).sum().backward()

    x2 = logits.clone().requires_grad_(True)
    chunked = token_logprobs_from_logits(x2, labels, chunk_size=chunk)
    (chunked * weights).sum().backward()

    assert chunked.shape == (B, T) and chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, naive, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-6, rtol=1e-6)
    # masked positions are exactly 0 and receive no gradient through the last logit position
    assert torch.all(chunked[labels == IGNORE_INDEX] == 0) and torch.all(chunked[:, 0] == 0)
    assert torch.all(x2.grad[:, -1] == 0)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_hidden_path_matches_naive_forward_and_grads(
    chunk: int, with_bias: bool, gen: torch.Generator
) -> None:
    labels = _labels(gen)
    hidden = torch.randn(B, T, H, generator=gen)
    weight = torch.randn(V, H, generator=gen)
    bias = torch.randn(V, generator=gen) if with_bias else None
    weights = torch.randn(B, T, generator=gen)

    def leaves():
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        b = bias.clone().requires_grad_(True) if bias is not None else None
        return h, w, b

    h1, w1, b1 = leaves()
    naive = _naive_token_logprobs(F.linear(h1, w1, b1), labels)
    (naive * weights).sum().backward()

    h2, w2, b2 = leaves()
    chunked = token_logprobs_from_hidden(h2, w2, labels, chunk_size=chunk, bias=b2)
    (chunked * weights).sum().backward()

    torch.testing.assert_close(chunked, naive, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(h2.grad, h1.grad, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(w2.grad, w1.grad, atol=1e-6, rtol=1e-6)
    if with_bias:
        torch.testing.assert_close(b2.grad, b1.grad, atol=1e-6, rtol=1e-6)


def test_sequence_logprobs_sum_mean_count(gen: torch.Generator) -> None:
    labels = _labels(gen)
    logits = torch.randn(B, T, V, generator=gen)
    naive = _naive_token_logprobs(logits, labels)
    out = sequence_logprobs(logits, labels, chunk_size=5)
    # row 0 scores labels[0, 3:], row 1 labels[1, 5:9], row 2 only labels[2, 4]
    assert out.n_tokens.tolist() == [T - 3, 4, 1]
    torch.testing.assert_close(out.sum, naive.sum(1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.mean, naive.sum(1) / torch.tensor([T - 3.0, 4, 1]))


def test_sequence_logprobs_by_hand() -> None:
    """V = 2, all logits 0 except one: every scored token has p = 1/2, except the one whose
    logit for its label is ln 3, where p = 3 / (3 + 1) = 3/4.

    labels [-100, 0, 1, 1]: scored t = 1, 2, 3 read logits at 0, 1, 2.
    logits[0, 1, 1] = ln 3 -> t = 2 has log(3/4); t = 1, 3 have log(1/2).
    sum = 2 log(1/2) + log(3/4) = -1.386294 - 0.287682 = -1.673976; mean = sum / 3 = -0.557992.
    """
    logits = torch.zeros(1, 4, 2)
    logits[0, 1, 1] = math.log(3)
    labels = torch.tensor([[IGNORE_INDEX, 0, 1, 1]])
    out = sequence_logprobs(logits, labels, chunk_size=2)
    assert out.n_tokens.tolist() == [3]
    assert out.sum.item() == pytest.approx(-1.673976, abs=1e-6)
    assert out.mean.item() == pytest.approx(-0.557992, abs=1e-6)


def test_bf16_inputs_are_upcast_per_chunk(gen: torch.Generator) -> None:
    labels = _labels(gen)
    hidden = torch.randn(B, T, H, generator=gen).bfloat16()
    weight = torch.randn(V, H, generator=gen).bfloat16()
    # reference: the same bf16 logits, upcast whole, in float32
    ref = _naive_token_logprobs(F.linear(hidden, weight), labels)

    logits_bf16 = F.linear(hidden, weight).requires_grad_(True)
    from_logits = token_logprobs_from_logits(logits_bf16, labels, chunk_size=7)
    assert from_logits.dtype == torch.float32
    torch.testing.assert_close(from_logits, ref, atol=1e-5, rtol=1e-5)
    from_logits.sum().backward()
    assert logits_bf16.grad.dtype == torch.bfloat16

    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    from_hidden = token_logprobs_from_hidden(h, w, labels, chunk_size=7)
    torch.testing.assert_close(from_hidden, ref, atol=1e-5, rtol=1e-5)
    from_hidden.sum().backward()

    # against full float32 math the error is bf16 rounding of the logits only
    exact = _naive_token_logprobs(F.linear(hidden.float(), weight.float()), labels)
    torch.testing.assert_close(from_hidden, exact, atol=0.3, rtol=0.05)
    h32, w32 = hidden.float().requires_grad_(True), weight.float().requires_grad_(True)
    _naive_token_logprobs(F.linear(h32, w32), labels).sum().backward()
    torch.testing.assert_close(h.grad.float(), h32.grad, atol=0.3, rtol=0.05)
    torch.testing.assert_close(w.grad.float(), w32.grad, atol=0.3, rtol=0.05)


def test_no_grad_reference_pass_and_all_masked_batch(gen: torch.Generator) -> None:
    hidden = torch.randn(B, T, H, generator=gen, requires_grad=True)
    weight = torch.randn(V, H, generator=gen, requires_grad=True)
    labels = _labels(gen)
    with torch.no_grad():
        ref = sequence_logprobs_from_hidden(hidden, weight, labels, chunk_size=4)
    assert not ref.sum.requires_grad

    masked = torch.full((B, T), IGNORE_INDEX)
    out = sequence_logprobs_from_hidden(hidden, weight, masked, chunk_size=4)
    assert out.sum.tolist() == [0.0] * B and out.n_tokens.tolist() == [0] * B
    out.sum.sum().backward()  # still attached to the graph, with zero gradients
    assert torch.all(hidden.grad == 0) and torch.all(weight.grad == 0)


def test_bad_shapes_and_chunk_size_raise() -> None:
    logits, labels = torch.zeros(2, 5, 7), torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs_from_logits(logits, labels, chunk_size=0)
    with pytest.raises(ValueError, match=r"labels \[B, T\]"):
        token_logprobs_from_logits(logits, labels[:, :4])
    with pytest.raises(ValueError, match=r"weight must be \[V, H\]"):
        token_logprobs_from_hidden(torch.zeros(2, 5, 3), torch.zeros(7, 4), labels)
