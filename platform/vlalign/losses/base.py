"""What every loss returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from vlalign.errors import VlalignError


class UnknownLossError(VlalignError):
    """A loss name that is not registered, or one that does not fit the training method."""


@dataclass
class LossOutput:
    """What a loss returns. loss: [] scalar with grad; rewards: [B] detached, or None (SFT).

    ``metrics`` holds extra detached scalars a variant reports (ORPO: nll_loss, log_odds_ratio,
    log_odds_chosen), named as TRL names them.
    """

    loss: Tensor
    chosen_rewards: Tensor | None = None
    rejected_rewards: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)
