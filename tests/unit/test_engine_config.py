"""DeepSpeed config assembly and the learning-rate schedule."""

from __future__ import annotations

import json

import pytest

from vlalign.config import Recipe
from vlalign.training.engine import TEMPLATES_DIR, deepspeed_config, template_path
from vlalign.training.schedule import lr_factor


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_templates_exist_and_parse(stage):
    r = Recipe.model_validate({"engine": {"zero_stage": stage}})
    cfg = json.loads(template_path(r).read_text())
    assert cfg["zero_optimization"]["stage"] == stage


def test_offload_template_and_every_template_parses():
    r = Recipe.model_validate({"engine": {"zero_stage": 3, "offload": "cpu"}})
    assert template_path(r).name == "zero3-offload.json"
    for f in TEMPLATES_DIR.glob("*.json"):
        json.loads(f.read_text())


def test_recipe_fills_batch_precision_clipping_and_overrides_win():
    r = Recipe.model_validate(
        {
            "train": {"micro_batch_size": 4, "grad_accum": 3, "max_grad_norm": 0.0},
            "engine": {
                "zero_stage": 2,
                "precision": "bf16",
                "overrides": {
                    "zero_optimization": {"reduce_bucket_size": 123},
                    "gradient_clipping": 0.5,
                },
            },
        }
    )
    cfg = deepspeed_config(r, world_size=2)
    assert cfg["train_batch_size"] == 24
    assert cfg["train_micro_batch_size_per_gpu"] == 4
    assert cfg["gradient_accumulation_steps"] == 3
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert cfg["zero_optimization"]["stage"] == 2
    assert cfg["zero_optimization"]["reduce_bucket_size"] == 123
    assert cfg["zero_optimization"]["overlap_comm"] is True  # from the template, kept by the merge
    assert cfg["gradient_clipping"] == 0.5  # engine.overrides win over train.max_grad_norm


def test_warmup_then_cosine_to_min_ratio():
    t = Recipe.model_validate(
        {"train": {"max_steps": 110, "warmup_steps": 10, "schedule": "cosine", "min_lr_ratio": 0.1}}
    ).train
    assert lr_factor(0, t) == pytest.approx(0.1)
    assert lr_factor(9, t) == pytest.approx(1.0)
    assert lr_factor(10, t) == pytest.approx(1.0)
    assert lr_factor(60, t) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos = 0
    assert lr_factor(110, t) == pytest.approx(0.1)
    c = Recipe.model_validate({"train": {"schedule": "constant"}}).train
    assert lr_factor(57, c) == 1.0
    lin = Recipe.model_validate({"train": {"max_steps": 100, "schedule": "linear"}}).train
    assert lr_factor(50, lin) == pytest.approx(0.5)
