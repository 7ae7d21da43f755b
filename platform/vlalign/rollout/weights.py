"""Trainer -> rollout weight sync for LoRA policies, with a log-prob parity check.

The trainer extracts its adapter (`adapter_state`: PEFT's `get_peft_model_state_dict`, LoRA
matrices and any ``modules_to_save``) as a plain ``{name: CPU tensor}`` dict, which pickles and
therefore travels through Ray's object store (``ray.put``) unchanged. The rollout side loads it
(`load_adapter_state`: `set_peft_model_state_dict`; a key the rollout model does not have is an
error, never silently dropped).

Parity. Broken trainer-to-rollout sync is the most reported RL bug for VLMs (a frozen rollout
policy, an adapter loaded under the wrong names, a projector left behind). So the trainer sends,
with the weights, its own per-token log-probs of a fixed probe sample (`make_update`), and the
rollout side recomputes them after loading (`apply_update`); `ParityResult` holds the max abs
difference and the tolerance, and `metrics()` gives what the loop logs. Both sides score the
probe in eval mode (no dropout) with `vlalign.rollout.engine.token_forward`.

Tolerance (`PARITY_TOLERANCE`, 1e-4 nats per token) is for float32 models; identical weights on
the same device and kernels give 0 exactly (the CPU test sees 0). bfloat16 weights, or trainer
and rollout on different kernels (e.g. fused attention on one side), need ~5e-2.
Under DeepSpeed ZeRO-3 the adapter must be gathered (`deepspeed.zero.GatheredParameters`)
before `adapter_state`; the caller does that (as `vlalign.training.export` does for export).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import Tensor

from vlalign.errors import VlalignError
from vlalign.models.inputs import ChatEncoder
from vlalign.rollout.engine import produces_mm_token_types, token_forward

PARITY_TOLERANCE = 1e-4


class WeightSyncError(VlalignError):
    """An adapter state that does not fit the rollout model, or a failed parity check."""


def peft_model(model: torch.nn.Module) -> torch.nn.Module:
    """The PEFT model under DeepSpeed / DDP wrappers (anything with `.module`)."""
    from peft import PeftModel

    m = model
    while not isinstance(m, PeftModel):
        inner = getattr(m, "module", None)
        if not isinstance(inner, torch.nn.Module):
            raise WeightSyncError(
                f"weight sync needs a LoRA (PEFT) policy; got {type(model).__name__} "
                "(peft.mode full would move the whole model: not supported here)"
            )
        m = inner
    return m


def adapter_state(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, Tensor]:
    """The adapter's tensors as a plain dict of detached, contiguous CPU copies.

    Keys as PEFT saves them (``...lora_A.weight``, ``...lora_B.weight``, modules_to_save).
    """
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(peft_model(model), adapter_name=adapter_name)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def load_adapter_state(
    model: torch.nn.Module, state: dict[str, Tensor], adapter_name: str = "default"
) -> None:
    """Load an `adapter_state` dict into the rollout model's adapter (in place).

    Raises `WeightSyncError` when a key of ``state`` has no place in the model (different LoRA
    targets, rank or modules_to_save on the two sides).
    """
    from peft import set_peft_model_state_dict

    pm = peft_model(model)
    result = set_peft_model_state_dict(pm, state, adapter_name=adapter_name)
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise WeightSyncError(
            f"adapter state has {len(unexpected)} keys the rollout model lacks, e.g. "
            f"{unexpected[0]!r}: trainer and rollout LoRA configs differ"
        )


@dataclass
class Probe:
    """A fixed sample scored on both sides. input_ids, attention_mask, labels: [1, T];
    extra: the image tensors for the forward (pixel_values, ...; mm_token_type_ids)."""

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    extra: dict[str, Tensor] = field(default_factory=dict)


def make_probe(
    processor,
    family: str,
    image: Image.Image | None = None,
    prompt: str = "What is shown in this image?",
    response: str = "A small picture with a few shapes in it.",
    max_length: int = 512,
) -> Probe:
    """The probe sample: (image, prompt, response) through the family's chat template.

    Default image: a 32x32 grey square. Include the image so that the vision path (and any
    adapted projector) is part of what the parity check compares.
    """
    enc = ChatEncoder(processor, family, max_length)
    img = image if image is not None else Image.new("RGB", (32, 32), (128, 128, 128))
    ex = enc.sft_example([img], prompt, response)
    ids = ex["input_ids"][None]
    extra = dict(ex["image_inputs"])
    if produces_mm_token_types(enc):
        extra["mm_token_type_ids"] = (ids == enc.image_token_id).long()
    return Probe(ids, torch.ones_like(ids), ex["labels"][None], extra)


@torch.no_grad()
def probe_logprobs(model: torch.nn.Module, probe: Probe) -> Tensor:
    """Per-token log-probs [1, T] float32 of the probe's response, in eval mode, on CPU."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        lp = token_forward(
            model,
            probe.input_ids.to(device),
            probe.attention_mask.to(device),
            probe.labels.to(device),
            {k: v.to(device) for k, v in probe.extra.items()},
        )
    finally:
        model.train(was_training)
    return lp.cpu()


@dataclass
class AdapterUpdate:
    """What travels from trainer to rollout workers (plain tensors: pickles, fits ray.put).

    state: `adapter_state`; version: the trainer's optimizer step; probe_logps: [1, T] the
    trainer's log-probs of the probe with these weights.
    """

    state: dict[str, Tensor]
    version: int
    probe_logps: Tensor


@dataclass(frozen=True)
class ParityResult:
    """max |trainer - rollout| log-prob over the probe's response tokens, and the tolerance."""

    max_abs_diff: float
    tolerance: float
    version: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def metrics(self) -> dict[str, float]:
        """sync/parity_max_abs_diff, sync/parity_ok (1 or 0), sync/version."""
        return {
            "sync/parity_max_abs_diff": self.max_abs_diff,
            "sync/parity_ok": float(self.ok),
            "sync/version": float(self.version),
        }


def make_update(trainer_model: torch.nn.Module, probe: Probe, version: int) -> AdapterUpdate:
    """Trainer side: the adapter state and the trainer's probe log-probs."""
    return AdapterUpdate(
        adapter_state(trainer_model), version, probe_logprobs(trainer_model, probe)
    )


def parity(
    rollout_model: torch.nn.Module,
    probe: Probe,
    reference_logps: Tensor,
    version: int = -1,
    tolerance: float = PARITY_TOLERANCE,
) -> ParityResult:
    """Compare the rollout model's probe log-probs with ``reference_logps`` [1, T]."""
    lp = probe_logprobs(rollout_model, probe)
    mask = probe.labels != -100
    diff = (lp - reference_logps.to(lp.dtype)).abs()[mask]
    return ParityResult(float(diff.max()) if diff.numel() else 0.0, tolerance, version)


def apply_update(
    rollout_model: torch.nn.Module,
    update: AdapterUpdate,
    probe: Probe,
    tolerance: float = PARITY_TOLERANCE,
    strict: bool = False,
) -> ParityResult:
    """Rollout side: load the adapter, then check parity against the trainer's probe log-probs.

    ``strict``: raise `WeightSyncError` when parity fails (otherwise the caller logs the metric
    and decides).
    """
    load_adapter_state(rollout_model, update.state)
    result = parity(rollout_model, probe, update.probe_logps, update.version, tolerance)
    if strict and not result.ok:
        raise WeightSyncError(
            f"weight sync v{update.version}: rollout log-probs differ from the trainer's by "
            f"{result.max_abs_diff:.3g} > tolerance {tolerance:.3g}"
        )
    return result
