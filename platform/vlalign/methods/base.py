"""What a method's step returns to the loop."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class StepOutput:
    """One micro-batch's contribution.

    loss_sum: [] with grad, the SUM of per-unit losses (units: response tokens for SFT, pairs for
    DPO/reward); the loop divides by the global count of units in the optimizer step, so
    micro-batching, accumulation and ranks all give the same gradient as one big batch.
    count: units in this micro-batch. sums: detached metric sums over units (loop averages).
    """

    loss_sum: Tensor
    count: float
    sums: dict[str, float] = field(default_factory=dict)
