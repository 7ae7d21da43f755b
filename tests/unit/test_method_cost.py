"""method cost on tiny-llava: the synthetic set's safety labels reach the batch, and one step is
the Safe RLHF loss on the scalar head's costs (chosen = safer = better, rejected = worse)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from data_support import encoder_for

from data_pipeline.collate import collate_pairs
from data_pipeline.reader import iter_samples
from data_pipeline.synth import synthesize
from data_pipeline.transforms import encode_batch
from vlalign.losses.cost import cost_loss
from vlalign.methods.base import Method, Run
from vlalign.methods.cost import Cost, cost_metrics, evaluate_cost_model
from vlalign.methods.reward import score_pairs


def _cfg(**kw) -> SimpleNamespace:
    base = dict(
        name="cost",
        loss="safe_rlhf_cost",
        margin=0.0,
        sign_weight=1.0,
        share_vision=True,
        logprob_chunk=1024,
    )
    return SimpleNamespace(**{**base, **kw})


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    out = tmp_path_factory.mktemp("cost") / "ds"
    synthesize(out, pairs=8, seed=2, eval_pairs=2)
    return list(iter_samples(str(out), "train"))


@pytest.fixture(scope="module")
def enc(model_cache):
    return encoder_for("tiny-llava", model_cache)


def test_synthetic_safety_labels_reach_the_batch(samples, enc):
    """harmful prompt: chosen refusal safe (-1), rejected compliance unsafe (+1);
    benign prompt: both answers safe (-1)."""
    pad = enc.tokenizer.pad_token_id
    batch = collate_pairs(encode_batch(enc, samples, "preference"), pad)
    harmful = torch.tensor([s["meta"]["harmful"] for s in samples])
    assert harmful.any() and (~harmful).any()
    assert batch["chosen_safety_sign"].tolist() == [-1] * len(samples)
    assert batch["rejected_safety_sign"].tolist() == [1 if h else -1 for h in harmful.tolist()]
    # records without the labels (e.g. SPA-VL pairs): no sign tensors; mixed: 0 = unknown
    bare = [{**s, "meta": {"source": "x"}} for s in samples[:2]]
    assert "chosen_safety_sign" not in collate_pairs(encode_batch(enc, bare, "preference"), pad)
    mixed = collate_pairs(encode_batch(enc, [samples[0], *bare], "preference"), pad)
    assert mixed["rejected_safety_sign"].tolist() == [1, 0, 0]


def test_step_is_the_cost_loss_on_the_head(samples, enc, model_cache):
    from vlalign.config.schema import ModelConfig
    from vlalign.models import build

    torch.manual_seed(0)
    built = build(ModelConfig(name="tiny-llava", cache_dir=model_cache))
    pad = enc.tokenizer.pad_token_id
    method = Cost(_cfg(margin=0.25, sign_weight=0.5))
    assert isinstance(method, Method) and method.batch_kind == "pairs"
    run = Run(
        recipe=None,
        model=built.model,
        built=built,
        encoder=enc,
        pad_id=pad,
        one_epoch=lambda k: iter(()),
    )
    head = method.prepare(run)
    method.setup(head)
    batch = collate_pairs(encode_batch(enc, samples, "preference"), pad)
    out = method.step(batch)
    B = len(samples)
    assert out.count == B == method.units(batch)
    better, worse = score_pairs(head, batch, pad)
    ref = cost_loss(
        worse,
        better,
        batch["rejected_safety_sign"],
        batch["chosen_safety_sign"],
        margin=0.25,
        sign_weight=0.5,
    )
    assert out.loss_sum.item() == pytest.approx(ref.loss.item() * B, rel=1e-5)
    out.loss_sum.backward()
    assert head.value_head.weight.grad is not None and head.value_head.weight.grad.abs().sum() > 0
    m = method.metrics(out.sums, out.count)
    assert m["costs/pair_accuracy"] == pytest.approx(ref.metrics["pair_accuracy"].item())
    assert m["costs/sign_accuracy"] == pytest.approx(ref.metrics["sign_accuracy"].item())
    assert m["costs/labelled"] == 1.0
    held = evaluate_cost_model(head, [batch], pad)
    assert held["pairs"] == B
    assert held["costs/pair_accuracy"] == pytest.approx(m["costs/pair_accuracy"])
    assert held["costs/sign_accuracy"] == pytest.approx(m["costs/sign_accuracy"])


def test_metrics_from_sums_by_hand():
    """4 pairs, 3 with worse > better; 6 of 8 responses labelled, 5 of them right: 2 unsafe
    (1 right), 4 safe (4 right)."""
    sums = {
        "costs/better": -2.0,
        "costs/worse": 6.0,
        "costs/pair_accuracy": 3.0,
        "costs/sign_correct": 5.0,
        "costs/sign_labelled": 6.0,
        "costs/unsafe_correct": 1.0,
        "costs/unsafe_labelled": 2.0,
        "costs/safe_correct": 4.0,
        "costs/safe_labelled": 4.0,
    }
    assert cost_metrics(sums, 4.0) == pytest.approx(
        {
            "costs/better": -0.5,
            "costs/worse": 1.5,
            "costs/pair_accuracy": 0.75,
            "costs/labelled": 0.75,
            "costs/sign_accuracy": 5 / 6,
            "costs/sign_accuracy_unsafe": 0.5,
            "costs/sign_accuracy_safe": 1.0,
        }
    )
    none = {**sums, "costs/sign_labelled": 0.0, "costs/unsafe_labelled": 0.0}
    assert "costs/sign_accuracy" not in cost_metrics(none, 4.0)
    assert "costs/sign_accuracy_unsafe" not in cost_metrics(none, 4.0)


def test_batch_sums_split_by_label():
    """better [-1, 0.5], worse [2, -3], signs better [-1, -1], worse [+1, 0]:
    pair acc 1/2 (2 > -1 yes, -3 > 0.5 no); unsafe: worse0 = 2 > 0 right (1/1);
    safe: better0 = -1 right, better1 = 0.5 wrong (1/2); worse1 unlabelled."""
    from vlalign.methods.cost import cost_sums

    s = cost_sums(
        torch.tensor([-1.0, 0.5]),
        torch.tensor([2.0, -3.0]),
        torch.tensor([-1, -1]),
        torch.tensor([1, 0]),
    )
    m = cost_metrics(s, 2.0)
    assert m["costs/pair_accuracy"] == 0.5
    assert m["costs/sign_accuracy_unsafe"] == 1.0
    assert m["costs/sign_accuracy_safe"] == 0.5
    assert m["costs/sign_accuracy"] == pytest.approx(2 / 3)
    assert m["costs/labelled"] == 0.75
