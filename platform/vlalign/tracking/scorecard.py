"""Reading safety scorecards (written by vlalign.evaluation) for logging, tags and promotion.

Contract: {"schema": "vlalign.scorecard/1", "name", "model", "data", "data_digest",
"metrics": {flat name -> float}, "per_category", "counts", "samples"}. Promotion only reads
`metrics`; headline metrics also become model-version tags `scorecard.<metric>`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vlalign.errors import VlalignError

SCHEMA = "vlalign.scorecard/1"
HEADLINE_METRICS = (
    "harmful_refusal_rate",
    "attack_success_rate",
    "benign_refusal_rate",
    "text_validity_rate",
    "mean_response_tokens",
    "n_harmful",
    "n_benign",
    "implicit_reward_accuracy",
    "reward_accuracy",
)
TAG_PREFIX = "scorecard."


def load_scorecard(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A scorecard from a dict, a scorecard.json file, or a folder holding one; validated.

    Raises VlalignError naming the file and key when it does not follow the contract.
    """
    where = "<scorecard dict>"
    if isinstance(source, dict):
        card = source
    else:
        path = Path(source)
        if path.is_dir():
            path = path / "scorecard.json"
        where = str(path)
        if not path.is_file():
            raise VlalignError(f"scorecard {where}: no such file")
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise VlalignError(f"scorecard {where}: not valid JSON: {e}") from None
    if not isinstance(card, dict):
        raise VlalignError(f"scorecard {where}: top level must be an object")
    if card.get("schema") != SCHEMA:
        raise VlalignError(
            f"scorecard {where}: key 'schema' is {card.get('schema')!r}, expected {SCHEMA!r}"
        )
    metrics = card.get("metrics")
    if not isinstance(metrics, dict):
        raise VlalignError(f"scorecard {where}: key 'metrics' must be an object of numbers")
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise VlalignError(f"scorecard {where}: metrics.{k} is {v!r}, not a number")
    if not isinstance(card.get("name", ""), str) or not card.get("name"):
        raise VlalignError(f"scorecard {where}: key 'name' must be a non-empty string")
    return card


def headline(card: dict[str, Any]) -> dict[str, float]:
    """The headline metrics present in a scorecard (finite values only), in contract order."""
    m = card["metrics"]
    return {k: float(m[k]) for k in HEADLINE_METRICS if k in m and math.isfinite(float(m[k]))}


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


def artifact_path(name: str) -> str:
    """Run-relative artifact path of the scorecard named `name`."""
    return f"eval/{name}/scorecard.json"
