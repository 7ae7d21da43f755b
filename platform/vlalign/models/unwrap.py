"""The one way to reach the model under its training wrappers (DeepSpeed, DDP, PEFT).

`unwrap(model)` strips every wrapper down to the transformers model (what owns `config`,
`get_image_features`, `named_parameters` with the family's own prefixes).
`unwrap(model, peft=False)` strips only the engine wrappers (a DeepSpeed engine's or DDP's
`.module`) and keeps a PeftModel or a reward model whole: what `disable_adapter()` or a
reward head is called on.
"""

from __future__ import annotations

from torch import nn


def unwrap(model: nn.Module, peft: bool = True) -> nn.Module:
    """The model under DeepSpeed / DDP wrappers (`.module`) and, when `peft`, under PEFT too."""
    while True:
        if peft and hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model
