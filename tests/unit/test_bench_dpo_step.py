"""bench/dpo_step.py end to end on CPU (--quick), its FLOP counting, the published shapes' configs
and processors (shrunk widths), and bench/run_all.py's discovery. No timing is asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import dpo_models  # noqa: E402
import flops  # noqa: E402


@pytest.mark.slow
def test_quick_run_writes_the_json(tmp_path, model_cache):
    out = tmp_path / "dpo.json"
    cmd = [sys.executable, str(BENCH / "dpo_step.py"), "--quick", "--json", str(out)]
    proc = subprocess.run(
        [*cmd, "--cache-dir", model_cache], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["trl_error"] is None, res["trl_error"]
    assert "TRL" in proc.stdout and "x TRL" in proc.stdout, proc.stdout[-4000:]
    assert res["schema"] == "vlalign.bench.dpo_step/1"
    assert res["trl_error"] is None
    for key in ("config", "conditions", "tokens", "init_logps", "memory_method", "rows", "flops"):
        assert key in res
    names = [r["name"] for r in res["rows"]]
    assert names[0] == "trl" and "vlalign" in names and "packed" in names and "naive" in names
    B = res["config"]["batch_pairs"]
    for row in res["rows"]:
        assert len(row["step_s"]) == res["config"]["rounds"] and row["step_s_median"] > 0
        assert row["pairs_per_s"] == pytest.approx(B / row["step_s_median"])
        assert row["tokens_per_s"] == pytest.approx(
            res["tokens"]["per_step"] / row["step_s_median"]
        )
        assert math.isfinite(row["loss_first"]) and math.isfinite(row["loss_last"])
        assert row["speedup_vs_trl"] > 0
    # both implementations score the same tokens and agree on the log-probs at init
    assert res["tokens"]["per_step"] == res["tokens"]["trl_per_step"]
    assert res["tokens"]["packed_per_step"] < res["tokens"]["per_step"]
    vl, trl = res["init_logps"]["vlalign"], res["init_logps"]["trl"]
    assert vl == pytest.approx(trl, abs=1e-3)
    # memory of vlalign and TRL from their subprocesses
    for name in ("trl", "vlalign"):
        mem = next(r for r in res["rows"] if r["name"] == name)["memory"]
        assert isinstance(mem["working_bytes"], int) and mem["working_bytes"] >= 0
    assert res["flops"]["flops_per_pair"] > 0 and "6 + 2" in res["flops"]["formula"]


def test_published_shapes_match_published_sizes():
    """LLaVA-1.5-7B ~7.06B and Qwen2-VL-2B ~2.21B parameters (built on the meta device)."""
    from transformers import AutoModelForImageTextToText

    expect = {"llava-1.5-7b": (7.06e9, 6.7e9), "qwen2-vl-2b": (2.21e9, 1.54e9)}
    for shape, (total, lm) in expect.items():
        cfg, _ = dpo_models.published_config_and_processor(
            shape, dpo_models.WORKLOADS[shape]["image_size"]
        )
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.bfloat16)
        counts = flops.count_params(model)
        assert counts.total == pytest.approx(total, rel=0.01)
        assert counts.lm == pytest.approx(lm, rel=0.03)
        assert counts.lm + counts.vision + counts.embedding >= counts.total


def test_flop_formula_by_hand():
    c = flops.ParamCounts(lm=100, vision=10, embedding=5, total=115)
    # (6 + 2) * (N_lm * T + N_vis * 2 * patches)
    assert flops.model_flops_per_pair(c, 40, 3) == 8 * (100 * 40 + 10 * 2 * 3)
    assert flops.model_flops_per_pair(c, 40, 3, reference=False) == 6 * (100 * 40 + 10 * 2 * 3)
    assert flops.lora_aware_flops_per_pair(c, 40, 3) == 6 * 100 * 40 + 4 * 10 * 2 * 3
    peak = flops.measure_bf16_peak("cpu", n=64, iters=2, trials=2)
    assert peak["flops_per_s"] > 0 and len(peak["trials"]) == 2


@pytest.mark.parametrize("shape, image_tokens", [("llava-1.5-7b", 576), ("qwen2-vl-2b", 256)])
def test_published_shape_pipeline_shrunk(shape, image_tokens):
    """The CUDA shapes' processors and configs agree (image tokens), and packing holds there."""
    from dpo_sides import vlalign_batch

    from vlalign.methods.forward import PairOptions, pair_forward
    from vlalign.methods.packing import packed_pair_forward

    workload = dict(dpo_models.WORKLOADS[shape], batch=2)
    setup = dpo_models.build_setup(shape, workload, "cpu", torch.float32, shrink=True)
    batch = vlalign_batch(setup)
    assert batch["n_image_tokens"] == image_tokens * 2 * 2  # per sequence x 2 sides x 2 pairs
    pad = setup.processor.tokenizer.pad_token_id
    with torch.no_grad():
        c0, r0 = pair_forward(setup.model, batch, pad, PairOptions())
        c1, r1 = packed_pair_forward(setup.model, batch, pad, PairOptions())
    torch.testing.assert_close(c1.sum, c0.sum, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(r1.sum, r0.sum, rtol=1e-5, atol=1e-3)
    patches = flops.patches_per_image(setup.model, batch)
    assert patches == (577 if shape.startswith("llava") else 1024)


def test_run_all_discovers_the_benchmarks():
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run_all.py"), "--list"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    names = proc.stdout.split()
    assert names[:3] == ["data_throughput", "logprobs_memory", "dpo_step"]
    assert not {"flops", "dpo_models", "dpo_sides", "run_all", "alignment_misses"} & set(names)
    bad = subprocess.run(
        [sys.executable, str(BENCH / "run_all.py"), "--only", "nope"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "unknown benchmark" in bad.stderr


def test_vlalign_side_steps_every_variant_in_process(model_cache):
    """Each variant's Dpo.step runs and trains (precomputed reference values on the batch's
    device: no workaround needed)."""
    from dpo_sides import VARIANTS, VlalignSide, vlalign_batch

    setup = dpo_models.build_setup(
        "tiny-llava", dict(dpo_models.QUICK_WORKLOAD), "cpu", torch.float32, size="nano",
        cache_dir=model_cache,
    )  # fmt: skip
    side = VlalignSide(setup, vlalign_batch(setup), 8, 16.0, 1e-2, 1024)
    assert side.notes == []
    losses = [side.step(v)["loss"] for v in VARIANTS]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference at init
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
