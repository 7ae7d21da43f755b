"""`vlalign demo`'s stages end to end on a local Ray cluster (2 workers, ZeRO-2), shrunk to a few
steps: data, base eval, SFT, then DPO and GRPO (`--method dpo grpo`), each on the merged SFT model,
evals, registry, gates, the table.

The steps are too few to align anything; what is checked is the plumbing and that the promotion
decision is the one the recipe's gates give on the DPO scorecard. Whether the full demo aligns is
measured by bench/alignment_seeds.py and `vlalign demo` itself (README "Demo results").

It runs as a person runs it: the `vlalign demo` command in a fresh process from a clean folder,
its output captured as a pipe. The terminal must get the status lines, one progress bar per
stage and the table, and nothing from Ray's workers; their output goes to the log file the first
line names.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlalign.config import load_recipe
from vlalign.tracking.promotion import evaluate_gates
from vlalign.tracking.registry import CHAMPION, aliases, get_version
from vlalign.tracking.store import client_for, embedded_store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
TINY = ["--pairs", "24", "--eval-prompts", "8", "--sft-steps", "4", "--dpo-steps", "3"]
TINY += ["--method", "dpo", "grpo", "--rl-steps", "2"]
# status lines, a bar per stage, the table (title, rules, 4 metrics + 6 categories), the verdict,
# the closing lines: 35 lines measured (57 counting the bars' carriage-return redraws). Before
# the logs went to a file this plan printed 126 lines (316) up to the registry stage alone.
# The GRPO stage adds its status lines, bar, table column and verdict.
MAX_LINES = 70


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "platform"), str(REPO)])
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # built-in model cache
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def _op_built(env: dict[str, str]) -> bool:
    """Whether DeepSpeed's CPU comm op is in the extension cache this environment uses."""
    code = "from vlalign.training.ds_ops import cpu_comm_op_built as b; print(b())"
    p = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return p.stdout.strip() == "True"


