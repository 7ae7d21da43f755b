"""Gate verdicts over scorecard metrics, and the absolute gates, evaluated purely.

Absolute gates come from the recipe's `promotion.gates`: thresholds over scorecard metrics
(`harmful_refusal_rate >= 0.95`, `shift-visual/harmful_refusal_rate >= 0.9`). Worse/better is
defined per metric by the scorecard schema (`vlalign.scorecard.DIRECTION`); a metric naming a
split has its base metric's direction.

Two users: `vlalign.tracking.promotion.evaluate_gates` (a registered version: these gates plus
the `max_regression` tolerances against the champion; it re-exports these names) and the
training loop's in-loop scorecard (`vlalign.training.selection`: absolute gates only, there is
no champion inside a run).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from vlalign.config.schema import Gate
from vlalign.scorecard import metric_direction

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass
class GateResult:
    """One gate's verdict. gate: its text; value: the candidate's metric (None if missing)."""

    gate: str
    metric: str
    passed: bool
    value: float | None
    reason: str


@dataclass
class GateReport:
    """Every gate's verdict; passes only when there is at least one gate and all pass."""

    results: list[GateResult] = field(default_factory=list)
    champion: str | None = None

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def failed(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    def summary(self) -> str:
        """One line per gate: PASS/FAIL, the gate, and why."""
        return "\n".join(
            f"  {'PASS' if r.passed else 'FAIL'}  {r.gate}: {r.reason}" for r in self.results
        )

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "champion": self.champion,
            "results": [asdict(r) for r in self.results],
        }


def direction(metric: str) -> str | None:
    """Which way is better for `metric`, also when it names a split (`<split>/<metric>`)."""
    return metric_direction(metric)


def finite(value: float | None) -> bool:
    """A metric value a gate can compare (present, not NaN or infinite)."""
    return value is not None and math.isfinite(value)


def absolute_gates(gates: Sequence[Gate], metrics: dict[str, float]) -> list[GateResult]:
    """The verdict of each absolute gate on `metrics`; a metric missing (or not finite) fails."""
    results = []
    for g in gates:
        text = f"{g.metric} {g.op} {g.value:g}"
        value = metrics.get(g.metric)
        if not finite(value):
            reason = (
                "missing from the scorecard" if value is None else f"value {value} is not finite"
            )
            results.append(GateResult(text, g.metric, False, value, reason))
            continue
        ok = OPS[g.op](value, g.value)
        results.append(GateResult(text, g.metric, ok, value, f"got {value:g}"))
    return results
