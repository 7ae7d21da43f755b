"""The training core on the tiny LLaVA (export and packing on every built-in family), fp32, CPU:
learning, equivalences, resume, export, reference.

Every run here is a real DeepSpeed engine over a gloo group; multi-rank runs spawn local
processes (`launch_local`). Losses are compared, never timed.
"""

from __future__ import annotations

import math

import pytest
import torch

from vlalign.catalog import builtin_models
from vlalign.config import Recipe
from vlalign.training.context import TrainContext
from vlalign.training.export import load_exported
from vlalign.training.launch import launch_local
from vlalign.training.loop import run_training


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    from data_pipeline.synth import synthesize

    out = tmp_path_factory.mktemp("shards")
    synthesize(out, pairs=64, seed=3)
    return str(out)


def recipe(tmp_path, shards, model_cache, name="t", model="tiny-llava", **sections) -> Recipe:
    base = {
        "name": name,
        "model": {"name": model, "cache_dir": model_cache},
        "peft": {"r": 4, "alpha": 8, "modules_to_save": ["lm_head", "norm"]},
        "data": {"train": shards, "max_length": 96, "shuffle_buffer": 0},
        "method": {"name": "dpo", "beta": 0.1, "reference_cache_dir": str(tmp_path / "refcache")},
        "train": {
            "max_steps": 4,
            "micro_batch_size": 4,
            "lr": 1e-3,
            "max_grad_norm": 0.0,
            "schedule": "constant",
            "output_dir": str(tmp_path / name),
        },
        "tracking": {"enabled": False},
    }
    for k, v in sections.items():
        if k == "method" and v.get("name", "dpo") != "dpo":  # another method's own section
            base[k] = dict(v)
            continue
        base[k] = {**base.get(k, {}), **v}
    return Recipe.model_validate(base)


def test_dpo_learns_within_a_few_dozen_steps(tmp_path, shards, model_cache):
    r = recipe(
        tmp_path,
        shards,
        model_cache,
        train={"max_steps": 30, "lr": 2e-3},
        data={"shuffle_buffer": 64},
    )
    res = run_training(r)
    first = sum(res.losses[:3]) / 3
    last = sum(res.losses[-3:]) / 3
    acc_first = sum(m["rewards/accuracies"] for m in res.metrics[:3]) / 3
    acc_last = sum(m["rewards/accuracies"] for m in res.metrics[-3:]) / 3
    assert last < first - 0.1, res.losses
    assert acc_last > acc_first and acc_last >= 0.75, (acc_first, acc_last)
    for key in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "grad_norm",
        "lr",
        "tokens_per_s",
        "data_wait_s",
    ):
        assert key in res.metrics[-1], key
    assert res.metrics[-1]["tokens_per_s"] > 0
    # ZeRO-0 fp32: DeepSpeed drops the norm it clips with; the loop measures it itself
    norms = [m["grad_norm"] for m in res.metrics]
    assert all(math.isfinite(n) and n > 0 for n in norms), norms


def test_microbatch_times_accumulation_equivalence(tmp_path, shards, model_cache):
    a = run_training(
        recipe(tmp_path, shards, model_cache, "a", train={"micro_batch_size": 4, "grad_accum": 1})
    )
    b = run_training(
        recipe(tmp_path, shards, model_cache, "b", train={"micro_batch_size": 1, "grad_accum": 4})
    )
    assert a.losses == pytest.approx(b.losses, abs=1e-5)


def test_sft_token_normalization_is_exact_across_accumulation(tmp_path, shards, model_cache):
    m = {"name": "sft"}
    a = run_training(
        recipe(tmp_path, shards, model_cache, "sa", method=m, train={"micro_batch_size": 4})
    )
    b = run_training(
        recipe(
            tmp_path,
            shards,
            model_cache,
            "sb",
            method=m,
            train={"micro_batch_size": 2, "grad_accum": 2},
        )
    )
    assert a.losses == pytest.approx(b.losses, abs=1e-5)
    assert a.losses[-1] < a.losses[0]


def test_resume_equals_uninterrupted(tmp_path, shards, model_cache):
    train = {"max_steps": 6, "checkpoint_every": 3, "schedule": "cosine", "warmup_steps": 2}
    full = run_training(
        recipe(tmp_path, shards, model_cache, "full", train=train, data={"shuffle_buffer": 32})
    )
    r = recipe(tmp_path, shards, model_cache, "cut", train=train, data={"shuffle_buffer": 32})
    part = run_training(r, TrainContext(stop_after=3))  # as if killed after the step-3 checkpoint
    assert len(part.losses) == 3 and part.export_dir is None
    rest = run_training(r)  # a new process would find checkpoints/latest the same way
    assert rest.resumed_from_step == 3
    assert rest.losses == pytest.approx(
        full.losses, abs=1e-6
    )  # losses so far travel in the checkpoint
    assert rest.metrics[-1]["lr"] == pytest.approx(full.metrics[-1]["lr"])


