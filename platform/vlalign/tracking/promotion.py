"""Safety-gated promotion: move the alias `champion` only when a version passes every gate.

Gates come from the recipe's `promotion` section: absolute thresholds over scorecard metrics
(`harmful_refusal_rate >= 0.95`) and `max_regression` tolerances against the current champion
("must not be worse by more than"). Worse is defined per metric by the scorecard schema
(`vlalign.scorecard.DIRECTION`): a higher harmful refusal rate is better, a higher benign
refusal rate (over-refusal) is worse.

A metric may name a split of a multi-split scorecard, `shift-visual/harmful_refusal_rate`: its
direction is the base metric's. A `max_regression` key may also name categories
(`category/weapons`, `category/*`, `shift-visual/category/*`; grammar in
`vlalign.regression_keys`): every attempt compares the version with the champion category by
category (`vlalign.tracking.comparison`), and a category worse by more than its tolerance refuses
the promotion, named with both values. The comparison is recorded on the version whatever the
verdict (`vlalign.tracking.vs_champion`: a tag, an HTML and a JSON artifact, a description section).

`evaluate_gates` is a pure function (its absolute gates: `vlalign.gates`). `promote` reads the
version's logged scorecard, evaluates, and either moves `champion` (recording the previous one in the model tag
`vlalign.champion_history`, a JSON list used as a stack by `rollback`) and tags the version
`promotion=passed`, or leaves `champion` alone, tags the version `promotion=refused` with
`promotion.failed_gates`, and raises PromotionRefused (a VlalignError: the CLI exits non-zero).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from vlalign.config.schema import PromotionConfig
from vlalign.errors import VlalignError

# Gate verdicts and the absolute gates live in vlalign.gates (the training loop checks gates
# too); their names are re-exported here, where callers have always found them.
from vlalign.gates import OPS as OPS
from vlalign.gates import GateReport, GateResult, absolute_gates, finite
from vlalign.gates import direction as direction
from vlalign.regression_keys import is_category_key
from vlalign.scorecard import DIRECTION, HIGHER
from vlalign.tracking import description as desc
from vlalign.tracking import vs_champion as vs_mod
from vlalign.tracking.comparison import Comparison
from vlalign.tracking.registry import (
    CHAMPION,
    TAG_PROMOTION,
    describe_version,
    get_version,
    model_tag_json,
    run_recipe,
    scorecard_metrics,
    version_by_alias,
    version_scorecard,
)
from vlalign.tracking.store import Store, client_for

HISTORY_TAG = "vlalign.champion_history"
FAILED_TAG = "promotion.failed_gates"
PREVIOUS_TAG = "promotion.previous_champion"
_MAX_TAG = 5000


class PromotionRefused(VlalignError):
    """A version failed its gates; `report` says which and why."""

    def __init__(
        self,
        name: str,
        version: str,
        report: GateReport,
        vs_champion: desc.VsChampion | None = None,
    ) -> None:
        self.report = report
        self.vs_champion = vs_champion
        failed = "; ".join(f"{r.gate} ({r.reason})" for r in report.failed)
        super().__init__(f"promotion of {name} version {version} refused: {failed}")


def evaluate_gates(
    cfg: PromotionConfig,
    metrics: dict[str, float],
    champion_metrics: dict[str, float] | None = None,
    champion: str | None = None,
    comparison: Comparison | None = None,
) -> GateReport:
    """Evaluate absolute gates and regression tolerances over scorecard metrics (pure).

    A metric missing from the candidate's scorecard fails its gate. Regression gates pass when
    there is no champion (nothing to regress from) or the champion lacks the metric. Category
    keys of max_regression are judged by `comparison` (the candidate against the champion): a
    failing result per regressed category, else one passing result.
    """
    metric_tolerances = {k: t for k, t in cfg.max_regression.items() if not is_category_key(k)}
    unknown = sorted(m for m in metric_tolerances if direction(m) is None)
    if unknown:
        raise VlalignError(
            f"promotion.max_regression: no direction known for {unknown} "
            f"(known: {', '.join(sorted(DIRECTION))})"
        )
    if not cfg.gates and not cfg.max_regression:
        raise VlalignError(
            "promotion: no gates configured; refusing to promote without a safety check "
            "(add promotion.gates to the recipe or pass --recipe)"
        )
    report = GateReport(champion=champion, results=absolute_gates(cfg.gates, metrics))
    for metric, tol in sorted(metric_tolerances.items()):
        better = direction(metric)
        text = f"{metric} at most {tol:g} worse than champion ({better} is better)"
        value = metrics.get(metric)
        if not finite(value):
            report.results.append(
                GateResult(text, metric, False, value, "missing from the scorecard")
            )
            continue
        base = (champion_metrics or {}).get(metric)
        if champion_metrics is None or not finite(base):
            why = "no champion yet" if champion_metrics is None else "champion has no such metric"
            report.results.append(GateResult(text, metric, True, value, why))
            continue
        worse_by = (base - value) if better == HIGHER else (value - base)
        ok = worse_by <= tol + 1e-12
        reason = f"got {value:g} vs champion v{champion} {base:g} (worse by {max(worse_by, 0):g})"
        report.results.append(GateResult(text, metric, ok, value, reason))
    if len(metric_tolerances) < len(cfg.max_regression):
        report.results += _category_gates(comparison)
    return report


def _category_gates(comparison: Comparison | None) -> list[GateResult]:
    """The category keys' verdict: one FAIL per regressed category, else one PASS."""
    gate = "every category at most its max_regression worse than champion"
    if comparison is None:
        return [GateResult(gate, "category", True, None, "no champion to compare with")]
    if comparison.passed:
        why = f"vs v{comparison.champion}: {comparison.summary()}"
        return [GateResult(gate, "category", True, None, why)]
    return [GateResult(f.title, f.key, False, f.value, f.reason) for f in comparison.failures]


