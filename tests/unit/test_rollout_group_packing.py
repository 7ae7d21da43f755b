"""Group packing (`vlalign.rollout.group_packing`): one row [prompt, its responses] per prompt
gives the log-probs and the LoRA gradients of the unshared forward (one row per response), on
every family's tiny twin (1-D positions, M-RoPE, Idefics3, Gemma 3's bidirectional image mask),
whole rollouts and shuffled subsets;
the block mask matters; a row scored twice accumulates its gradient."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlalign.config.schema import ModelConfig, PeftConfig
from vlalign.errors import VlalignError
from vlalign.logprobs import logprobs_at
from vlalign.models import apply_peft, build
from vlalign.models.families import family_of
from vlalign.models.unwrap import unwrap
from vlalign.rollout import group_packing
from vlalign.rollout.engine import GenerationEngine, SamplingSettings, rollout_logps
from vlalign.rollout.group_packing import groups_of, pack_groups


def prompts() -> list[dict]:
    """Three prompts of different token lengths (left padding differs per prompt)."""
    texts = ["What is this?", "Tell me how to use the thing in the picture, step by step.", "Hi"]
    colours = [(220, 9, 9), (9, 220, 9), (9, 9, 220)]
    return [
        {"key": f"p{i}", "prompt": t, "images": [Image.new("RGB", (32, 32), c)], "meta": {}}
        for i, (t, c) in enumerate(zip(texts, colours, strict=True))
    ]


def _setup(name: str, model_cache, n: int = 3):
    built = build(ModelConfig(name=name, cache_dir=model_cache))
    policy = apply_peft(built.model, PeftConfig(r=4, alpha=8), seed=0)
    with torch.no_grad():  # LoRA B starts at 0: move it so the adapters matter
        for pname, p in policy.named_parameters():
            if "lora_B" in pname:
                p.copy_(torch.randn_like(p) * 0.05)
    settings = SamplingSettings(n=n, max_new_tokens=7, old_logps=False)
    engine = GenerationEngine(policy, built.processor, built.family, settings)
    # a random model seldom ends a response: read every 6th token id as an end so the
    # responses (end token included) get different lengths
    engine.eos |= set(range(0, engine.tokenizer.vocab_size, 6))
    return policy, engine.rollout(prompts(), step=0)


def _logps_and_grads(policy, ro, rows, pack: bool):
    policy.zero_grad()
    lp = rollout_logps(policy, ro, rows, chunk_size=5, pack=pack)
    weights = torch.linspace(0.5, 1.5, lp.numel()).view_as(lp)
    (lp * weights).sum().backward()
    grads = {
        n: p.grad.clone()
        for n, p in policy.named_parameters()
        if "lora_" in n and p.grad is not None
    }
    return lp.detach(), grads


@pytest.mark.parametrize(
    "name", ["tiny-llava", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-idefics3", "tiny-gemma3"]
)
def test_packed_equals_unshared_values_and_gradients(name: str, model_cache) -> None:
    policy, ro = _setup(name, model_cache)
    assert len(set(ro.response_lengths.tolist())) > 1  # responses of different lengths
    policy.train()
    for rows in (list(range(9)), [7, 0, 4, 2, 8]):  # whole rollout; a shuffled subset
        got, g_packed = _logps_and_grads(policy, ro, rows, pack=True)
        want, g_rows = _logps_and_grads(policy, ro, rows, pack=False)
        assert got.shape == want.shape == (len(rows), ro.input_ids.shape[1])
        mask = ro.response_mask[rows]
        assert (got[~mask] == 0).all() and (got[mask] != 0).all()
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
        assert g_packed.keys() == g_rows.keys() and len(g_rows) > 0
        for k in g_rows:
            torch.testing.assert_close(g_packed[k], g_rows[k], rtol=1e-4, atol=1e-6)


def test_packed_rows_hold_each_prompt_once(model_cache) -> None:
    policy, ro = _setup("tiny-llava", model_cache)
    rows = list(range(9))
    groups = groups_of(ro.prompt_index.tolist())
    assert groups == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    packed = pack_groups(
        family_of(unwrap(policy)),
        unwrap(policy),
        ro.input_ids,
        ro.attention_mask,
        ro.response_lengths,
        groups,
        pad_id=0,
    )
    prompt_lens = ro.attention_mask.sum(1) - ro.response_lengths
    want = [int(prompt_lens[g[0]] + ro.response_lengths[g].sum()) for g in groups]
    assert packed.input_ids.shape == (3, max(want))
    assert int(packed.allowed[:, 0].sum()) == 3  # one visible key for the first query of each row
    assert int(ro.attention_mask[rows].sum()) > sum(want)  # fewer tokens than one row each
    # response 2's queries see the prompt and themselves, never response 1
    g, P, L1 = 0, int(packed.prefix_lens[0]), int(ro.response_lengths[0])
    q = P + L1  # response 2's first token
    assert packed.allowed[g, q, :P].all() and not packed.allowed[g, q, P : P + L1].any()
    assert packed.allowed[g, q, q]
    assert packed.position_ids[g, q] == P  # positions restart after the prompt


def test_without_block_separation_the_logps_change(model_cache, monkeypatch) -> None:
    """The mask is what makes packing exact: with a plain causal mask over the packed row the
    later responses attend the earlier ones and their log-probs change."""
    policy, ro = _setup("tiny-llava", model_cache)
    rows = list(range(9))
    with torch.no_grad():
        exact = rollout_logps(policy, ro, rows, pack=True)
        real = group_packing.pack_groups

        def causal_only(*a, **k):
            packed = real(*a, **k)
            T = packed.input_ids.shape[1]
            valid = packed.input_ids != -1
            packed.allowed = torch.ones((T, T), dtype=torch.bool).tril()[None] & valid[:, None, :]
            return packed

        monkeypatch.setattr("vlalign.rollout.engine.pack_groups", causal_only)
        leaky = rollout_logps(policy, ro, rows, pack=True)
    first = ro.prompt_index.tolist().index(0)  # the first response of each group is unaffected
    torch.testing.assert_close(leaky[first], exact[first], rtol=0, atol=2e-5)
    assert not torch.allclose(leaky[first + 1], exact[first + 1], atol=1e-3)


def test_rows_of_one_group_must_share_the_prompt(model_cache) -> None:
    policy, ro = _setup("tiny-llava", model_cache)
    with pytest.raises(VlalignError, match="different prompts"):
        pack_groups(
            family_of(unwrap(policy)),
            unwrap(policy),
            ro.input_ids,
            ro.attention_mask,
            ro.response_lengths,
            [[0, 3]],  # rows of prompts 0 and 1 as one group
            pad_id=0,
        )


def test_repeated_rows_accumulate_their_gradient() -> None:
    """logprobs_at scores one position for several targets (every response's first token comes
    from the prompt's last position): its gradient is the sum, as plain autograd gives."""
    torch.manual_seed(0)
    logits = torch.randn(4, 11, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([1, 1, 3, 1, 0])
    targets = torch.tensor([2, 5, 7, 2, 10])
    got = logprobs_at(logits, rows, targets, chunk_size=2)
    want = torch.log_softmax(logits, -1)[rows, targets]
    torch.testing.assert_close(got, want.float(), rtol=0, atol=1e-6)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.5])
    (g_got,) = torch.autograd.grad((got * w).sum(), logits)
    (g_want,) = torch.autograd.grad((want * w.double()).sum(), logits)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-6)


def test_an_attention_without_dense_masks_falls_back_to_rows_and_says_so(
    model_cache, monkeypatch, caplog
) -> None:
    """flash-attention takes no 4D mask: the log-probs come from one row per sample, the same
    values, and a warning names the implementation (once)."""
    import vlalign.rollout.engine as eng

    policy, ro = _setup("tiny-llava", model_cache)
    rows = list(range(9))
    with torch.no_grad():
        want = rollout_logps(policy, ro, rows, pack=False)
        monkeypatch.setattr(eng, "can_pack", lambda model: False)
        monkeypatch.setattr(eng, "attention_implementation", lambda m: "flash_attention_2")
        monkeypatch.setattr(eng, "_UNPACKED_WARNED", set())
        with caplog.at_level("WARNING", logger="vlalign.rollout"):
            got = rollout_logps(policy, ro, rows, pack=True)
            rollout_logps(policy, ro, rows, pack=True)
    assert torch.equal(got, want)
    warned = [r for r in caplog.records if "flash_attention_2" in r.getMessage()]
    assert len(warned) == 1
