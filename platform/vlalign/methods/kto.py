"""KTO (Ethayarajh et al. 2024) on unpaired completions, for VLMs.

Batches (`data_pipeline.collate.collate_unpaired`): each preference pair becomes a desirable
completion (chosen) and an undesirable one (rejected), sharing their image; plus one mismatched
row per pair (its prompt and image with another pair's completion) for the KL reference point.
The reference is the policy with its LoRA adapter disabled, or a frozen copy. The image is
encoded once per pair and serves the desirable, undesirable and mismatched rows, for policy and
reference alike when the vision path is frozen.

z0 is estimated per micro-batch from its mismatched rows, all-reduced over ranks as TRL's
KTOTrainer gathers it; it is detached (the paper's reference point takes no gradient).
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vlalign.config.schema import KtoMethod
from vlalign.errors import VlalignError
from vlalign.losses import LossSpec, resolve_loss
from vlalign.methods.base import OfflineMethod, Run, StepOutput, frozen_copy, mean_sums
from vlalign.methods.forward import pair_forward, sequence_forward
from vlalign.models.pair_inputs import (
    PairOptions,
    encode_images,
    image_inputs,
    vision_is_trainable,
)
from vlalign.models.unwrap import unwrap


def _mismatched_extra(batch: dict, features: BaseModelOutputWithPooling | None) -> dict:
    """Model kwargs for the kl_* rows: row i uses pair i's image (features or pixels)."""
    images = image_inputs(batch)
    extra = {k: v for k, v in images.items() if k in ("image_grid_thw", "image_sizes")}
    if "kl_mm_token_type_ids" in batch:
        extra["mm_token_type_ids"] = batch["kl_mm_token_type_ids"]
    if features is not None:
        extra["mm_encoder_outputs"] = {"image": features}
    else:
        extra.update(images)
    return extra


class Kto(OfflineMethod):
    """Units: completions (2 per pair). Reports TRL's KTO metrics (rewards/*, kl)."""

    batch_kind = "unpaired"

    def __init__(self, cfg: KtoMethod) -> None:
        self.cfg = cfg
        self.loss: LossSpec = resolve_loss("kto", cfg.loss)
        self.opts = PairOptions(share_vision=True, chunk_size=cfg.logprob_chunk)
        self.frozen_ref: nn.Module | None = None
        self.model: nn.Module | None = None
        self.pad_id = 0

    def prepare(self, run: Run) -> nn.Module:
        """Build the reference (a frozen copy, or none: the adapter is disabled per forward)."""
        self.pad_id = run.pad_id
        if self.cfg.reference == "frozen_copy":
            self.frozen_ref = frozen_copy(run.model)
        elif not hasattr(unwrap(run.model, peft=False), "disable_adapter"):
            raise VlalignError(
                "method.reference: adapter_disabled needs peft.mode lora (use frozen_copy)"
            )
        return run.model

    def setup(self, engine: nn.Module) -> None:
        self.model = engine

    def units(self, batch: dict) -> float:
        """Completions: a desirable and an undesirable one per pair."""
        return float(2 * batch["chosen_input_ids"].shape[0])

    def tokens(self, batch: dict) -> int:
        return int(batch["n_tokens"])

    def _logps(self, model: nn.Module, batch: dict, features) -> tuple[Tensor, Tensor, Tensor]:
        """Summed log-probs [B] of the desirable, undesirable and mismatched rows."""
        c, r = pair_forward(model, batch, self.pad_id, self.opts, features)
        with torch.no_grad():  # z0 is detached: no graph for the mismatched rows
            kl = sequence_forward(
                model,
                batch["kl_input_ids"],
                batch["kl_attention_mask"],
                batch["kl_labels"],
                _mismatched_extra(batch, features),
                self.cfg.logprob_chunk,
            )
        return c.sum, r.sum, kl.sum

    def _reference(self, batch: dict, features) -> tuple[Tensor, Tensor, Tensor]:
        if self.frozen_ref is not None:
            ctx, model = contextlib.nullcontext(), self.frozen_ref
        else:
            ctx, model = unwrap(self.model, peft=False).disable_adapter(), self.model
        was_training = model.training
        model.eval()
        with torch.no_grad(), ctx:
            feats = features
            if feats is None and image_inputs(batch):
                feats = encode_images(model, image_inputs(batch))
            out = self._logps(model, batch, feats)
        model.train(was_training)
        return out

    def step(self, batch: dict) -> StepOutput:
        """KTO loss sum over the micro-batch's 2B completions; count = 2B."""
        features = None
        if image_inputs(batch) and not vision_is_trainable(self.model):
            with torch.no_grad():
                features = encode_images(self.model, image_inputs(batch))
        ref_c, ref_r, ref_kl = self._reference(batch, features)
        if features is None and image_inputs(batch):  # trainable vision: features with grad
            features = encode_images(self.model, image_inputs(batch))
        pol_c, pol_r, pol_kl = self._logps(self.model, batch, features)
        z0 = _global_mean(pol_kl - ref_kl).clamp(min=0)
        B = pol_c.shape[0]
        desirable = torch.cat([torch.ones(B), torch.zeros(B)]).bool().to(pol_c.device)
        out = self.loss.fn(
            torch.cat([pol_c, pol_r]),
            torch.cat([ref_c, ref_r]),
            desirable,
            beta=self.cfg.beta,
            desirable_weight=self.cfg.desirable_weight,
            undesirable_weight=self.cfg.undesirable_weight,
            z0=z0,
        )
        n = 2 * B
        c, r = out.chosen_rewards.float(), out.rejected_rewards.float()
        sums = {
            "rewards/chosen": float(c.sum()) * 2,  # means over the B desirable rows
            "rewards/rejected": float(r.sum()) * 2,
            "rewards/margins": float((c - r).sum()) * 2,
            "rewards/accuracies": float((c > r).float().sum()) * 2,
            "logps/chosen": float(pol_c.detach().sum()) * 2,
            "logps/rejected": float(pol_r.detach().sum()) * 2,
            "kl": float(z0) * n,
        }
        return StepOutput(loss_sum=out.loss * n, count=float(n), sums=sums)

    def metrics(self, sums: dict[str, float], count: float) -> dict[str, float]:
        """Means: rewards/* and logps/* over pairs, kl (z0) over the step."""
        return mean_sums(sums, count)


def _global_mean(x: Tensor) -> Tensor:
    """Mean of x [M] over every rank's rows (detached): z0's estimate across processes."""
    total = torch.stack([x.detach().float().sum(), torch.tensor(float(x.numel()), device=x.device)])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total)
    return total[0] / total[1].clamp(min=1)


METHOD = Kto
