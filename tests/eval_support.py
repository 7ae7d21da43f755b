"""Helpers for the evaluation tests: synthetic eval shards, tiny exported adapters, small recipes.

Importable from every test folder (pytest puts tests/, the conftest's folder, on sys.path).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlalign.config import recipe_to_yaml
from vlalign.config.schema import ModelConfig, PeftConfig, Recipe


def small_recipe(model_cache: str, max_new_tokens: int = 8, batch_size: int = 5) -> Recipe:
    """The default recipe with the tiny LLaVA from the test cache and short answers."""
    r = Recipe(name="eval-test", model=ModelConfig(name="tiny-llava", cache_dir=model_cache))
    r.eval.max_new_tokens = max_new_tokens
    r.eval.batch_size = batch_size
    return r


def synth_eval(out_dir: Path, eval_pairs: int = 12, seed: int = 0) -> Path:
    """`vlalign data synth` shards: a 'train' (preference) and an 'eval' split of eval_pairs
    samples (no shifted splits: tests/unit/test_eval_splits.py covers those)."""
    from data_pipeline.synth import synthesize

    synthesize(out_dir, pairs=2, seed=seed, eval_pairs=eval_pairs, shift_pairs=0)
    return out_dir


def make_adapter_export(
    out_dir: Path, recipe: Recipe, seed: int = 1, scale: float = 0.3, reward: bool = False
) -> Path:
    """A LoRA export laid out as training writes it (adapter + processor + recipe.yaml +
    vlalign_export.json [+ value_head.safetensors]), with random non-zero LoRA B so the adapter
    changes the model (its implicit rewards are not all zero)."""
    from safetensors.torch import save_file

    from vlalign.models import apply_peft, build

    built = build(recipe.model)
    policy = apply_peft(built.model, PeftConfig(r=4, alpha=8), seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(str(out_dir), safe_serialization=True)
    built.processor.save_pretrained(str(out_dir))
    (out_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    meta = {
        "format": 1,
        "kind": "adapter",
        "method": "reward" if reward else "dpo",
        "family": built.family,
        "base_model": recipe.model.model_dump(mode="json"),
    }
    if reward:
        from vlalign.models.value_head import RewardModel

        torch.manual_seed(seed)
        rm = RewardModel(policy)
        save_file(
            {k: v.contiguous() for k, v in rm.value_head.state_dict().items()},
            str(out_dir / "value_head.safetensors"),
        )
        meta["value_head"] = "value_head.safetensors"
    (out_dir / "vlalign_export.json").write_text(json.dumps(meta, indent=2))
    return out_dir
