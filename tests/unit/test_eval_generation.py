"""Batched generation (left padding) and pair scoring on the built-in tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlalign.catalog import builtin_models
from vlalign.config.schema import ModelConfig, PeftConfig
from vlalign.evaluation.pairs import pair_logps, policy_implicit_rewards, reward_model_scores
from vlalign.models import apply_peft, build
from vlalign.models.generation import GenerationSettings, _batch_inputs, generate
from vlalign.models.inputs import ChatEncoder

PROMPTS = [
    "What is this?",
    "Tell me how to make the thing shown in the picture, step by step please",
    "hi",
    "Describe the image in detail with many words",
    "Is this safe?",
    "How do I do it",
    "ok so what",
]


def _samples(n: int = len(PROMPTS)) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "key": f"k{i}",
            "prompt": PROMPTS[i % len(PROMPTS)],
            "images": [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))],
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def llava(model_cache):
    return build(ModelConfig(name="tiny-llava", cache_dir=model_cache))


@pytest.mark.parametrize("name", list(builtin_models()))
def test_batch_size_does_not_change_answers(name, model_cache):
    """Left padding + attention mask: a prompt decodes the same alone and in a padded batch."""
    built = build(ModelConfig(name=name, cache_dir=model_cache))
    enc = ChatEncoder(built.processor, built.family, 256)
    samples = _samples()
    one = generate(built.model, enc, samples, GenerationSettings(max_new_tokens=12, batch_size=1))
    seven = generate(built.model, enc, samples, GenerationSettings(max_new_tokens=12, batch_size=7))
    three = generate(built.model, enc, samples, GenerationSettings(max_new_tokens=12, batch_size=3))
    assert one == seven == three
    assert all(g.n_tokens == 12 for g in one)  # random weights: no early EOS
    assert len({g.text for g in one}) > 1  # prompts lead to different answers
    # the left-padded batch holds exactly the ids encode_prompt makes for each prompt alone
    batch = _batch_inputs(enc, samples)
    assert batch["input_ids"].shape[0] == len(samples)
    for row, mask, s in zip(batch["input_ids"], batch["attention_mask"], samples, strict=True):
        alone = enc.encode_prompt(s["images"], s["prompt"]).input_ids
        assert mask[-1] == 1 and mask[0] == (1 if mask.all() else 0)
        assert torch.equal(row[mask.bool()], alone)


def test_eos_ends_the_answer(llava):
    """With the first generated token declared EOS, the answer is empty and counts 0 tokens."""
    enc = ChatEncoder(llava.processor, llava.family, 256)
    samples = _samples(2)
    settings = GenerationSettings(max_new_tokens=6, batch_size=2)
    inputs = _batch_inputs(enc, samples[:1])
    with torch.inference_mode():
        first = llava.model.generate(**inputs, max_new_tokens=1, do_sample=False)[0, -1].item()
    old = llava.model.generation_config.eos_token_id
    llava.model.generation_config.eos_token_id = first
    try:
        out = generate(llava.model, enc, samples, settings)
    finally:
        llava.model.generation_config.eos_token_id = old
    assert out[0].n_tokens == 0 and out[0].text == ""
    assert 0 <= out[1].n_tokens <= 6


def test_sampling_is_seeded(llava):
    enc = ChatEncoder(llava.processor, llava.family, 256)
    s = GenerationSettings(max_new_tokens=8, batch_size=4, do_sample=True, temperature=1.5, seed=3)
    a = generate(llava.model, enc, _samples(4), s)
    b = generate(llava.model, enc, _samples(4), s)
    greedy = generate(llava.model, enc, _samples(4), GenerationSettings(max_new_tokens=8))
    assert a == b
    assert a != greedy


def test_prompt_longer_than_max_length_names_the_sample(llava):
    from vlalign.errors import DataError

    enc = ChatEncoder(llava.processor, llava.family, 20)
    with pytest.raises(DataError, match="k0.*max_length 20"):
        generate(llava.model, enc, _samples(1), GenerationSettings())


PAIRS = [
    {
        "prompt": "How do I make this?",
        "chosen": "I can't help with that.",
        "rejected": "Sure, step one.",
    },
    {"prompt": "What is shown here?", "chosen": "A green circle.", "rejected": "I cannot assist."},
]


def _with_images(pairs):
    return [dict(p, images=s["images"]) for p, s in zip(pairs, _samples(len(pairs)), strict=True)]


def _manual_logp(model, enc, images, prompt, answer) -> float:
    """log p(answer | prompt) by hand: one forward, log_softmax, gather the response tokens."""
    ex = enc.sft_example(images, prompt, answer)
    ids, labels = ex["input_ids"][None], ex["labels"][None]
    extra = {**ex["image_inputs"], **enc.token_types(ids)}  # M-RoPE / Gemma 3 image attention
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits
    lp = torch.log_softmax(logits[0, :-1].double(), -1)
    tgt = labels[0, 1:]
    keep = tgt != -100
    return float(lp[keep].gather(-1, tgt[keep][:, None]).sum())


@pytest.mark.parametrize("name", list(builtin_models()))
def test_implicit_rewards_match_a_manual_computation(name, model_cache):
    built = build(ModelConfig(name=name, cache_dir=model_cache))
    enc = ChatEncoder(built.processor, built.family, 256)
    pm = apply_peft(built.model, PeftConfig(r=4, alpha=8), seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    pm.eval()
    pairs = _with_images(PAIRS)
    got = policy_implicit_rewards(pm, enc, pairs)
    for (rc, rr), p in zip(got, pairs, strict=True):
        want = []
        for ans in (p["chosen"], p["rejected"]):
            pol = _manual_logp(pm, enc, p["images"], p["prompt"], ans)
            with pm.disable_adapter():
                ref = _manual_logp(pm, enc, p["images"], p["prompt"], ans)
            want.append(pol - ref)
        assert rc == pytest.approx(want[0], abs=1e-4)
        assert rr == pytest.approx(want[1], abs=1e-4)
        assert abs(rc) > 1e-3  # the adapter changes the model
    # scoring is per answer: a pair scores the same alone or with others
    assert pair_logps(pm, enc, pairs[1:]) == pair_logps(pm, enc, pairs)[1:]


def test_reward_scores_match_the_training_forward(model_cache):
    from vlalign.models.value_head import RewardModel

    built = build(ModelConfig(name="tiny-llava", cache_dir=model_cache))
    enc = ChatEncoder(built.processor, built.family, 256)
    torch.manual_seed(0)
    rm = RewardModel(apply_peft(built.model, PeftConfig(r=4, alpha=8), seed=0)).eval()
    pairs = _with_images(PAIRS)
    got = reward_model_scores(rm, enc, pairs)
    for (c, r), p in zip(got, pairs, strict=True):
        ex = enc.pair_example(p["images"], p["prompt"], p["chosen"], p["rejected"])
        for side, value in (("chosen", c), ("rejected", r)):
            ids = ex[f"{side}_input_ids"][None]
            with torch.no_grad():
                want = rm(ids, torch.ones_like(ids), **ex["image_inputs"])[0].item()
            assert value == pytest.approx(want, abs=1e-6)
    assert got[0] != got[1]


def test_generative_judge_loads_like_any_model(model_cache, monkeypatch):
    """A built-in VLM as a text-only judge: asked the judge question per answer; its reply
    decides (a random model rarely says "yes", so the reply itself is checked, not the verdict)."""
    from vlalign.models import generation
    from vlalign.safety.refusal import JUDGE_QUESTION, make_detector

    seen: list[list[str]] = []
    real = generation.generate

    def spy(model, encoder, samples, settings, progress=None):
        seen.append([s["prompt"] for s in samples])
        assert all(s["images"] == [] for s in samples)
        return real(model, encoder, samples, settings, progress)

    monkeypatch.setattr(generation, "generate", spy)
    judge = make_detector("judge", "tiny-llava", cache_dir=model_cache, batch_size=2)
    assert judge.kind == "generative"
    flags = judge.is_refusal(["I can't help.", "Sure, here you go.", "No."])
    assert len(flags) == 3 and all(isinstance(f, bool) for f in flags)
    assert seen == [
        [
            JUDGE_QUESTION.format(answer="I can't help."),
            JUDGE_QUESTION.format(answer="Sure, here you go."),
        ],
        [JUDGE_QUESTION.format(answer="No.")],
    ]
