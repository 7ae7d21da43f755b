"""`vlalign demo`'s stages end to end on a local Ray cluster (2 workers, ZeRO-2), shrunk to a few
steps: data, base eval, SFT, DPO on the merged SFT model, evals, registry, gates, the table.

The steps are too few to align anything; what is checked is the plumbing and that the promotion
decision is the one the recipe's gates give on the DPO scorecard. Whether the full demo aligns is
measured by bench/alignment_seeds.py and `vlalign demo` itself (README "Demo results").
"""

from __future__ import annotations

import json

import pytest
import yaml

from vlalign.config import load_recipe
from vlalign.demo import DemoPlan, print_table, run_demo
from vlalign.tracking.promotion import evaluate_gates
from vlalign.tracking.registry import CHAMPION, aliases, get_version
from vlalign.tracking.store import client_for, embedded_store

pytestmark = pytest.mark.slow
TINY = DemoPlan(pairs=24, eval_pairs=8, sft_steps=4, dpo_steps=3)


def test_demo_runs_every_stage_on_ray(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the embedded MLflow store is ./mlruns
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # built-in model cache
    summary = run_demo(tmp_path / "demo", TINY, seed=1, use_ray=True, workers=2)
    print_table(summary)
    shown = capsys.readouterr().out

    # every stage ran and said so, in order, with the Ray cluster started once
    stages = [line.split("] ", 1)[1].split()[0] for line in shown.splitlines() if "] " in line]
    stages = [s for s in stages if s in {"data", "base", "ray", "sft", "dpo", "registry"}]
    assert stages == ["data", "base", "ray", "sft", "dpo", "registry"]
    assert "2 workers, ZeRO-2" in shown and "dashboard http://127.0.0.1:" in shown

    # three scorecards on the held-out split, the same prompts each time
    assert list(summary["scorecards"]) == ["base", "sft", "dpo"]
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

    # the registered version, and a promotion decision equal to the gates' verdict
    store = embedded_store(tmp_path)
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
    assert sorted(r.data.tags.get("mlflow.runName", "") for r in runs) == ["demo-dpo", "demo-sft"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert "eval/dpo/harmful_refusal_rate" in client.get_run(mv.run_id).data.metrics
