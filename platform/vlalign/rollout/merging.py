"""Generate with the LoRA adapters merged into the base weights, then restore them exactly.

With PEFT's LoRA wrapper every projection runs base linear + A + B (and a little Python) per
decoded token; merged (W + (alpha / r) B A, PEFT's own `merge`), `generate` runs plain linears.
On the idle CPU bench this took the rollout from 331 to 296 ms at 64 px and from 854 to 760 ms
at 128 px (`bench/grpo_step.py`, row `- LoRA merged for generate`; bench/README.md, "GRPO step").

`merged_adapters(model)` merges every active, unmerged LoRA layer, yields, then unmerges (PEFT's
`unmerge`) and copies back the base weights (and biases) saved before the merge, so no float
rounding of W + BA - BA is left behind: the trained base is bit-identical afterwards, in bf16 as
in float32 (tested). The saved copies cost the memory of the adapted base weights while the
context is open. A model without LoRA layers merges nothing (the context is a no-op); under
ZeRO-3 (partitioned weights) the caller must not enable it (`vlalign.methods.grpo` turns it off).
Unmerging before the copy-back keeps PEFT's own bookkeeping (merged adapters, DoRA state) right;
its arithmetic is then overwritten, a cost of one B A per layer per rollout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def lora_layers(model: nn.Module) -> list[nn.Module]:
    """PEFT LoRA layers of ``model`` with an active adapter that is not merged yet."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft is a dependency; a plain model simply has no LoRA layers
        return []
    return [
        m
        for m in model.modules()
        if isinstance(m, LoraLayer) and not m.merged and not m.disable_adapters
    ]


@contextlib.contextmanager
def merged_adapters(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Merge ``model``'s LoRA adapters for the duration of the block; yields how many layers
    were merged (0 when ``enabled`` is False or there is no LoRA). On exit, even after an
    exception, the exact base weights are back and the adapters are separate again."""
    layers = lora_layers(model) if enabled else []
    saved: list[tuple[nn.Module, torch.Tensor, torch.Tensor | None]] = []
    try:
        with torch.no_grad():
            for layer in layers:
                base = layer.get_base_layer()
                bias = getattr(base, "bias", None)
                saved.append(
                    (layer, base.weight.detach().clone(), None if bias is None else bias.clone())
                )
                layer.merge()
        yield len(layers)
    finally:
        with torch.no_grad():
            for layer, weight, bias in saved:
                if layer.merged:
                    layer.unmerge()
                base = layer.get_base_layer()
                base.weight.data.copy_(weight)
                if bias is not None:
                    base.bias.data.copy_(bias)
