"""Export at the end of a run: the LoRA adapter in PEFT format (safetensors) with the processor
and the resolved recipe, loadable with `peft.PeftModel.from_pretrained`; optionally the merged model.

Directory written (rank 0)::

    adapter_config.json, adapter_model.safetensors   (or the full model, for peft.mode full)
    processor + tokenizer files
    recipe.yaml                                       the fully resolved recipe
    vlalign_export.json                               base model spec, family, method, kind
    value_head.safetensors                            reward models only
    merged/                                           train.export == merged
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlalign.config import recipe_to_yaml
from vlalign.config.schema import Recipe
from vlalign.training.distributed import barrier

EXPORT_MANIFEST = "vlalign_export.json"


def _gathered(module: torch.nn.Module, zero_stage: int, params=None):
    if zero_stage != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(
        list(params or module.parameters()), modifier_rank=None
    )


def export(
    model: torch.nn.Module,
    processor,
    recipe: Recipe,
    family: str,
    out_dir: Path,
    rank: int,
    zero_stage: int,
) -> Path | None:
    """Collective under ZeRO-3 (parameters are gathered); rank 0 writes. Returns out_dir."""
    if recipe.train.export == "none":
        return None
    head = getattr(model, "value_head", None)  # a scalar-head model (reward, cost) saves it apart
    policy = model.policy if head is not None else model
    with _gathered(model, zero_stage):
        if rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            policy.save_pretrained(str(out_dir), safe_serialization=True)
            processor.save_pretrained(str(out_dir))
            (out_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe))
            meta = {
                "format": 1,
                "kind": "adapter" if recipe.peft.mode == "lora" else "full",
                "method": recipe.method.name,
                "family": family,
                "base_model": recipe.model.model_dump(mode="json"),
            }
            if head is not None:
                save_file(
                    {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
                    str(out_dir / "value_head.safetensors"),
                )
                meta["value_head"] = "value_head.safetensors"
            if recipe.train.export == "merged" and recipe.peft.mode == "lora":
                merged = policy.merge_and_unload()
                merged.save_pretrained(str(out_dir / "merged"), safe_serialization=True)
                processor.save_pretrained(str(out_dir / "merged"))
                meta["merged"] = "merged"
            (out_dir / EXPORT_MANIFEST).write_text(json.dumps(meta, indent=2))
    barrier()
    return out_dir


def load_exported(path: str | Path, device: str | torch.device = "cpu"):
    """Reload an export: (model, processor, recipe). The adapter is attached to the base it names."""
    import yaml
    from peft import PeftModel

    from vlalign.config import Recipe as RecipeModel
    from vlalign.config.schema import ModelConfig
    from vlalign.models import build

    path = Path(path)
    meta = json.loads((path / EXPORT_MANIFEST).read_text())
    recipe = RecipeModel.model_validate(yaml.safe_load((path / "recipe.yaml").read_text()))
    if meta["kind"] == "adapter":
        built = build(ModelConfig.model_validate(meta["base_model"]), device=device)
        model = PeftModel.from_pretrained(built.model, str(path))
        processor = built.processor
    else:
        from transformers import AutoModelForImageTextToText

        from vlalign.models.processors import load_processor

        model = AutoModelForImageTextToText.from_pretrained(str(path), use_safetensors=True).to(
            device
        )
        processor = load_processor(path, meta["family"])
    return model.eval(), processor, recipe
