"""Rollout backends: prompts split across rollout actors, their rollouts concatenated in order
(equal to the one-engine layout), the local backend, and the recipe choice."""

from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vlalign.rollout.actor import rollout_to
from vlalign.rollout.backend import (
    LocalBackend,
    RolloutBackend,
    build_backend,
    concat_rollouts,
    split_evenly,
)
from vlalign.rollout.engine import Rollout

PAD = 7


def test_split_evenly_contiguous_in_order() -> None:
    assert split_evenly(5, 2) == [(0, 3), (3, 5)]
    assert split_evenly(4, 2) == [(0, 2), (2, 4)]
    assert split_evenly(1, 3) == [(0, 1)]  # never an empty chunk
    assert split_evenly(6, 4) == [(0, 2), (2, 4), (4, 5), (5, 6)]


def _rollout(lengths: list[int], prompt_len: int, n: int, first_token: int) -> Rollout:
    """Right-padded rows: prompt tokens then response tokens; row i has lengths[i] tokens.
    Per prompt one image of 2 feature rows (pooler_output: list of [2, 3])."""
    T = max(lengths)
    N = len(lengths)
    ids = torch.full((N, T), PAD)
    mask = torch.zeros(N, T, dtype=torch.long)
    labels = torch.full((N, T), -100)
    logps = torch.zeros(N, T)
    for i, L in enumerate(lengths):
        ids[i, :L] = torch.arange(first_token + 10 * i, first_token + 10 * i + L)
        mask[i, :L] = 1
        labels[i, prompt_len:L] = ids[i, prompt_len:L]
        logps[i, prompt_len:L] = -0.5 - i
    P = N // n
    return Rollout(
        input_ids=ids,
        attention_mask=mask,
        labels=labels,
        response_mask=labels != -100,
        old_logps=logps,
        prompt_index=torch.arange(P).repeat_interleave(n),
        response_lengths=torch.tensor([L - prompt_len for L in lengths]),
        truncated=torch.tensor([False] * N),
        texts=[f"r{first_token}-{i}" for i in range(N)],
        n=n,
        features=BaseModelOutputWithPooling(
            pooler_output=[torch.full((2, 3), float(first_token + p)) for p in range(P)]
        ),
        image_counts=[1] * P,
        prompt_images={"image_grid_thw": torch.tensor([[1, 2, 2]] * P) + first_token},
    )


def test_concat_equals_the_one_batch_layout() -> None:
    """Rows of 2 prompts x n=2: part A (prompt 0, rows of 6 and 4 tokens, T=6) and part B
    (prompt 1, rows of 5 and 3 tokens, T=5). Concatenated: [4, 6] with B's rows padded by one
    more PAD / 0 / -100 / 0.0, prompt_index [0, 0, 1, 1], features and grid rows in order."""
    a = _rollout([6, 4], prompt_len=2, n=2, first_token=100)
    b = _rollout([5, 3], prompt_len=2, n=2, first_token=200)
    out = concat_rollouts([a, b], PAD)
    assert out.input_ids.shape == (4, 6)
    assert out.input_ids[2].tolist() == [200, 201, 202, 203, 204, PAD]
    assert out.attention_mask[3].tolist() == [1, 1, 1, 0, 0, 0]
    assert out.labels[3].tolist() == [-100, -100, 212, -100, -100, -100]
    assert not out.response_mask[2, 5]
    assert out.old_logps[3].tolist() == [0.0, 0.0, -1.5, 0.0, 0.0, 0.0]
    assert out.prompt_index.tolist() == [0, 0, 1, 1]
    assert out.response_lengths.tolist() == [4, 2, 3, 1]
    assert out.texts == ["r100-0", "r100-1", "r200-0", "r200-1"]
    assert [float(f[0, 0]) for f in out.features.pooler_output] == [100.0, 200.0]
    assert out.image_counts == [1, 1]
    assert out.prompt_images["image_grid_thw"][:, 0].tolist() == [101, 201]
    # the rows read their own prompt's features (what the trainer's forward receives)
    feats = out.forward_kwargs([3, 0])["mm_encoder_outputs"]["image"].pooler_output
    assert [float(f[0, 0]) for f in feats] == [200.0, 100.0]


def test_concat_of_one_part_and_rollout_to() -> None:
    a = _rollout([3, 3], prompt_len=1, n=2, first_token=0)
    assert concat_rollouts([a], PAD) is a
    moved = rollout_to(a, "cpu")
    assert torch.equal(moved.old_logps, a.old_logps)
    assert moved.features.pooler_output[0] is not None


def test_local_backend_is_the_engine_and_has_nothing_to_sync() -> None:
    class Engine:
        def rollout(self, prompts, step):
            return ("rolled", len(prompts), step)

    b = LocalBackend(Engine())  # type: ignore[arg-type]
    assert isinstance(b, RolloutBackend)
    assert b.rollout([{}, {}], 3) == ("rolled", 2, 3)
    assert b.sync(None) == {}  # type: ignore[arg-type]


def test_build_backend_local_placement() -> None:
    from vlalign.config import Recipe

    r = Recipe.model_validate(
        {"name": "x", "model": {"name": "tiny-llava"}, "method": {"name": "grpo"}}
    )
    assert isinstance(build_backend(r, object()), LocalBackend)  # type: ignore[arg-type]


def test_build_backend_ray_needs_lora() -> None:
    """Full fine-tuning cannot sync through adapters: a one-line error before any actor."""
    import pytest

    from vlalign.config import Recipe
    from vlalign.rollout.weights import WeightSyncError

    r = Recipe.model_validate(
        {
            "name": "x",
            "model": {"name": "tiny-llava"},
            "peft": {"mode": "full"},
            "method": {"name": "grpo", "rollout": {"placement": "ray"}},
        }
    )
    with pytest.raises(WeightSyncError, match="peft.mode lora"):
        build_backend(r, object())  # type: ignore[arg-type]


def test_parity_metrics_worst_actor_or_an_error_naming_the_numbers() -> None:
    import pytest

    from vlalign.rollout.backend import parity_metrics
    from vlalign.rollout.weights import ParityResult, WeightSyncError

    ok = [ParityResult(0.0, 1e-4, 3), ParityResult(2e-5, 1e-4, 3)]
    assert parity_metrics(ok) == {
        "sync/parity_max_abs_diff": 2e-5,
        "sync/parity_ok": 1.0,
        "sync/version": 3.0,
    }
    bad = [ParityResult(0.0, 1e-4, 4), ParityResult(0.25, 1e-4, 4)]
    with pytest.raises(WeightSyncError, match=r"v4: rollout actor 1.* 0\.25 > .*0\.0001"):
        parity_metrics(bad)
