"""The generation engine on the built-in tiny VLMs: layout, seeding, vision once, old log-probs."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlalign.config.schema import ModelConfig
from vlalign.logprobs import token_logprobs_from_logits
from vlalign.models import build
from vlalign.models.inputs import IGNORE_INDEX
from vlalign.models.lora import vision_prefix
from vlalign.models.unwrap import unwrap
from vlalign.rollout.engine import GenerationEngine, RowSampler, SamplingSettings, sample_seed

FAMILIES = ["tiny-llava", "tiny-qwen2-vl", "tiny-idefics3"]


def prompts() -> list[dict]:
    return [
        {
            "key": "a",
            "prompt": "What is this?",
            "images": [Image.new("RGB", (32, 32), (200, 9, 9))],
        },
        {
            "key": "b",
            "prompt": "Describe the picture in detail, please.",
            "images": [Image.new("RGB", (32, 32), (9, 200, 9))],
        },
        {
            "key": "c",
            "prompt": "How do I use it?",
            "images": [Image.new("RGB", (32, 32), (9, 9, 200))],
        },
    ]


@pytest.fixture(scope="module", params=FAMILIES)
def built(request, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "model-cache"
    return build(ModelConfig(name=request.param, cache_dir=str(cache)))


def engine(built, **kw) -> GenerationEngine:
    settings = SamplingSettings(**{"n": 3, "max_new_tokens": 6, **kw})
    return GenerationEngine(built.model, built.processor, built.family, settings)


def test_rollout_layout_and_vision_tower_runs_once(built) -> None:
    """P = 3 prompts x n = 3 -> N = 9 rows, right padded; the response mask covers exactly the
    generated tokens (EOS included); old log-probs are 0 off the response and < 0 on it; rows of
    a prompt are consecutive. The vision tower runs ONCE for the whole rollout (generation and
    the log-prob pass share its features), on the P images, not on N."""
    vision = unwrap(built.model).get_submodule(vision_prefix(built.model))
    calls: list[int] = []
    hook = vision.register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        r = engine(built).rollout(prompts(), step=0)
    finally:
        hook.remove()
    assert len(calls) == 1
    N, T = r.input_ids.shape
    assert N == 9 and r.attention_mask.shape == (N, T) == r.old_logps.shape == r.labels.shape
    assert r.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert r.response_mask.sum(1).tolist() == r.response_lengths.tolist()
    assert ((r.response_lengths >= 1) & (r.response_lengths <= 6)).all()
    assert (r.old_logps[~r.response_mask] == 0).all()
    assert (r.old_logps[r.response_mask] < 0).all()
    assert r.old_logps.dtype == torch.float32
    # right padding: attention ones then zeros; responses end where the attention ends
    lengths = r.attention_mask.sum(1)
    for i in range(N):
        assert (
            r.attention_mask[i, : lengths[i]].all() and not r.attention_mask[i, lengths[i] :].any()
        )
        resp_cols = r.response_mask[i].nonzero().squeeze(1)
        assert resp_cols.tolist() == list(range(lengths[i] - r.response_lengths[i], lengths[i]))
    assert len(r.texts) == N
    # a truncated row has max_new_tokens response tokens and no EOS
    assert (r.response_lengths[r.truncated] == 6).all()


def test_same_seed_step_and_key_regenerate_the_same_samples(built) -> None:
    """A fresh engine (as after a resume) regenerates identical tokens and log-probs for the same
    (seed, step, keys); another step or seed samples differently. A prompt's samples do not
    depend on its batch-mates: prompt b alone gets the rows it got beside a and c."""
    a = engine(built).rollout(prompts(), step=5)
    b = engine(built).rollout(prompts(), step=5)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.old_logps, b.old_logps)
    assert a.texts == b.texts
    other_step = engine(built).rollout(prompts(), step=6)
    other_seed = engine(built, seed=1).rollout(prompts(), step=5)
    assert not torch.equal(a.labels, other_step.labels)
    assert not torch.equal(a.labels, other_seed.labels)
    alone = engine(built).rollout(prompts()[1:2], step=5)
    rows = a.prompt_index == 1
    resp = [a.input_ids[i][a.response_mask[i]].tolist() for i in rows.nonzero().squeeze(1)]
    resp_alone = [alone.input_ids[i][alone.response_mask[i]].tolist() for i in range(3)]
    assert resp == resp_alone
    # the n samples of one prompt differ from each other (their own seeds)
    assert len({tuple(x) for x in resp}) > 1


def test_old_logps_equal_a_naive_per_row_forward(built) -> None:
    """Each row alone (no padding), its image passed as pixels (the vision tower runs inside the
    forward), full logits and log_softmax: the same per-token log-probs within 1e-5."""
    eng = engine(built)
    r = eng.rollout(prompts(), step=1)
    model = built.model
    for i in range(r.input_ids.shape[0]):
        p = prompts()[int(r.prompt_index[i])]
        batch = eng.prompt_batch([p])  # the prompt alone: no padding, pixels
        n = int(r.attention_mask[i].sum())
        ids = r.input_ids[i : i + 1, :n]
        kw = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
        if "mm_token_type_ids" in kw:
            P = kw["mm_token_type_ids"].shape[1]
            kw["mm_token_type_ids"] = torch.nn.functional.pad(kw["mm_token_type_ids"], (0, n - P))
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **kw).logits
        ref = token_logprobs_from_logits(logits, r.labels[i : i + 1, :n])
        torch.testing.assert_close(r.old_logps[i : i + 1, :n], ref, atol=1e-5, rtol=1e-5)
        assert (r.labels[i, :n][: n - int(r.response_lengths[i])] == IGNORE_INDEX).all()


def test_placeholder_tokens_are_never_sampled(built) -> None:
    """The image (and video) placeholder ids are banned: a sampled one would have no features."""
    eng = engine(built, n=4, max_new_tokens=8, temperature=2.0)
    r = eng.rollout(prompts(), step=0)
    banned = torch.tensor(eng.placeholder_ids())
    assert not torch.isin(r.input_ids[r.response_mask], banned).any()


def _inverse_cdf(probs: torch.Tensor, u: float) -> int:
    """The first token whose cumulative probability exceeds u x total (a plain loop)."""
    total, acc = float(probs.sum()), 0.0
    for k, q in enumerate(probs.tolist()):
        acc += q
        if acc > u * total and q > 0:
            return k
    return max(k for k, q in enumerate(probs.tolist()) if q > 0)


def test_row_sampler_frequencies_match_the_distribution() -> None:
    """1000 steps x 4 rows: each token's frequency within 4 standard errors of its probability
    (top-p 0.5 keeps {0.3, 0.4} -> [0, 0, 3/7, 4/7])."""
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    sampler = RowSampler([sample_seed(1, 0, "k", j) for j in range(4)], 1.0, 0.5)
    ids = torch.zeros(4, 1, dtype=torch.long)
    counts = torch.zeros(4)
    steps = 1000
    for _ in range(steps):
        counts += torch.zeros(4).index_add_(
            0, sampler(ids, p.log().repeat(4, 1)).argmax(1), torch.ones(4)
        )
    expected = torch.tensor([0.0, 0.0, 3 / 7, 4 / 7])
    freq = counts / (4 * steps)
    se = (expected * (1 - expected) / (4 * steps)).sqrt()
    assert (freq[:2] == 0).all()
    assert ((freq - expected).abs()[2:] < 4 * se[2:]).all(), freq


def test_row_sampler_draws_from_the_tempered_top_p_distribution() -> None:
    """Each row's draw is the inverse-CDF draw over the expected distribution with a uniform
    from the row's own generator, step after step (200 steps x 4 rows, compared exactly):
    logits ln [0.1, 0.2, 0.3, 0.4] at temperature 0.5 -> softmax(2 ln p) = p^2 / sum p^2;
    top_p 0.5 keeps the smallest set with mass >= 0.5, {0.4, 0.3} -> [0, 0, 3/7, 4/7];
    banned token 3 -> [1/6, 2/6, 3/6, 0]. Rows with other seeds draw differently."""
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = p.log().repeat(4, 1)
    ids = torch.zeros(4, 1, dtype=torch.long)
    seeds = [sample_seed(0, 0, "k", j) for j in range(4)]
    ninf = float("-inf")
    cases = [
        (RowSampler(seeds, 0.5, 1.0), (p**2 / (p**2).sum()), torch.log(p) / 0.5),
        (
            RowSampler(seeds, 1.0, 0.5),
            torch.tensor([0, 0, 3 / 7, 4 / 7]),
            torch.log(p).masked_fill(torch.tensor([True, True, False, False]), ninf),
        ),
        (
            RowSampler(seeds, 1.0, 1.0, banned=[3]),
            torch.tensor([1 / 6, 2 / 6, 3 / 6, 0]),
            torch.log(p).masked_fill(torch.tensor([False, False, False, True]), ninf),
        ),
    ]
    for sampler, expected, expected_logits in cases:
        probs = torch.softmax(expected_logits, dim=-1)
        assert probs.tolist() == pytest.approx(expected.tolist(), abs=1e-6)
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        draws = []
        for _ in range(200):
            out = sampler(ids, logits.clone())
            assert ((out == 0).sum(1) == 1).all() and (out[out != 0] == ninf).all()
            got = out.argmax(1)
            want = torch.tensor(
                [_inverse_cdf(probs, float(torch.rand(1, generator=g))) for g in gens]
            )
            assert torch.equal(got, want)
            draws.append(got)
        draws = torch.stack(draws)  # [200, 4]
        assert not all(torch.equal(draws[:, 0], draws[:, j]) for j in (1, 2, 3))
        assert (draws.flatten().bincount(minlength=4)[expected == 0] == 0).all()
    assert sample_seed(0, 1, "k", 0) != sample_seed(0, 0, "k", 0) != sample_seed(1, 0, "k", 0)


def test_layout_cuts_at_the_first_eos_and_keeps_it_as_a_response_token(built) -> None:
    """Left-padded prompts [pad, 5, 6] and [7, 8, 9]; generated [11, EOS, pad, pad] and
    [12, 13, 14, 15] (no EOS): row 0 -> [5, 6, 11, EOS] + padding, response length 2 (EOS
    included, so the policy learns to stop), not truncated, text without EOS; row 1 ->
    [7, 8, 9, 12, 13, 14, 15], length 4, truncated. Labels cover the responses only."""
    eng = engine(built)
    eos, pad = min(eng.eos), eng.pad_id
    prompt_ids = torch.tensor([[pad, 5, 6], [7, 8, 9]])
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    new = torch.tensor([[11, eos, pad, pad], [12, 13, 14, 15]])
    out = eng._layout(prompt_ids, prompt_mask, new, None)
    assert out["input_ids"].tolist() == [[5, 6, 11, eos, pad, pad, pad], [7, 8, 9, 12, 13, 14, 15]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0], [1] * 7]
    assert out["labels"].tolist() == [
        [-100, -100, 11, eos, -100, -100, -100],
        [-100, -100, -100, 12, 13, 14, 15],
    ]
    assert out["response_lengths"].tolist() == [2, 4]
    assert out["truncated"].tolist() == [False, True]
    tok = eng.tokenizer
    assert out["texts"][0] == tok.decode([11], skip_special_tokens=True).strip()


def test_select_gives_mini_batches_with_their_own_images(built) -> None:
    """Rows 7, 1, 4 (prompts 2, 0, 1, out of order) as a mini-batch: the forward on `select`'s
    batch, with the rollout's features for exactly those rows, reproduces their old log-probs."""
    from vlalign.rollout.engine import token_forward

    r = engine(built).rollout(prompts(), step=2)
    mb = r.select([7, 1, 4])
    assert mb["input_ids"].shape == (3, r.input_ids.shape[1])
    with torch.no_grad():
        lp = token_forward(
            built.model, mb["input_ids"], mb["attention_mask"], mb["labels"], mb["extra"]
        )
    torch.testing.assert_close(lp, mb["old_logps"], rtol=0, atol=1e-5)
    assert torch.equal(mb["old_logps"], r.old_logps[[7, 1, 4]])
