"""A rollout actor on a local Ray cluster: weights travel through the object store, parity is
checked in the actor, and its samples equal a local engine's with the same weights."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlalign.config.schema import ModelConfig, PeftConfig
from vlalign.models import apply_peft, build
from vlalign.rollout.engine import GenerationEngine, SamplingSettings, token_forward
from vlalign.rollout.weights import apply_update, make_probe, make_update

pytestmark = pytest.mark.slow

PEFT = PeftConfig(r=4, alpha=8, modules_to_save=["lm_head"])
SETTINGS = SamplingSettings(n=2, max_new_tokens=5)


def test_rollout_actor_syncs_through_the_object_store(model_cache) -> None:
    """Trainer (driver) takes one optimizer step, ray.put's the update; the actor loads it and
    reports parity 0; its rollout (pickled back) equals a local engine's on the trainer's
    weights, tokens and old log-probs alike."""
    import ray

    # Defined here so that Ray pickles it by value (a test module is not importable in workers).
    class RolloutWorker:
        """What an orchestration rollout actor holds: a policy copy and its engine."""

        def __init__(self, cache: str) -> None:
            built = build(ModelConfig(name="tiny-llava", cache_dir=cache))
            self.model = apply_peft(built.model, PEFT)
            self.engine = GenerationEngine(self.model, built.processor, built.family, SETTINGS)
            self.probe = make_probe(built.processor, built.family)

        def sync(self, update) -> dict[str, float]:
            return apply_update(self.model, update, self.probe).metrics()

        def rollout(self, prompts: list[dict], step: int):
            return self.engine.rollout(prompts, step)

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        actor = ray.remote(num_cpus=0)(RolloutWorker).remote(model_cache)
        built = build(ModelConfig(name="tiny-llava", cache_dir=model_cache))
        trainer = apply_peft(built.model, PEFT)
        probe = make_probe(built.processor, built.family)
        opt = torch.optim.AdamW([p for p in trainer.parameters() if p.requires_grad], lr=1e-2)
        lp = token_forward(
            trainer, probe.input_ids, probe.attention_mask, probe.labels, probe.extra
        )
        (-lp.sum()).backward()
        opt.step()

        ref = ray.put(make_update(trainer, probe, version=1))
        metrics = ray.get(actor.sync.remote(ref))
        assert metrics == {
            "sync/parity_max_abs_diff": 0.0,
            "sync/parity_ok": 1.0,
            "sync/version": 1.0,
        }
        prompts = [
            {"key": "a", "prompt": "What is this?", "images": [Image.new("RGB", (32, 32), "red")]},
            {"key": "b", "prompt": "Help me.", "images": [Image.new("RGB", (32, 32), "blue")]},
        ]
        remote = ray.get(actor.rollout.remote(prompts, 3))
        local = GenerationEngine(trainer, built.processor, built.family, SETTINGS).rollout(
            prompts, 3
        )
        assert torch.equal(remote.input_ids, local.input_ids)
        torch.testing.assert_close(remote.old_logps, local.old_logps, rtol=0, atol=1e-6)
        assert remote.texts == local.texts
    finally:
        ray.shutdown()