@pytest.mark.parametrize("builtin", list(builtin_models()))
def test_exported_adapter_reloads_with_identical_outputs(tmp_path, shards, model_cache, builtin):
    from data_pipeline.reader import TrainLoader
    from vlalign.methods.forward import image_inputs, token_type_inputs
    from vlalign.models.inputs import ChatEncoder

    r = recipe(tmp_path, shards, model_cache, "exp", model=builtin, method={"name": "sft"})
    res = run_training(r)
    assert (res.export_dir / "adapter_model.safetensors").is_file()
    model, processor, rec = load_exported(res.export_dir)
    assert rec.name == "exp"
    enc = ChatEncoder(processor, r.family, 96)
    batch = next(
        iter(
            TrainLoader(
                shards, "train", kind="sft", encoder=enc, batch_size=2, loop=False, shuffle=False
            )
        )
    )
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        **image_inputs(batch),
        **token_type_inputs(batch),
    }
    with torch.no_grad():
        out = model(**inputs).logits
        # Same weights as training ended with: rebuild the trained model from the last checkpoint.
        from peft import PeftModel

        from vlalign.models import build

        base = build(r.model).model
        again = PeftModel.from_pretrained(base, str(res.export_dir)).eval()
        out2 = again(**inputs).logits
        with model.disable_adapter():
            base_out = model(**inputs).logits
    assert torch.equal(out, out2)
    assert not torch.allclose(out, base_out)  # the adapter (and saved modules) changed something


def test_precomputed_reference_equals_live_reference(tmp_path, shards, model_cache):
    live = run_training(recipe(tmp_path, shards, model_cache, "live"))
    pre = recipe(tmp_path, shards, model_cache, "pre", method={"reference": "precomputed"})
    cached = run_training(pre)
    assert cached.losses == pytest.approx(live.losses, abs=1e-5)
    files = list((tmp_path / "refcache").glob("*.json"))
    assert len(files) == 1
    again = run_training(
        recipe(tmp_path, shards, model_cache, "pre2", method={"reference": "precomputed"})
    )
    assert list((tmp_path / "refcache").glob("*.json")) == files  # reused, not recomputed
    assert again.losses == pytest.approx(cached.losses, abs=1e-6)


def test_reward_model_learns_preferences(tmp_path, shards, model_cache):
    r = recipe(
        tmp_path,
        shards,
        model_cache,
        "rm",
        method={"name": "reward"},
        train={"max_steps": 60, "lr": 3e-3, "micro_batch_size": 8},
        data={"shuffle_buffer": 64},
    )
    res = run_training(r)
    acc_last = sum(m["rewards/accuracies"] for m in res.metrics[-10:]) / 10
    assert sum(res.losses[-5:]) < sum(res.losses[:5]) - 0.5, res.losses
    assert acc_last >= 0.7, [m["rewards/accuracies"] for m in res.metrics]
    assert (res.export_dir / "value_head.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_zero_reproduce_single_process(tmp_path, shards, model_cache, stage):
    single = run_training(
        recipe(tmp_path, shards, model_cache, f"one{stage}", train={"max_steps": 3})
    )
    two = launch_local(
        recipe(
            tmp_path,
            shards,
            model_cache,
            f"two{stage}",
            train={"max_steps": 3, "micro_batch_size": 2},
            engine={"zero_stage": stage},
        ),
        nproc=2,
    )
    assert two.losses == pytest.approx(single.losses, abs=1e-5)
    # the norm the loop measures without ZeRO is the one DeepSpeed's ZeRO optimizers report
    single_norms = [m["grad_norm"] for m in single.metrics]
    assert [m["grad_norm"] for m in two.metrics] == pytest.approx(single_norms, rel=1e-4)


@pytest.mark.parametrize("builtin", list(builtin_models()))
def test_packed_prefix_training_equals_unpacked(tmp_path, shards, model_cache, builtin):
    plain = run_training(
        recipe(tmp_path, shards, model_cache, "plain", model=builtin, train={"max_steps": 3})
    )
    packed = run_training(
        recipe(
            tmp_path,
            shards,
            model_cache,
            "packed",
            model=builtin,
            train={"max_steps": 3},
            method={"pack_prefix": True},
        )
    )
    assert packed.losses == pytest.approx(plain.losses, abs=1e-5)


def test_kto_learns_and_resumes_exactly(tmp_path, shards, model_cache):
    """KTO on the synthetic pairs split into desirable/undesirable answers: the loss falls, the
    desirable answers' implied reward rises above the undesirable ones', and a run cut at a
    checkpoint and resumed reproduces the uninterrupted losses."""
    kto = {"name": "kto", "beta": 0.1}
    r = recipe(
        tmp_path,
        shards,
        model_cache,
        "kto",
        method=kto,
        train={"max_steps": 30, "lr": 2e-3},
        data={"shuffle_buffer": 64},
    )
    res = run_training(r)
    first, last = sum(res.losses[:3]) / 3, sum(res.losses[-3:]) / 3
    assert last < first - 0.02, res.losses
    margins = [m["rewards/margins"] for m in res.metrics[-5:]]
    assert sum(margins) / len(margins) > 0, margins
    assert all(m["kl"] >= 0 for m in res.metrics)
    train = {"max_steps": 4, "checkpoint_every": 2}
    full = run_training(recipe(tmp_path, shards, model_cache, "kf", method=kto, train=train))
    cut = recipe(tmp_path, shards, model_cache, "kc", method=kto, train=train)
    run_training(cut, TrainContext(stop_after=2))
    rest = run_training(cut)
    assert rest.resumed_from_step == 2
    assert rest.losses == pytest.approx(full.losses, abs=1e-6)
