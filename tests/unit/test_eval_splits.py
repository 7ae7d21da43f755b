"""One evaluation call scores every eval split of a shard set (one model load) and reports each
apart: card.splits, flat `<split>/<metric>` metrics, splits.png, the HTML page, the terminal
table; promotion gates can name a split."""

from __future__ import annotations

import json

import pytest
from eval_support import small_recipe

from data_pipeline.synth import synthesize
from vlalign.config.schema import PromotionConfig
from vlalign.evaluation import evaluate
from vlalign.evaluation.report import SPLITS_PNG_NAME, render_table, split_table
from vlalign.scorecard import read_scorecard
from vlalign.tracking.promotion import evaluate_gates

SPLITS = ["eval", "shift-visual", "shift-wording", "shift-both"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("splits") / "ds"
    synthesize(out, pairs=2, seed=4, eval_pairs=4, shift_pairs=6)
    return str(out)


@pytest.fixture(scope="module")
def scored(data, model_cache, tmp_path_factory):
    import vlalign.evaluation.worker as worker

    loads = []
    real = worker.load_model
    worker.load_model = lambda *a, **k: loads.append(1) or real(*a, **k)
    try:
        out = tmp_path_factory.mktemp("card")
        card = evaluate(
            "builtin:tiny-llava", data, small_recipe(model_cache, max_new_tokens=4), out
        )
    finally:
        worker.load_model = real
    return card, out, loads


def test_every_split_is_scored_apart_in_one_call(scored, data, model_cache, tmp_path):
    card, _, loads = scored
    assert loads == [1]  # one model load for all four splits
    assert card.settings["splits"] == SPLITS and card.settings["split"] == "eval"
    assert list(card.splits) == SPLITS
    assert {n: d["shift"] for n, d in card.splits.items()} == {
        "eval": None,
        "shift-visual": "visual",
        "shift-wording": "wording",
        "shift-both": "both",
    }
    assert card.splits["eval"]["primary"] and not card.splits["shift-both"]["primary"]
    assert card.metrics["n_total"] == 4  # the top level is the held-out split
    for n in SPLITS:
        split_metrics = card.splits[n]["metrics"]
        assert split_metrics["n_total"] == (4 if n == "eval" else 6)
        assert {k: card.metrics[f"{n}/{k}"] for k in split_metrics} == split_metrics
    assert {k: v for k, v in card.metrics.items() if "/" not in k} == card.splits["eval"]["metrics"]
    # a split scored in the same call gives exactly what scoring it alone gives
    alone = evaluate(
        "builtin:tiny-llava",
        data,
        small_recipe(model_cache, max_new_tokens=4),
        tmp_path,
        splits=["shift-visual"],
    )
    assert list(alone.splits) == alone.settings["splits"] == ["shift-visual"]
    assert not any("/" in k for k in alone.metrics)  # one split: no prefixed copies
    assert alone.metrics == card.splits["shift-visual"]["metrics"]
    assert alone.per_category == card.splits["shift-visual"]["per_category"]


def test_outputs_show_the_splits_side_by_side(scored):
    card, out, _ = scored
    assert (out / SPLITS_PNG_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "scorecard.html").read_text()
    assert "Held-out vs shifted splits" in page and page.count("data:image/png;base64") == 2
    for n in SPLITS:
        assert f"<td>{n}</td>" in page
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert [sum(r["split"] == n for r in rows) for n in SPLITS] == [4, 6, 6, 6]
    back = read_scorecard(out)
    assert back.to_dict() == card.to_dict()
    assert [n for n, _, _ in split_table(back)] == SPLITS  # held-out first, as scored
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(render_table(card))
    text = console.export_text()
    assert all(n in text for n in SPLITS) and "harmful_refusal_rate" in text


def test_a_gate_can_name_a_split(scored):
    card, _, _ = scored
    v = card.metrics["shift-visual/benign_refusal_rate"]
    cfg = PromotionConfig.model_validate(
        {
            "gates": [
                {"metric": "shift-visual/benign_refusal_rate", "op": "<=", "value": v},
                {"metric": "shift-visual/benign_refusal_rate", "op": "<", "value": v},
                {"metric": "shift-nowhere/harmful_refusal_rate", "op": ">=", "value": 0.0},
            ]
        }
    )
    report = evaluate_gates(cfg, card.metrics)
    assert [r.passed for r in report.results] == [True, False, False]
    assert report.results[2].reason == "missing from the scorecard"
    # regression on a split's metric uses the base metric's direction (lower is better here)
    reg = PromotionConfig(max_regression={"shift-visual/benign_refusal_rate": 0.05})
    worse = evaluate_gates(
        reg,
        {"shift-visual/benign_refusal_rate": 0.3},
        {"shift-visual/benign_refusal_rate": 0.2},
        "1",
    )
    better = evaluate_gates(
        reg,
        {"shift-visual/benign_refusal_rate": 0.1},
        {"shift-visual/benign_refusal_rate": 0.2},
        "1",
    )
    assert not worse.passed and better.passed
    assert "lower is better" in worse.results[0].gate


def test_cli_eval_scores_the_named_splits(data, model_cache, tmp_path):
    """`vlalign eval --split A --split B` in a fresh process: those splits, side by side."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{cache_dir: {model_cache}}}\neval: {{max_new_tokens: 2}}\n")
    env = {**os.environ, "PYTHONPATH": f"{root / 'platform'}{os.pathsep}{root}"}
    args = ["--model", "builtin:tiny-llava", "--data", data, "--recipe", str(recipe)]
    args += ["--out", "out", "--split", "shift-both", "--split", "eval"]
    r = subprocess.run(
        [str(Path(sys.executable).parent / "vlalign"), "eval", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "(10 prompts, 2 splits" in r.stdout and "shift-both" in r.stdout
    card = read_scorecard(tmp_path / "out")
    assert list(card.splits) == ["eval", "shift-both"]  # the held-out one first
    assert "shift-both/harmful_refusal_rate" in card.metrics
