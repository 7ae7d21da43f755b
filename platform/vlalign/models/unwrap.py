"""One way to unwrap a model: the engine (DeepSpeed) and PEFT wrappers, peeled in order."""

from __future__ import annotations

from torch import nn


def unwrap_engine(model: nn.Module) -> nn.Module:
    """The module under DeepSpeed / DDP wrappers (a PeftModel stays a PeftModel)."""
    while (
        hasattr(model, "module")
        and isinstance(model.module, nn.Module)
        and not hasattr(model, "get_base_model")
    ):
        model = model.module
    return model


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The PEFT model (or plain model) under the engine: what `disable_adapter()` is called on."""
    return unwrap_engine(model)


def hf_model(model: nn.Module) -> nn.Module:
    """The transformers model under PEFT / DeepSpeed wrappers."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model
