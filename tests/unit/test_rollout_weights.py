"""Trainer -> rollout LoRA sync: state round trip, parity check before and after an update."""

from __future__ import annotations

import pickle

import pytest
import torch

from vlalign.config.schema import ModelConfig, PeftConfig
from vlalign.models import apply_peft, build
from vlalign.rollout.engine import token_forward
from vlalign.rollout.weights import (
    PARITY_TOLERANCE,
    AdapterUpdate,
    WeightSyncError,
    adapter_state,
    apply_update,
    make_probe,
    make_update,
    parity,
    probe_logprobs,
)

FAMILIES = ["tiny-llava", "tiny-qwen2-vl", "tiny-idefics3"]


def policy(name: str, cache: str, peft: PeftConfig):
    built = build(ModelConfig(name=name, cache_dir=cache))
    return built, apply_peft(built.model, peft, seed=0)


def train_one_step(model, probe) -> None:
    """One AdamW step (lr 1e-2) on the probe's NLL: every trainable tensor moves."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    lp = token_forward(model, probe.input_ids, probe.attention_mask, probe.labels, probe.extra)
    (-lp.sum()).backward()
    opt.step()
    opt.zero_grad()


@pytest.mark.parametrize("name", FAMILIES)
def test_sync_makes_rollout_logprobs_equal_and_without_it_they_differ(name, model_cache) -> None:
    """Trainer and rollout start from the same base and adapter seed (parity 0). After one
    optimizer step on the trainer, the stale rollout differs by more than the tolerance; after
    the update travels (pickled, as through Ray's object store) and loads, the difference is 0
    (same weights, same kernels) and the metric says so. lm_head + norm in modules_to_save are
    part of the state and move too."""
    peft = PeftConfig(r=4, alpha=8, dropout=0.1, modules_to_save=["lm_head"])
    built, trainer = policy(name, model_cache, peft)
    _, rollout = policy(name, model_cache, peft)
    probe = make_probe(built.processor, built.family)
    assert (probe.labels != -100).sum() > 3
    start = parity(rollout, probe, probe_logprobs(trainer, probe))
    assert start.max_abs_diff == 0.0 and start.ok

    train_one_step(trainer, probe)
    stale = parity(rollout, probe, probe_logprobs(trainer, probe), version=1)
    assert stale.max_abs_diff > 10 * PARITY_TOLERANCE
    assert not stale.ok and stale.metrics()["sync/parity_ok"] == 0.0

    update = pickle.loads(pickle.dumps(make_update(trainer, probe, version=1)))
    assert isinstance(update, AdapterUpdate)
    assert all(v.device.type == "cpu" and not v.requires_grad for v in update.state.values())
    assert any("lora_A" in k for k in update.state) and any("lm_head" in k for k in update.state)
    result = apply_update(rollout, update, probe, strict=True)
    assert result.max_abs_diff == 0.0
    assert result.metrics() == {
        "sync/parity_max_abs_diff": 0.0,
        "sync/parity_ok": 1.0,
        "sync/version": 1.0,
    }
    # the rollout's whole adapter now equals the trainer's, and the trainer still trains
    assert all(torch.equal(v, adapter_state(rollout)[k]) for k, v in adapter_state(trainer).items())
    assert trainer.training


def test_parity_failure_is_reported_and_strict_raises(model_cache) -> None:
    """An update whose probe log-probs do not match the loaded weights (a stand-in for a broken
    sync) fails parity; strict mode raises with the difference and the tolerance."""
    peft = PeftConfig(r=4, alpha=8)
    built, trainer = policy("tiny-llava", model_cache, peft)
    _, rollout = policy("tiny-llava", model_cache, peft)
    probe = make_probe(built.processor, built.family)
    good = make_update(trainer, probe, version=3)
    bad = AdapterUpdate(good.state, 3, good.probe_logps + 0.01)
    assert not apply_update(rollout, bad, probe).ok
    with pytest.raises(WeightSyncError, match="tolerance"):
        apply_update(rollout, bad, probe, strict=True)


def test_mismatched_adapters_and_non_peft_models_are_refused(model_cache) -> None:
    """A state with LoRA targets the rollout lacks is an error, not a silent partial load; a
    model without an adapter cannot be synced this way."""
    built, trainer = policy("tiny-llava", model_cache, PeftConfig(r=4, include_projector=True))
    _, rollout = policy("tiny-llava", model_cache, PeftConfig(r=4))
    probe = make_probe(built.processor, built.family)
    with pytest.raises(WeightSyncError, match="lacks"):
        apply_update(rollout, make_update(trainer, probe, 0), probe)
    with pytest.raises(WeightSyncError, match="PEFT"):
        adapter_state(build(ModelConfig(name="tiny-llava", cache_dir=model_cache)).model)
