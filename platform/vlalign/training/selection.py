"""Which checkpoint a run exports, and when it stops early: pure functions over the history of
in-loop scorecards (`train.eval_every`).

An evaluation record (JSON, kept in `TrainerState.inloop["history"]`, so a resumed run decides
the same way) is `{"step": int, "metrics": {name: float}, "gates_passed": bool | None}`;
`metrics` are scorecard metrics (`harmful_refusal_rate`, `<split>/<metric>`, ...), and
`gates_passed` is the verdict of the recipe's absolute `promotion.gates` (None: there are
none). `promotion.max_regression` compares a version with the registry's champion, which a
run does not know: it is left to promotion.

The exported checkpoint (`choose`):
- `train.best.metric` null: the latest evaluation that passes the gates;
- a metric: the best by it (its direction is the scorecard's; among ties, the latest) among
  the evaluations passing the gates, or among all when `promotion.gates` is empty;
- no such evaluation (or no gates and no metric): the final weights, with the reason said.

Early stopping (`stop_reason`): the latest evaluation passes the gates and the watched metric
has not improved (by more than `min_delta`) for `patience` evaluations in a row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vlalign.config.schema import BestConfig, EarlyStopConfig, PromotionConfig
from vlalign.gates import absolute_gates
from vlalign.scorecard import HIGHER, metric_direction


@dataclass(frozen=True)
class Choice:
    """The step whose weights are exported and why (a phrase for the run's summary)."""

    step: int
    reason: str
    final: bool = False  # the final weights, not a selected checkpoint

    def describe(self) -> str:
        return f"step {self.step}: {self.reason}"


def gates_passed(promotion: PromotionConfig, metrics: dict[str, float]) -> bool | None:
    """The verdict of the absolute `promotion.gates` on `metrics`; None when there are none."""
    if not promotion.gates:
        return None
    return all(r.passed for r in absolute_gates(promotion.gates, metrics))


def record(step: int, metrics: dict[str, float], promotion: PromotionConfig) -> dict:
    """The history record of one in-loop scorecard (see the module docstring)."""
    return {
        "step": step,
        "metrics": dict(metrics),
        "gates_passed": gates_passed(promotion, metrics),
    }


def _value(rec: dict, metric: str) -> float | None:
    v = rec["metrics"].get(metric)
    return float(v) if v is not None and math.isfinite(float(v)) else None


def _better(a: float, b: float, metric: str) -> float:
    """How much better `a` is than `b` (negative: worse)."""
    return a - b if metric_direction(metric) == HIGHER else b - a


def choose(history: list[dict], best: BestConfig, final_step: int) -> Choice:
    """The checkpoint to export after `final_step` (see the module docstring)."""
    n = len(history)
    has_gates = any(h["gates_passed"] is not None for h in history)
    if not history:
        return Choice(final_step, "final weights (no in-loop scorecard)", final=True)
    if not has_gates and best.metric is None:
        return Choice(final_step, "final weights (no promotion.gates to select by)", final=True)
    pool = [h for h in history if h["gates_passed"]] if has_gates else list(history)
    if not pool:
        return Choice(
            final_step,
            f"final weights: none of the {n} in-loop scorecards passed the gates",
            final=True,
        )
    if best.metric is None:
        return Choice(pool[-1]["step"], "latest passing the gates")
    ranked = [(h, v) for h in pool if (v := _value(h, best.metric)) is not None]
    if not ranked:
        return Choice(
            final_step, f"final weights: no in-loop scorecard has {best.metric}", final=True
        )
    top_rec, top = ranked[0]
    for h, v in ranked[1:]:
        if _better(v, top, best.metric) >= 0:  # ties go to the later checkpoint
            top_rec, top = h, v
    among = " among those passing the gates" if has_gates else ""
    return Choice(top_rec["step"], f"best {best.metric} ({top:.4g}){among}")


def stop_reason(history: list[dict], cfg: EarlyStopConfig | None) -> str | None:
    """Why the run ends now (see the module docstring), or None to go on."""
    if cfg is None or not history or not history[-1]["gates_passed"]:
        return None
    best: float | None = None
    stalled = 0
    for h in history:
        v = _value(h, cfg.metric)
        if v is not None and (best is None or _better(v, best, cfg.metric) > cfg.min_delta):
            best, stalled = v, 0
        else:
            stalled += 1
    if stalled < cfg.patience:
        return None
    return (
        f"train.early_stop: the gates pass and {cfg.metric} has not improved by more than "
        f"{cfg.min_delta:g} for {stalled} in-loop scorecards"
    )


def protected_step(history: list[dict], best: BestConfig) -> int | None:
    """The step of the checkpoint `choose` picks now (checkpoint rotation must keep it)."""
    c = choose(history, best, final_step=-1)
    return None if c.final else c.step
