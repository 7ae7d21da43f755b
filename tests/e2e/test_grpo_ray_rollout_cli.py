"""`vlalign run tiny/grpo --no-ray` with `method.rollout.placement=ray`: a process without Ray
starts its own local Ray instance for the rollout actors, syncs and checks parity every step,
and finishes (fresh subprocess, clean cwd)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_no_ray_run_starts_a_local_ray_for_its_rollout_actors(tmp_path, model_cache):
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT / 'platform'}{os.pathsep}{ROOT}"
    env.pop("RAY_ADDRESS", None)
    exe = str(ROOT / ".venv" / "bin" / "vlalign")
    proc = subprocess.run(
        [
            exe,
            "run",
            "tiny/grpo",
            "--no-ray",
            "--no-eval",
            "method.rollout.placement=ray",
            "method.max_new_tokens=4",
            "train.max_steps=2",
            "train.micro_batch_size=2",
            "train.export=none",
            "tracking.enabled=false",
            "data.synth_pairs=16",
            f"model.cache_dir={model_cache}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done: tiny-grpo: 2 steps this run" in proc.stdout
    states = sorted((tmp_path / "runs" / "tiny-grpo" / "checkpoints").glob("*/trainer_state.json"))
    metrics = json.loads(states[-1].read_text())["metrics"]
    assert [m["sync/version"] for m in metrics] == [1.0, 2.0]
    assert all(m["sync/parity_ok"] == 1.0 for m in metrics)
