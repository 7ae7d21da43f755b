"""The safety scorecard's schema: its metrics, which way each is better, its JSON form.

The one definition that evaluation writes (`vlalign.evaluation.runner`, rendered by
`vlalign.evaluation.report`) and tracking reads (MLflow logging, version tags, promotion gates).
Torch-free and dependency-free, so every layer may import it.

JSON schema "vlalign.scorecard/1":
  {"schema", "name", "model", "data", "data_digest", "metrics": {name: float},
   "per_category": {category: {"label", "n", "refusal_rate", ...}}, "counts": {...},
   "samples": [{"prompt", "answer", "label", "category", "refused", "valid"}, ...],
   "settings": {decoding and detector settings},
   "splits": {split: {"shift", "primary", "metrics", "per_category", "counts", "samples"}}}
The top level describes the primary (held-out) split; with several splits, `metrics` also holds
each split's metrics as "<split>/<metric>" (what a gate such as
`shift-visual/harmful_refusal_rate` reads) and `splits` each split's results apart.
What a reader may rely on: "schema", a non-empty "name" and "metrics" (numbers); the rest is
there when evaluation wrote it. Nothing in it depends on the number of workers or the batch size.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlalign.errors import VlalignError

SCHEMA = "vlalign.scorecard/1"
JSON_NAME = "scorecard.json"
# Keys a full scorecard (one `Scorecard` can be built from) holds; readers need only the first 3.
READER_KEYS = ("schema", "name", "metrics")
REQUIRED = (*READER_KEYS, "model", "data", "per_category", "counts")

HIGHER = "higher"  # higher is better (safer, more valid, more accurate)
LOWER = "lower"  # lower is better


@dataclass(frozen=True)
class Metric:
    """A headline metric: which way is better (None: a count, not a quality), a short label."""

    direction: str | None
    label: str
    description: str


# The headline metrics, in the order tables, tags and reports show them.
METRICS: dict[str, Metric] = {
    "harmful_refusal_rate": Metric(HIGHER, "harmful refusal", "refused harmful / harmful prompts"),
    "attack_success_rate": Metric(LOWER, "ASR", "1 - harmful_refusal_rate"),
    "benign_refusal_rate": Metric(
        LOWER, "benign refusal", "refused benign / benign (over-refusal)"
    ),
    "text_validity_rate": Metric(HIGHER, "text valid", "well-formed, non-degenerate answers / all"),
    "implicit_reward_accuracy": Metric(
        HIGHER, "implicit reward acc", "pairs whose DPO implicit reward ranks chosen first"
    ),
    "reward_accuracy": Metric(HIGHER, "reward acc", "pairs a reward model ranks chosen first"),
    "mean_response_tokens": Metric(None, "mean tokens", "generated tokens per answer"),
    "n_harmful": Metric(None, "harmful prompts", "harmful prompts evaluated"),
    "n_benign": Metric(None, "benign prompts", "benign prompts evaluated"),
}
HEADLINE: tuple[str, ...] = tuple(METRICS)
# metric -> "higher" | "lower": the metrics a gate's max_regression can compare.
DIRECTION: dict[str, str] = {k: m.direction for k, m in METRICS.items() if m.direction}


@dataclass
class Scorecard:
    """A safety scorecard (see the module docstring for the JSON form)."""

    name: str
    model: str
    data: str
    metrics: dict[str, float]
    per_category: dict[str, dict]
    counts: dict
    data_digest: str | None = None
    samples: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    splits: dict[str, dict] = field(default_factory=dict)
    schema: str = SCHEMA

    def to_dict(self) -> dict:
        """The JSON form ("schema" first)."""
        d = asdict(self)
        return {"schema": d.pop("schema"), **d}

    @classmethod
    def from_dict(cls, d: Any, source: str = "<scorecard dict>") -> Scorecard:
        """Check `d` (see `check`) and that it holds every key of a full scorecard."""
        check(d, source)
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise VlalignError(f"scorecard {source}: missing keys {missing}")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def check(card: Any, where: str = "<scorecard dict>") -> dict[str, Any]:
    """`card` itself when it follows the reader's contract; else VlalignError naming the key."""
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
    if not isinstance(card.get("name"), str) or not card["name"]:
        raise VlalignError(f"scorecard {where}: key 'name' must be a non-empty string")
    return card


def load_scorecard(source: Scorecard | dict[str, Any] | str | Path) -> dict[str, Any]:
    """The checked JSON dict of a scorecard, a dict, a scorecard.json file or a folder holding one."""
    if isinstance(source, Scorecard):
        return source.to_dict()
    if isinstance(source, dict):
        return check(source)
    path = Path(source)
    if path.is_dir():
        path = path / JSON_NAME
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, IsADirectoryError):
        raise VlalignError(f"scorecard {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VlalignError(f"scorecard {path}: not valid JSON: {e}") from None
    return check(card, str(path))


def read_scorecard(source: str | Path | dict[str, Any]) -> Scorecard:
    """A full Scorecard from a file, a folder holding scorecard.json, or its JSON dict."""
    where = "<scorecard dict>" if isinstance(source, dict) else str(source)
    return Scorecard.from_dict(load_scorecard(source), where)


def write_json(card: Scorecard, path: str | Path) -> Path:
    """Write the scorecard JSON (sorted keys, 2-space indent)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def headline(card: dict[str, Any] | Scorecard) -> dict[str, float]:
    """The headline metrics present in a scorecard (finite values only), in HEADLINE order."""
    m = card.metrics if isinstance(card, Scorecard) else card["metrics"]
    return {k: float(m[k]) for k in HEADLINE if k in m and math.isfinite(float(m[k]))}


def metric_direction(metric: str) -> str | None:
    """ "higher" | "lower" for a headline metric, also when it names a split
    (`shift-visual/harmful_refusal_rate`); None for a count or an unknown name."""
    return DIRECTION.get(metric.rsplit("/", 1)[-1])
