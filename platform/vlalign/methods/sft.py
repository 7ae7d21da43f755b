"""Supervised fine-tuning: token cross-entropy over response tokens (prompt and images masked)."""

from __future__ import annotations

import torch
from torch import nn

from vlalign.config.schema import SftMethod
from vlalign.losses import resolve_loss
from vlalign.methods.base import OfflineMethod, Run, StepOutput
from vlalign.methods.forward import sequence_forward
from vlalign.models.inputs import IGNORE_INDEX
from vlalign.models.pair_inputs import image_inputs, token_type_inputs


class Sft(OfflineMethod):
    """Batches: input_ids / attention_mask / labels [B, T] + the images of the B samples."""

    batch_kind = "sft"

    def __init__(self, cfg: SftMethod) -> None:
        self.cfg = cfg
        self.loss = resolve_loss("sft", cfg.loss)
        self.model: nn.Module | None = None

    def prepare(self, run: Run) -> nn.Module:
        """SFT trains the policy itself."""
        return run.model

    def setup(self, engine: nn.Module) -> None:
        self.model = engine

    def units(self, batch: dict) -> float:
        """Scored response tokens."""
        return float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())

    def step(self, batch: dict) -> StepOutput:
        """Sum of response-token NLL over the micro-batch; count = response tokens."""
        extra = {**image_inputs(batch), **token_type_inputs(batch)}
        lp = sequence_forward(
            self.model,
            batch["input_ids"],
            batch["attention_mask"],
            batch["labels"],
            extra,
            self.cfg.logprob_chunk,
        )
        nll_sum = -lp.sum.sum()
        n = float(lp.n_tokens.sum())
        return StepOutput(loss_sum=nll_sum, count=n, sums={"nll": float(nll_sum.detach())})

    def metrics(self, sums: dict[str, float], count: float) -> dict[str, float]:
        """loss = mean token NLL; perplexity."""
        nll = sums["nll"] / max(count, 1.0)
        return {"loss": nll, "ppl": float(torch.tensor(nll).exp())}


METHOD = Sft
