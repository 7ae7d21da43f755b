"""A Safe RLHF cost model trained on the tiny LLaVA (fp32, CPU, DeepSpeed over gloo) separates
harmful from safe answers on HELD-OUT pairs (the synthetic eval split: new images).

Measured here (512 pairs, 100 steps of 16, lr 3e-3): held-out pair accuracy 0.906, sign
accuracy 0.906 on unsafe and 0.99 on safe answers. With 64 training pairs the model overfits
(train 0.97, held-out 0.67), hence the larger set."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from data_pipeline.reader import TrainLoader
from vlalign.config import Recipe
from vlalign.methods.cost import evaluate_cost_model
from vlalign.methods.reward import RewardModel
from vlalign.models.inputs import ChatEncoder
from vlalign.training.export import load_exported
from vlalign.training.loop import run_training


def test_cost_model_learns_pair_order_and_sign_on_held_out_pairs(tmp_path, model_cache):
    from data_pipeline.synth import synthesize

    shards = tmp_path / "shards"
    synthesize(shards, pairs=512, seed=3, eval_pairs=64)
    recipe = Recipe.model_validate(
        {
            "name": "cost",
            "model": {"name": "tiny-llava", "cache_dir": model_cache},
            "peft": {"r": 8, "alpha": 16, "modules_to_save": ["lm_head", "norm"]},
            "data": {"train": str(shards), "max_length": 96, "shuffle_buffer": 64},
            "method": {"name": "cost"},
            "train": {
                "max_steps": 100,
                "micro_batch_size": 16,
                "lr": 3e-3,
                "max_grad_norm": 0.0,
                "schedule": "constant",
                "output_dir": str(tmp_path / "run"),
            },
            "tracking": {"enabled": False},
        }
    )
    res = run_training(recipe)
    assert sum(res.losses[-5:]) < sum(res.losses[:5]) - 0.5, res.losses
    assert res.metrics[-1]["costs/labelled"] == 1.0  # every synthetic answer carries its sign

    model, processor, _ = load_exported(res.export_dir)
    head = RewardModel(model)
    head.value_head.load_state_dict(load_file(res.export_dir / "value_head.safetensors"))
    torch.manual_seed(0)
    encoder = ChatEncoder(processor, "llava", 96)
    batches = TrainLoader(
        str(shards),
        "eval",
        kind="preference",
        encoder=encoder,
        batch_size=16,
        loop=False,
        shuffle=False,
    )
    held = evaluate_cost_model(head, batches, processor.tokenizer.pad_token_id)
    assert held["pairs"] == 64
    # chance: 0.5 for the pair order and for each label (all-negative costs would score 0.75
    # overall but 0 on unsafe answers, hence the split)
    assert held["costs/pair_accuracy"] >= 0.8, held
    assert held["costs/sign_accuracy_unsafe"] >= 0.75, held
    assert held["costs/sign_accuracy_safe"] >= 0.8, held