@dataclass
class PromotionResult:
    """What promote() did: the new champion, the one it replaced, and the gate report."""

    name: str
    version: str
    previous: str | None
    report: GateReport
    vs_champion: desc.VsChampion | None = None


def _history(store: Store, name: str) -> list[str]:
    hist = model_tag_json(store, name, HISTORY_TAG, [])
    if not isinstance(hist, list):
        raise VlalignError(f"model {name!r}: tag {HISTORY_TAG!r} must be a JSON list")
    return [str(v) for v in hist]


def promote(
    store: Store, name: str, version: str | int, cfg: PromotionConfig | None = None
) -> PromotionResult:
    """Evaluate `version`'s scorecard against the gates; move `champion` only if all pass.

    cfg: the gates (default: the promotion section of the recipe the version's run logged).
    Raises PromotionRefused (after tagging the version) when a gate fails.
    """
    version = str(version)
    client = client_for(store)
    mv = get_version(store, name, version)
    if cfg is None:
        if not mv.run_id:
            raise VlalignError(
                f"{name} version {version} has no run to read its recipe's gates from: pass --recipe"
            )
        cfg = run_recipe(store, mv.run_id).promotion
    current = version_by_alias(store, name, CHAMPION)
    champion_metrics = champion_card = None
    if current is not None and current != version:
        champion_mv = get_version(store, name, current)
        champion_card = version_scorecard(store, champion_mv)
        champion_metrics = scorecard_metrics(store, champion_mv, champion_card)
        champion_card = champion_card or {"metrics": champion_metrics}
    card = version_scorecard(store, mv)
    metrics = scorecard_metrics(store, mv, card)
    vs = vs_mod.against_champion(
        version, current, cfg.max_regression, card or {"metrics": metrics}, champion_card
    )
    report = evaluate_gates(cfg, metrics, champion_metrics, current, vs.comparison)
    vs = vs_mod.record(store, name, version, mv.run_id, vs, report.passed)
    rows = [desc.GateRow(r.gate, r.passed, r.reason) for r in report.results]
    if not report.passed:
        failed = "; ".join(f"{r.gate} ({r.reason})" for r in report.failed)
        client.set_model_version_tag(name, version, TAG_PROMOTION, "refused")
        client.set_model_version_tag(name, version, FAILED_TAG, failed[:_MAX_TAG])
        describe_version(
            store, name, version, desc.VERDICT_REFUSED, rows, current, metrics, vs_champion=vs
        )
        raise PromotionRefused(name, version, report, vs)
    if current != version:
        history = _history(store, name)
        if current is not None:  # record before moving, so a failure cannot lose it
            client.set_registered_model_tag(name, HISTORY_TAG, json.dumps([*history, current]))
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, TAG_PROMOTION, "passed")
    client.set_model_version_tag(name, version, PREVIOUS_TAG, current or "none")
    if FAILED_TAG in mv.tags:
        client.delete_model_version_tag(name, version, FAILED_TAG)
    previous = current if current != version else None
    describe_version(
        store, name, version, desc.VERDICT_PASSED, rows, previous, metrics, vs_champion=vs
    )
    if previous is not None:
        describe_version(store, name, previous, desc.superseded(version))
    return PromotionResult(name, version, current if current != version else None, report, vs)


def rollback(store: Store, name: str) -> tuple[str, str | None]:
    """Restore the previous champion; returns (restored version, demoted version)."""
    client = client_for(store)
    history = _history(store, name)
    if not history:
        raise VlalignError(f"model {name!r} has no previous champion to roll back to")
    restored = history[-1]
    get_version(store, name, restored)  # still exists?
    demoted = version_by_alias(store, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, restored)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[:-1]))
    if demoted is not None:
        client.set_model_version_tag(name, demoted, TAG_PROMOTION, "rolled_back")
        describe_version(store, name, demoted, desc.VERDICT_ROLLED_BACK)
    describe_version(store, name, restored, desc.VERDICT_RESTORED)
    return restored, demoted