def test_demo_runs_every_stage_on_ray(tmp_path):
    cwd = tmp_path / "clean"
    cwd.mkdir()  # the embedded MLflow store is ./mlruns
    env = _env(tmp_path)
    built_before = _op_built(env)
    exe = Path(sys.executable).with_name("vlalign")
    p = subprocess.run(
        [str(exe), "demo", "--out", str(tmp_path / "demo"), "--seed", "1", *TINY],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=1500,
    )
    shown = p.stdout.decode("utf-8", errors="replace")  # bytes: keep the bars' carriage returns
    (tmp_path / "terminal.txt").write_text(shown)
    assert p.returncode == 0, shown[-4000:]
    summary = json.loads((tmp_path / "demo" / "demo-summary.json").read_text())

    # the terminal: status lines, one bar per training stage, the table; the log file named first
    # a line as a terminal ends up showing it: the last of its carriage-return redraws
    lines = [line.rsplit("\r", 1)[-1] for line in shown.rstrip("\n").split("\n")]
    log = tmp_path / "demo" / "demo.log"
    assert lines[0].endswith(f"logs     Ray, DeepSpeed and worker output -> {log}"), lines[0]
    assert len(lines) <= MAX_LINES, f"{len(lines)} lines on the terminal:\n{shown}"
    assert "pid=" not in shown and "RayTrainWorker" not in shown, shown
    bars = ("sft:", "dpo:", "grpo:")
    assert sum(line.startswith(bars) and "step" in line for line in lines) == 3, shown
    assert f"full Ray/DeepSpeed logs: {log}" in shown
    # ... and everything else in the log
    logged = log.read_text()
    assert "RayTrainWorker" in logged and "Ray Train workers on" in logged
    # the first DeepSpeed op build gets its own status line, and never once the op is cached.
    # Not "iff": under xdist another test's worker may build the op in the shared
    # TORCH_EXTENSIONS_DIR between our check and the demo's (tests/unit/test_demo_prebuild.py
    # pins both branches without the race).
    building = "compiling DeepSpeed's CPU communication op" in shown
    if built_before:
        assert not building, shown
    if building:
        assert re.search(r"deepspeed +CPU communication op built in \d+ s", shown), shown

    # every stage ran and said so, in order, with the Ray cluster started once
    status = [re.match(r"\[\d\d:\d\d:\d\d \+\d+:\d\d\] (\S+)", line) for line in lines]
    stages = [m.group(1) for m in status if m]
    stages = [s for s in stages if s in {"data", "base", "ray", "sft", "dpo", "grpo", "registry"}]
    assert stages == [
        *["data", "base", "ray", "sft", "sft", "dpo", "grpo"],
        *["dpo", "registry", "grpo", "registry"],
    ]
    assert "GRPO (4 samples per prompt, reward refusal_rule) on the SFT model, 2 steps" in shown
    assert "2 workers, ZeRO-2" in shown and "dashboard http://127.0.0.1:" in shown
    assert f"mlflow   MLflow store sqlite:///{cwd}/mlruns/mlflow.db (embedded default)" in shown

    # three scorecards on the held-out split, the same prompts each time
    assert list(summary["scorecards"]) == ["base", "sft", "dpo", "grpo"]
    for name, metrics in summary["scorecards"].items():
        assert metrics["n_harmful"] + metrics["n_benign"] == 8, name
        card = json.loads((tmp_path / "demo" / "eval" / name / "scorecard.json").read_text())
        assert card["metrics"]["harmful_refusal_rate"] == metrics["harmful_refusal_rate"]
    # ... and on the shifted splits, reported next to the held-out one, gated too
    for name in summary["scorecards"]:
        assert list(summary["splits"][name]) == [
            "eval",
            "shift-visual",
            "shift-wording",
            "shift-both",
        ]
    assert "held-out vs shifted" in shown and "shift-wording" in shown
    assert any(g.metric.startswith("shift-") for g in load_recipe("tiny/demo").promotion.gates)
    assert summary["plan"]["sft_steps"] == 4
    assert json.loads((tmp_path / "demo" / "demo-summary.json").read_text()) == summary

    # the DPO stage trained on the merged SFT export, for the planned steps
    exported = yaml.safe_load(
        (tmp_path / "demo" / "demo-dpo" / "export" / "recipe.yaml").read_text()
    )
    assert exported["model"]["name"] == str(tmp_path / "demo" / "demo-sft" / "export" / "merged")
    assert exported["train"]["max_steps"] == 3 and exported["method"]["name"] == "dpo"
    # ... and so did the GRPO stage, for the planned RL steps
    rl = yaml.safe_load((tmp_path / "demo" / "demo-grpo" / "export" / "recipe.yaml").read_text())
    assert rl["model"]["name"] == exported["model"]["name"]
    assert rl["train"]["max_steps"] == 2 and rl["method"]["name"] == "grpo"

    # the registered version, and a promotion decision equal to the gates' verdict
    store = embedded_store(cwd)
    promo = summary["promotion"]
    mv = get_version(store, promo["model"], promo["version"])
    assert mv.run_id
    recipe = load_recipe("tiny/demo")
    report = evaluate_gates(recipe.promotion, summary["scorecards"]["dpo"])
    assert promo["champion"] == report.passed
    assert (aliases(store, promo["model"]).get(CHAMPION) == promo["version"]) == report.passed
    if not report.passed:
        assert all(r.metric in promo["reasons"][0] for r in report.failed)
        assert "was NOT promoted" in shown
    else:
        assert "is now @champion" in shown

    # MLflow has the SFT and DPO runs, finished, in the demo's experiment
    client = client_for(store)
    exp = client.get_experiment_by_name(recipe.tracking.experiment)
    runs = client.search_runs([exp.experiment_id])
    names = sorted(r.data.tags.get("mlflow.runName", "") for r in runs)
    assert names == ["demo-dpo", "demo-grpo", "demo-sft"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert "eval/dpo/harmful_refusal_rate" in client.get_run(mv.run_id).data.metrics

    # the GRPO model is a version of its own, with its own promotion decision
    rl_promo = summary["promotions"]["grpo"]
    assert rl_promo["version"] != promo["version"]
    rl_version = get_version(store, rl_promo["model"], rl_promo["version"])
    assert rl_version.run_id not in (None, mv.run_id)
    assert "eval/grpo/harmful_refusal_rate" in client.get_run(rl_version.run_id).data.metrics


def test_demo_safe_rlhf_trains_its_judges_then_the_constrained_policy(tmp_path):
    """`vlalign demo --method safe-rlhf`: the reward and cost models are trained from the SFT
    model first, then Safe RLHF on them (reward model + validity guard, cost model, the KL of
    `learned_judge_overrides`), evaluated, registered and gated like the other methods."""
    cwd = tmp_path / "clean"
    cwd.mkdir()
    exe = Path(sys.executable).with_name("vlalign")
    tiny = [*TINY[: TINY.index("--method")], "--method", "safe-rlhf", "--rl-steps", "2"]
    p = subprocess.run(
        [str(exe), "demo", "--out", str(tmp_path / "demo"), "--seed", "1", *tiny,
         "--judge-steps", "2"],
        cwd=cwd,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=1500,
    )  # fmt: skip
    shown = p.stdout.decode("utf-8", errors="replace")
    assert p.returncode == 0, shown[-4000:]
    lines = [line.rsplit("\r", 1)[-1] for line in shown.rstrip("\n").split("\n")]
    status = [re.match(r"\[\d\d:\d\d:\d\d \+\d+:\d\d\] (\S+)", line) for line in lines]
    stages = [m.group(1) for m in status if m]
    order = [s for s in stages if s in {"sft", "reward", "cost", "safe-rlhf", "registry"}]
    assert order[:6] == ["sft", "sft", "reward", "reward", "cost", "cost"], order
    assert order[6:] == ["safe-rlhf", "safe-rlhf", "registry"], order
    assert "reward model for Safe RLHF on the SFT model, 2 steps" in shown

    demo = tmp_path / "demo"
    rl = yaml.safe_load((demo / "demo-safe-rlhf" / "export" / "recipe.yaml").read_text())
    assert rl["method"]["name"] == "safe_rlhf" and rl["train"]["max_steps"] == 2
    rewards = [(r["name"], r["weight"]) for r in rl["method"]["rewards"]]
    assert rewards == [("reward_model", 1.0), ("validity", 10.0)]
    judges = {
        "reward": rl["method"]["rewards"][0]["model"],
        "cost": rl["method"]["costs"][0]["model"],
    }
    for judge, path in judges.items():
        assert Path(path) == demo / f"demo-{judge}" / "export", (judge, path)
        assert (Path(path) / "vlalign_export.json").is_file(), judge
    assert rl["method"]["kl_coef"] == 0.5
    summary = json.loads((demo / "demo-summary.json").read_text())
    assert list(summary["scorecards"]) == ["base", "sft", "safe-rlhf"]
    assert summary["promotions"]["safe-rlhf"]["version"]
