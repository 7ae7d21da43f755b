"""Supervised fine-tuning: token cross-entropy over response tokens (prompt and images masked)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlalign.config.schema import Recipe
from vlalign.losses import resolve_loss
from vlalign.methods.base import StepOutput
from vlalign.methods.forward import image_inputs, sequence_forward, token_type_inputs


@dataclass
class State:
    model: torch.nn.Module
    chunk_size: int
    batch_kind: str = "sft"


def setup(recipe: Recipe, model: torch.nn.Module, pad_id: int, **_) -> State:
    """SFT needs only the policy. Batches: input_ids/attention_mask/labels [B, T] + images."""
    resolve_loss("sft", recipe.method.loss)
    return State(model=model, chunk_size=recipe.method.logprob_chunk)


def step(state: State, batch: dict) -> StepOutput:
    """Sum of response-token NLL over the micro-batch; count = response tokens."""
    extra = {**image_inputs(batch), **token_type_inputs(batch)}
    lp = sequence_forward(
        state.model,
        batch["input_ids"],
        batch["attention_mask"],
        batch["labels"],
        extra,
        state.chunk_size,
    )
    nll_sum = -lp.sum.sum()
    n = float(lp.n_tokens.sum())
    return StepOutput(loss_sum=nll_sum, count=n, sums={"nll": float(nll_sum.detach())})


def metrics(sums: dict[str, float], count: float) -> dict[str, float]:
    """loss = mean token NLL; perplexity."""
    nll = sums["nll"] / max(count, 1.0)
    return {"loss": nll, "ppl": float(torch.tensor(nll).exp())}
