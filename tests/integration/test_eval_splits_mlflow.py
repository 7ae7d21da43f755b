"""A multi-split scorecard in MLflow: every split's metrics prefixed by the split, per-category
rates per split, and the side-by-side chart beside the scorecard."""

from __future__ import annotations

import mlflow
import pytest

from vlalign.scorecard import Scorecard
from vlalign.tracking.scorecard_log import log_scorecard

pytestmark = pytest.mark.slow


def _split(harmful: float, benign: float) -> dict:
    return {
        "metrics": {"harmful_refusal_rate": harmful, "benign_refusal_rate": benign, "n_total": 4},
        "per_category": {
            "weapons": {"label": "harmful", "n": 2, "refusal_rate": harmful},
            "nature": {"label": "benign", "n": 2, "refusal_rate": benign},
        },
        "counts": {},
        "samples": [],
    }


def test_split_metrics_are_logged_with_the_split_prefix(tmp_path):
    held, shifted = _split(1.0, 0.0), _split(0.5, 0.25)
    card = Scorecard(
        name="final",
        model="m",
        data="d",
        metrics={
            **held["metrics"],
            **{f"eval/{k}": v for k, v in held["metrics"].items()},
            **{f"shift-visual/{k}": v for k, v in shifted["metrics"].items()},
        },
        per_category=held["per_category"],
        counts={},
        splits={
            "eval": {**held, "shift": None, "primary": True},
            "shift-visual": {**shifted, "shift": "visual", "primary": False},
        },
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("splits", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(exp).info.run_id
    log_scorecard(card, run_id, "final", tracking_uri=uri)
    got = client.get_run(run_id).data.metrics
    assert got["eval/final/harmful_refusal_rate"] == 1.0
    assert got["eval/final/shift-visual/harmful_refusal_rate"] == 0.5
    assert got["eval/final/shift-visual/benign_refusal_rate"] == 0.25
    assert got["eval/final/shift-visual/refusal_rate/weapons"] == 0.5
    assert got["eval/final/refusal_rate/weapons"] == 1.0
    names = {f.path for f in client.list_artifacts(run_id, "eval/final")}
    assert {"eval/final/splits.png", "eval/final/scorecard.html"} <= names
