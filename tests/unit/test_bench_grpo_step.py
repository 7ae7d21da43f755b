"""bench/grpo_step.py end to end on CPU (--quick: JSON and table shape, both sides trained), and
its vlalign switches in process (each changes the work done, none the results). No timing is
asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


@pytest.mark.slow
def test_quick_run_writes_the_json_and_both_sides_train(tmp_path, model_cache):
    out = tmp_path / "grpo.json"
    cmd = [sys.executable, str(BENCH / "grpo_step.py"), "--quick", "--json", str(out)]
    proc = subprocess.run(
        [*cmd, "--cache-dir", model_cache], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["schema"] == "vlalign.bench.grpo_step/1"
    assert res["trl_error"] is None, res["trl_error"]
    for key in ("config", "conditions", "trained", "rows"):
        assert key in res
    header = next(line for line in proc.stdout.splitlines() if line.startswith("implementation"))
    for col in ("rollout ms", "update ms", "step ms", "prompts/s", "x TRL"):
        assert col in header
    names = [r["name"] for r in res["rows"]]
    assert names == ["trl", "vlalign", "no_share_vision", "no_response_only", "no_chunking",
                     "no_merge", "no_share_prefill", "no_pack", "skip_old",
                     "naive"]  # fmt: skip
    c = res["config"]
    B, n, m = c["batch_prompts"], c["num_generations"], c["max_new_tokens"]
    for row in res["rows"]:
        assert len(row["step_s"]) == c["rounds"]
        for s, r, u in zip(row["step_s"], row["rollout_s"], row["update_s"], strict=True):
            assert r > 0 and u > 0 and s == pytest.approx(r + u)
        assert row["prompts_per_s"] == pytest.approx(B / row["step_s_median"])
        assert math.isfinite(row["loss_first"]) and math.isfinite(row["loss_last"])
        assert 0 < row["completion_tokens_mean"] <= B * n * m
        assert row["speedup_vs_trl"] > 0 and row["speedup_vs_trl_min"] > 0
    trl_row = res["rows"][0]
    assert trl_row["speedup_vs_trl"] == pytest.approx(1.0)
    # both implementations moved their LoRA weights (weight decay 0: only gradients move them)
    assert res["trained"]["vlalign_lora_max_change"] > 1e-5
    assert res["trained"]["trl_lora_max_change"] > 1e-5
    assert "GRPOTrainer" in proc.stdout and "trained:" in proc.stdout


def _side(model_cache):
    from grpo_sides import VlalignSide, synth_prompts
    from grpo_step import Setup

    from vlalign.config.schema import ModelConfig
    from vlalign.models import build

    built = build(ModelConfig(name="tiny-llava", size="nano", image_size=32, cache_dir=model_cache))
    setup = Setup(
        shape="tiny-llava",
        family=built.family,
        model=built.model,
        processor=built.processor,
        built=built,
        prompts=synth_prompts(2, 32),
        image_size=32,
        device="cpu",
        dtype=torch.float32,
    )
    args = Namespace(
        n=3, max_new_tokens=5, lora_r=4, lora_alpha=8.0, lr=1e-2, chunk_size=4, length_weight=0.01
    )
    return VlalignSide(setup, args)


def test_switches_change_the_work_not_the_results(model_cache):
    """Same rollout seeds under every variant: the same texts and old log-probs; the vision tower
    runs once per rollout (2 prompts' images in one call) with sharing, and without it on the
    images of each forward's rows: generate's prefill (2 prompts shared, 6 rows not) and each
    log-prob forward (2 packed rows, 6 unpacked); the on-policy shortcut gives old log-probs
    equal to the update's (ratio 1) with no rollout forward."""
    from grpo_sides import VARIANTS

    from vlalign.models.lora import vision_prefix
    from vlalign.models.unwrap import unwrap

    side = _side(model_cache)
    vision = unwrap(side.model).get_submodule(vision_prefix(unwrap(side.model)))
    batches: list[int] = []
    hook = vision.register_forward_hook(lambda mod, a, o: batches.append(int(a[0].shape[0])))
    got, all_pieces = {}, {}
    for v in VARIANTS:  # rollouts first: the policy must not move between them
        for m in side.methods.values():
            m.rollouts_done = 0
        batches.clear()
        pieces = side.rollout(v)
        ro = pieces[0]["piece"].rollout
        got[v.name] = (list(ro.texts), ro.old_logps.clone(), list(batches))
        all_pieces[v.name] = pieces
    for v in VARIANTS:
        pieces = all_pieces[v.name]
        batches.clear()
        out = side.update(v, pieces)
        assert math.isfinite(out["loss"])
        # update forward: the rows' own images, one per packed row or one per row
        assert batches == ([] if v.share_vision else [2 if v.pack_groups else 6]), v.name
        if v.skip_old_forward:  # filled in by the update's forward, detached: ratio 1
            ro = pieces[0]["piece"].rollout
            assert (ro.old_logps[ro.response_mask] < 0).all()
    hook.remove()
    texts0, lp0, vis0 = got["vlalign"]
    assert vis0 == [2]  # once per prompt, for the whole rollout
    # prompts (split only), generate's shared prefill, the packed old forward: 2 images each
    assert got["no_share_vision"][2] == [2, 2, 2]
    assert got["no_share_prefill"][2] == [2]
    assert got["naive"][2] == [2, 6, 6]  # ... one prefill and one old-forward row per sample
    for name, (texts, lp, _) in got.items():
        assert texts == texts0, name
        if "skip_old" not in name:
            torch.testing.assert_close(lp, lp0, rtol=1e-4, atol=1e-4, msg=name)
    assert side.trained() > 0
    # with trained (non-zero) adapters: generating merged (method.rollout.merge_adapters)
    # samples the same texts and log-probs, and the base weights come back bit-identical
    from grpo_sides import Variant

    base = {n: p.detach().clone() for n, p in side.model.named_parameters() if "base_layer" in n}
    ros = []
    for merge in (False, True):
        for m in side.methods.values():
            m.rollouts_done = 0
        ros.append(side.rollout(Variant("x", "x", merge_lora=merge))[0]["piece"].rollout)
    assert ros[0].texts == ros[1].texts
    torch.testing.assert_close(ros[1].old_logps, ros[0].old_logps, rtol=0, atol=0)
    after = dict(side.model.named_parameters())
    assert all(torch.equal(after[n], b) for n, b in base.items())
