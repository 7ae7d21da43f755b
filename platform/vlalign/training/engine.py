"""DeepSpeed engine setup from the recipe: templates (cluster/deepspeed/, shipped as package
data), recipe overrides, a torch AdamW handed to DeepSpeed (no fused-Adam build), the warmup +
decay schedule."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from vlalign._shipped import deepspeed_dir
from vlalign.config.loading import deep_merge
from vlalign.config.schema import Recipe
from vlalign.errors import VlalignError
from vlalign.training.schedule import make_scheduler

# DeepSpeed (0.19) ZeRO still calls torch.distributed.all_gather_into_tensor, deprecated in torch
# 2.13; the FutureWarning is addressed to DeepSpeed, not to our users.
warnings.filterwarnings(
    "ignore",
    message=r"`torch.distributed.all_gather_into_tensor` is deprecated",
    category=FutureWarning,
)

TEMPLATES_DIR = deepspeed_dir()  # package data when installed, cluster/deepspeed/ in a checkout


def template_path(recipe: Recipe) -> Path:
    """The DeepSpeed JSON template the recipe uses."""
    if recipe.engine.template:
        return Path(recipe.engine.template)
    stage = recipe.engine.zero_stage
    suffix = "-offload" if recipe.engine.offload == "cpu" and stage == 3 else ""
    return TEMPLATES_DIR / f"zero{stage}{suffix}.json"


def deepspeed_config(recipe: Recipe, world_size: int) -> dict[str, Any]:
    """The full DeepSpeed config: template, then recipe-derived keys, then engine.overrides."""
    path = template_path(recipe)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise VlalignError(f"engine.template: cannot read DeepSpeed config {path}: {e}") from None
    t = recipe.train
    cfg["train_micro_batch_size_per_gpu"] = t.micro_batch_size
    cfg["gradient_accumulation_steps"] = t.grad_accum
    cfg["train_batch_size"] = t.micro_batch_size * t.grad_accum * world_size
    cfg["gradient_clipping"] = t.max_grad_norm
    cfg["zero_optimization"] = {
        **cfg.get("zero_optimization", {}),
        "stage": recipe.engine.zero_stage,
    }
    cfg["bf16"] = {"enabled": recipe.engine.precision == "bf16"}
    cfg["fp16"] = {"enabled": recipe.engine.precision == "fp16", "loss_scale": 0}
    cfg["zero_allow_untested_optimizer"] = True
    if recipe.engine.offload == "cpu":
        cfg["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        cfg["zero_force_ds_cpu_optimizer"] = False
    cfg.setdefault("steps_per_print", 10**9)
    return deep_merge(cfg, recipe.engine.overrides)


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (decay on matrices only)."""
    t = recipe.train
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise VlalignError("peft: the policy leaves no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=t.lr, betas=t.adam_betas, eps=1e-8)


def initialize(model: torch.nn.Module, recipe: Recipe, world_size: int):
    """deepspeed.initialize with our optimizer and scheduler. Returns the engine."""
    import deepspeed

    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe.train)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(recipe, world_size),
        dist_init_required=False,
    )
    return engine
