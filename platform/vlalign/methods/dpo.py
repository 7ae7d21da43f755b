"""DPO and its family (sigmoid / robust / IPO / hinge / SimPO / ORPO), chosen by name in the recipe.

Reference: the policy with its LoRA adapter disabled (no second copy), a frozen copy (full
fine-tuning), log-probs precomputed once and cached (`reference: precomputed`), or none for
reference-free losses. Chosen and rejected share one forward and the vision tower runs once per
pair (see `vlalign.methods.forward`).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vlalign.config.schema import DpoMethod
from vlalign.errors import VlalignError
from vlalign.losses import LossSpec, resolve_loss, reward_metrics
from vlalign.methods.base import OfflineMethod, Run, StepOutput, frozen_copy, mean_sums
from vlalign.methods.forward import pair_forward
from vlalign.methods.reference_cache import load_or_compute
from vlalign.models.pair_inputs import (
    PairOptions,
    encode_images,
    image_inputs,
    vision_is_trainable,
)
from vlalign.models.unwrap import unwrap


class Dpo(OfflineMethod):
    """Batches: chosen_* / rejected_* [B, T] + the images once per pair."""

    batch_kind = "pairs"

    def __init__(self, cfg: DpoMethod) -> None:
        self.cfg = cfg
        self.loss: LossSpec = resolve_loss("dpo", cfg.loss)
        self.reference = "none" if self.loss.reference_free else cfg.reference
        self.opts = PairOptions(
            share_vision=cfg.share_vision, chunk_size=cfg.logprob_chunk, pack_prefix=cfg.pack_prefix
        )
        self.frozen_ref: nn.Module | None = None
        self.ref_cache: dict[str, tuple[float, float]] | None = None
        self.model: nn.Module | None = None
        self.pad_id = 0

    def prepare(self, run: Run) -> nn.Module:
        """Build the reference the recipe names; the policy itself is trained."""
        self.pad_id = run.pad_id
        if self.reference == "frozen_copy":
            self.frozen_ref = frozen_copy(run.model)
        elif self.reference == "precomputed":
            opts = PairOptions(
                share_vision=self.cfg.share_vision, chunk_size=self.cfg.logprob_chunk
            )
            self.ref_cache = load_or_compute(run, self.cfg.reference_cache_dir, opts)
        elif self.reference == "adapter_disabled" and not hasattr(
            unwrap(run.model, peft=False), "disable_adapter"
        ):
            raise VlalignError(
                "method.reference: adapter_disabled needs peft.mode lora (use frozen_copy or precomputed)"
            )
        return run.model

    def setup(self, engine: nn.Module) -> None:
        self.model = engine

    def units(self, batch: dict) -> float:
        """Pairs."""
        return float(batch["chosen_input_ids"].shape[0])

    def tokens(self, batch: dict) -> int:
        return int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())

    def _shared_features(self, batch: dict) -> BaseModelOutputWithPooling | None:
        """Image features computed once per pair, reused by policy and reference (frozen vision)."""
        images = image_inputs(batch)
        if not (self.opts.share_vision and images) or vision_is_trainable(self.model):
            return None
        with torch.no_grad():
            return encode_images(self.model, images)

    def reference_logps(self, batch: dict, features) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference summed log-probs of chosen and rejected [B] (no grad)."""
        if self.reference == "precomputed":
            try:
                rows = [self.ref_cache[k] for k in batch["keys"]]
            except KeyError as e:
                raise VlalignError(
                    f"reference cache has no entry for sample {e.args[0]!r}: recompute it"
                ) from None
            t = torch.tensor(rows, dtype=torch.float32, device=batch["chosen_input_ids"].device)
            return t[:, 0], t[:, 1]
        if self.reference == "frozen_copy":
            ctx, model = contextlib.nullcontext(), self.frozen_ref
        else:
            ctx, model = unwrap(self.model, peft=False).disable_adapter(), self.model
        feats = features
        was_training = model.training
        model.eval()
        with torch.no_grad(), ctx:
            if feats is None and self.opts.share_vision and image_inputs(batch):
                feats = encode_images(model, image_inputs(batch))
            c, r = pair_forward(model, batch, self.pad_id, self.opts, feats)
        model.train(was_training)
        return c.sum, r.sum

    def step(self, batch: dict) -> StepOutput:
        """Loss sum over the micro-batch's pairs; count = pairs. Reports TRL's reward metrics."""
        feats = self._shared_features(batch)
        ref_c = ref_r = None
        if self.reference != "none":
            ref_c, ref_r = self.reference_logps(batch, feats)
        pol_c, pol_r = pair_forward(self.model, batch, self.pad_id, self.opts, feats)
        m = self.cfg
        chosen_nll = -(pol_c.sum.sum() / pol_c.n_tokens.sum().clamp(min=1))
        out = self.loss.fn(
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

    def metrics(self, sums: dict[str, float], count: float) -> dict[str, float]:
        """Means over the step's pairs: rewards/*, logps/*, nll/chosen."""
        return mean_sums(sums, count)


METHOD = Dpo
