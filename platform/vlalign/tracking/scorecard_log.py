"""A scorecard in MLflow: logged to a run, its headline metrics as model-version tags.

Under the run's artifacts `eval/<name>/`: scorecard.json (`log_dict`), the PNG chart(s) and the
HTML page; metrics `eval/<name>/<metric>` for every scorecard metric (a split's as
`eval/<name>/<split>/<metric>`, e.g. eval/final/shift-visual/harmful_refusal_rate), and
`eval/<name>/[<split>/]refusal_rate/<category>` (or `pair_accuracy/<category>`) per category. The
scorecard's schema is `vlalign.scorecard`; evaluation writes it and never imports MLflow.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any

from vlalign.evaluation.report import (
    HTML_NAME,
    PNG_NAME,
    SPLITS_PNG_NAME,
    write_chart,
    write_html,
    write_split_chart,
)
from vlalign.scorecard import JSON_NAME, Scorecard, read_scorecard

TAG_PREFIX = "scorecard."
_SAFE = re.compile(r"[^0-9A-Za-z_\-. /]")


def _metric_name(*parts: str) -> str:
    return "/".join(_SAFE.sub("_", p) for p in parts)


def artifact_path(name: str) -> str:
    """Run-relative artifact path of the scorecard named `name`."""
    return f"eval/{name}/{JSON_NAME}"


def log_scorecard(
    scorecard: Scorecard | dict[str, Any],
    run_id: str,
    name: str | None = None,
    tracking_uri: str | None = None,
) -> None:
    """Log `scorecard` (object or its JSON dict) to MLflow run `run_id` under eval/<name>/.

    name: default the scorecard's own name. tracking_uri: the store holding the run (default:
    MLflow's current tracking URI).
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    card = scorecard if isinstance(scorecard, Scorecard) else read_scorecard(scorecard)
    client = MlflowClient(tracking_uri=tracking_uri)
    prefix = f"eval/{name or card.name}"
    client.log_dict(run_id, card.to_dict(), f"{prefix}/{JSON_NAME}")
    with tempfile.TemporaryDirectory(prefix="vlalign-scorecard-") as tmp:
        png = write_chart(card, Path(tmp) / PNG_NAME)
        splits_png = write_split_chart(card, Path(tmp) / SPLITS_PNG_NAME)
        page = write_html(card, png, Path(tmp) / HTML_NAME, splits_png)
        for f in (png, page, splits_png):
            if f is not None:
                client.log_artifact(run_id, str(f), prefix)
    now = int(time.time() * 1000)
    metrics = [Metric(_metric_name(prefix, k), float(v), now, 0) for k, v in card.metrics.items()]
    metrics += [
        Metric(_metric_name(prefix, key, cat), float(row[key]), now, 0)
        for cat, row in card.per_category.items()
        for key in ("refusal_rate", "pair_accuracy")
        if key in row
    ]
    if len(card.splits) > 1:  # each split's per-category rates too
        metrics += [
            Metric(_metric_name(prefix, split, key, cat), float(row[key]), now, 0)
            for split, d in card.splits.items()
            for cat, row in d["per_category"].items()
            for key in ("refusal_rate", "pair_accuracy")
            if key in row
        ]
    for i in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def metrics_to_tags(metrics: dict[str, float]) -> dict[str, str]:
    """{'harmful_refusal_rate': 0.97} -> {'scorecard.harmful_refusal_rate': '0.97'}."""
    return {f"{TAG_PREFIX}{k}": repr(float(v)) for k, v in metrics.items()}


def metrics_from_tags(tags: dict[str, str]) -> dict[str, float]:
    """Inverse of metrics_to_tags (non-numeric scorecard.* tags are ignored)."""
    out = {}
    for k, v in tags.items():
        if k.startswith(TAG_PREFIX):
            try:
                out[k.removeprefix(TAG_PREFIX)] = float(v)
            except ValueError:
                continue
    return out
