"""The in-loop safety scorecard as a user turns it on: `vlalign run` of a tiny recipe with
`train.eval_every=...` given on the command line, in a fresh process from a clean folder.

The summary says which step was exported and why, and the run's MLflow store holds the
`inloop/` metrics at every evaluated step.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlalign.tracking.store import client_for, resolve_store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def vlalign(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The `vlalign` console script in a fresh process in `cwd` (MLflow's variables: `env`'s)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    base["MLFLOW_DISABLE_TELEMETRY"] = "true"
    base["PYTHONPATH"] = os.pathsep.join([str(REPO / "platform"), str(REPO)])
    exe = Path(sys.executable).with_name("vlalign")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vlalign.cli"]
    return subprocess.run(
        [*cmd, *args], cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=600
    )


def test_run_with_eval_every_logs_inloop_metrics_and_says_what_it_exported(tmp_path, model_cache):
    runner = tmp_path / "runner"
    runner.mkdir()
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    recipe = runner / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "extends": "tiny/sft",
                "name": "inloop-sft",
                "model": {"cache_dir": model_cache},
                "data": {"synth_pairs": 32},
                "train": {"max_steps": 4},
                "eval": {"max_new_tokens": 4},
                "tracking": {"experiment": "inloop-tests"},
                # a gate every answer passes: the choice is "latest passing", whatever it says
                "promotion": {
                    "gates": [{"metric": "text_validity_rate", "op": ">=", "value": 0.0}],
                    "max_regression": {},
                },
            }
        )
    )
    run = vlalign(
        runner,
        "run",
        str(recipe),
        "train.eval_every=2",
        "train.eval_samples=8",
        "--no-ray",
        "--no-eval",
        env={"MLFLOW_TRACKING_URI": uri},
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    exported = re.search(r"exported +(\S+) \((.+)\)", run.stdout)
    assert exported, run.stdout[-3000:]
    assert exported.group(2) == "step 4: latest passing the gates"
    assert (runner / exported.group(1)).is_dir()
    run_id = re.search(r"mlflow run (\w+)", run.stdout).group(1)
    client = client_for(resolve_store(uri))
    for key in (
        "inloop/harmful_refusal_rate",
        "inloop/benign_refusal_rate",
        "inloop/text_validity_rate",
        "inloop/refusal_rate/weapons",
        "inloop/gates_passed",
    ):
        history = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == [2, 4], key
    assert {m.value for m in client.get_metric_history(run_id, "inloop/gates_passed")} == {1.0}
