"""DPO and its family (sigmoid / robust / IPO / hinge / SimPO / ORPO), chosen by name in the recipe.

Reference: the policy with its LoRA adapter disabled (no second copy), a frozen copy (full
fine-tuning), log-probs precomputed once and cached (`reference: precomputed`), or none for
reference-free losses. Chosen and rejected share one forward and the vision tower runs once per
pair (see `vlalign.methods.forward`).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vlalign.config.schema import Recipe
from vlalign.errors import VlalignError
from vlalign.losses import LossSpec, resolve_loss, reward_metrics
from vlalign.methods.base import StepOutput
from vlalign.methods.forward import pair_forward
from vlalign.methods.pair_inputs import (
    PairOptions,
    encode_images,
    image_inputs,
    vision_is_trainable,
)
from vlalign.models.unwrap import unwrap


@dataclass
class State:
    model: torch.nn.Module
    loss: LossSpec
    recipe: Recipe
    pad_id: int
    opts: PairOptions
    reference: str
    frozen_ref: torch.nn.Module | None = None
    ref_cache: dict[str, tuple[float, float]] | None = None
    batch_kind: str = "pairs"
    extra: dict = field(default_factory=dict)


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen reference copy (made before the engine wraps the policy)."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def setup(
    recipe: Recipe,
    model: torch.nn.Module,
    pad_id: int,
    frozen_ref: torch.nn.Module | None = None,
    ref_cache: dict | None = None,
    **_,
) -> State:
    """Resolve the loss and the reference. Batches: chosen_*/rejected_* [B, T] + images once per pair."""
    m = recipe.method
    spec = resolve_loss("dpo", m.loss)
    reference = "none" if spec.reference_free else m.reference
    if reference == "none" and not spec.reference_free:
        raise VlalignError(f"method.reference: loss {spec.name!r} needs a reference (not none)")
    if reference == "frozen_copy" and frozen_ref is None:
        raise VlalignError("method.reference: frozen_copy needs the reference copy from the loop")
    if reference == "precomputed" and ref_cache is None:
        raise VlalignError("method.reference: precomputed needs the reference cache from the loop")
    opts = PairOptions(
        share_vision=m.share_vision, chunk_size=m.logprob_chunk, pack_prefix=m.pack_prefix
    )
    return State(model, spec, recipe, pad_id, opts, reference, frozen_ref, ref_cache)


def _shared_features(state: State, batch: dict) -> BaseModelOutputWithPooling | None:
    """Image features computed once per pair, reused by policy and reference (frozen vision)."""
    images = image_inputs(batch)
    if not (state.opts.share_vision and images) or vision_is_trainable(state.model):
        return None
    with torch.no_grad():
        return encode_images(state.model, images)


def reference_logps(state: State, batch: dict, features) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference summed log-probs of chosen and rejected [B] (no grad)."""
    if state.reference == "precomputed":
        try:
            rows = [state.ref_cache[k] for k in batch["keys"]]
        except KeyError as e:
            raise VlalignError(
                f"reference cache has no entry for sample {e.args[0]!r}: recompute it"
            ) from None
        t = torch.tensor(rows, dtype=torch.float32, device=batch["chosen_input_ids"].device)
        return t[:, 0], t[:, 1]
    if state.reference == "frozen_copy":
        ctx, model = contextlib.nullcontext(), state.frozen_ref
    else:
        ctx, model = unwrap(state.model, peft=False).disable_adapter(), state.model
    feats = features
    was_training = model.training
    model.eval()
    with torch.no_grad(), ctx:
        if feats is None and state.opts.share_vision and image_inputs(batch):
            feats = encode_images(model, image_inputs(batch))
        c, r = pair_forward(model, batch, state.pad_id, state.opts, feats)
    model.train(was_training)
    return c.sum, r.sum


def step(state: State, batch: dict) -> StepOutput:
    """Loss sum over the micro-batch's pairs; count = pairs. Reports TRL's reward metrics."""
    feats = _shared_features(state, batch)
    ref_c = ref_r = None
    if state.reference != "none":
        ref_c, ref_r = reference_logps(state, batch, feats)
    pol_c, pol_r = pair_forward(state.model, batch, state.pad_id, state.opts, feats)
    m = state.recipe.method
    chosen_nll = -(pol_c.sum.sum() / pol_c.n_tokens.sum().clamp(min=1))
    out = state.loss.fn(
        pol_c.sum,
        pol_r.sum,
        ref_c,
        ref_r,
        beta=m.beta,
        label_smoothing=m.label_smoothing,
        gamma=m.gamma,
        chosen_lengths=pol_c.n_tokens,
        rejected_lengths=pol_r.n_tokens,
        chosen_nll=chosen_nll,
    )
    B = pol_c.sum.shape[0]
    loss_sum = out.loss * B
    if m.nll_weight > 0:  # RPO: NLL on the chosen answer, per pair (length-normalized)
        loss_sum = loss_sum + m.nll_weight * (-pol_c.mean).sum()
    sums = {k: v * B for k, v in reward_metrics(out).items()}
    sums["logps/chosen"] = float(pol_c.sum.detach().sum())
    sums["logps/rejected"] = float(pol_r.sum.detach().sum())
    sums["nll/chosen"] = float((-pol_c.mean).detach().sum())
    return StepOutput(loss_sum=loss_sum, count=float(B), sums=sums)


def metrics(sums: dict[str, float], count: float) -> dict[str, float]:
    """Means over the step's pairs: rewards/*, logps/*, nll/chosen."""
    return {k: v / max(count, 1.0) for k, v in sums.items()}
