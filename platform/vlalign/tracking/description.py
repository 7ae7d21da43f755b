"""A registered version's description: what a release owner reads on its page in the MLflow UI.

MLflow's version page shows only a few of a version's tags (4 of 15 in MLflow 3.17) and the
model page cuts tag values short; the description is rendered whole, as markdown. It holds the
promotion verdict, every gate's result, the comparison with the champion it was tried against
(its worst categories and a link to the whole per-category comparison), the headline scorecard
and a link to the HTML scorecard logged with the run. Registration writes it (verdict: candidate, not tried yet); every promotion
attempt and every rollback writes it again. Pure rendering; the registry and promotion modules
set it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from vlalign import scorecard as sc
from vlalign.tracking.comparison import Comparison

HTML_NAME = "scorecard.html"  # the page vlalign.evaluation.mlflow_log writes beside scorecard.json
VERDICT_CANDIDATE = "candidate"
VERDICT_PASSED = "passed"
VERDICT_REFUSED = "refused"
VERDICT_ROLLED_BACK = "rolled_back"
VERDICT_RESTORED = "restored"
_HEADLINES = {
    VERDICT_CANDIDATE: "Candidate: promotion not tried yet",
    VERDICT_PASSED: "Promotion passed: champion",
    VERDICT_REFUSED: "Promotion refused: champion unchanged",
    VERDICT_ROLLED_BACK: "Rolled back: no longer champion",
    VERDICT_RESTORED: "Champion again: restored by rollback",
}


def superseded(by: str | int) -> str:
    """The verdict line of a champion replaced by version `by`."""
    return f"Passed its gates; champion until version {by} replaced it"


@dataclass(frozen=True)
class GateRow:
    """One gate's line in the description: its text, PASS/FAIL and why."""

    gate: str
    passed: bool
    reason: str


@dataclass(frozen=True)
class VsChampion:
    """The section "Against the champion" of a promotion attempt.

    champion: the version compared with (None: there was no champion). comparison: the result
    (None: nothing compared, `note` says why). artifact: the run-relative path of the HTML
    comparison; link: its UI link (the registry fills it in from the artifact).
    """

    champion: str | None
    comparison: Comparison | None = None
    note: str | None = None
    artifact: str | None = None
    link: str | None = None


WORST_SHOWN = 5  # categories listed in the description (all are in the HTML comparison)


def artifact_link(experiment_id: str | None, run_id: str | None, path: str | None) -> str | None:
    """A UI link (relative to the MLflow UI that shows the page) to a run artifact."""
    if not (experiment_id and run_id and path):
        return None
    return f"#/experiments/{experiment_id}/runs/{run_id}/artifactPath/{path}"


def scorecard_link(experiment_id: str | None, run_id: str | None, name: str | None) -> str | None:
    """A UI link (relative to the MLflow UI that shows the page) to the run's HTML scorecard."""
    if not name:
        return None
    return artifact_link(experiment_id, run_id, f"eval/{name}/{HTML_NAME}")


def _vs_champion_lines(vs: VsChampion) -> list[str]:
    title = "Against the champion" + (f" (v{vs.champion})" if vs.champion else "")
    cmp = vs.comparison
    if cmp is None:
        return ["", f"**{title}**: {vs.note or 'nothing compared'}."]
    lines = ["", f"**{title}**: {_cell(cmp.summary())}."]
    worst = cmp.worst(WORST_SHOWN)
    if worst:
        lines += ["", "| category | split | rate | candidate | champion | delta | result |"]
        lines += ["| --- | --- | --- | --- | --- | --- | --- |"]
        for r in worst:
            result = (
                f"**REGRESSED** (> {r.tolerance:g} allowed)"
                if r.regressed
                else ("worse" if r.tolerance is None else f"worse (<= {r.tolerance:g} allowed)")
            )
            lines.append(
                f"| {_cell(r.category or '')} | {_cell(r.split)} | {r.what} | {r.candidate:.3f} "
                f"| {r.champion:.3f} | {r.delta:+.3f} | {result} |"
            )
    elif cmp.category_rows:
        lines += ["", "No category is worse than the champion's."]
    else:
        lines += ["", "Neither scorecard has per-category results."]
    lines += [""] if cmp.key_problems or cmp.notes else []
    lines += [
        f"- cannot check {_cell(f'{p.key} ({p.split}): {p.reason}')}" for p in cmp.key_problems
    ]
    lines += [f"- note: {_cell(n)}" for n in cmp.notes]
    if vs.link:
        lines += ["", f"[Per-category comparison with the champion (HTML)]({vs.link})"]
    return lines


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _value(metric: str, v: float) -> str:
    return f"{int(v)}" if metric.startswith("n_") else f"{v:.3f}"


def render(
    *,
    verdict: str,
    metrics: dict[str, float],
    scorecard_name: str | None = None,
    gates: Sequence[GateRow] = (),
    champion: str | None = None,
    link: str | None = None,
    details: dict[str, str] | None = None,
    when: float | None = None,
    vs_champion: VsChampion | None = None,
) -> str:
    """The description markdown.

    verdict: candidate | passed | refused | rolled_back | restored. metrics: the version's scorecard metrics
    (only the headline ones are shown). gates: the last promotion attempt's results (empty: not
    tried). champion: the champion the attempt compared against. link: the HTML scorecard.
    details: a few more facts (method, base model, digests), shown as a list. vs_champion: the
    attempt's comparison with the champion (section "Against the champion").
    """
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() if when is None else when))
    lines = [f"### {_HEADLINES.get(verdict, verdict)}", "", f"Updated {stamp}."]
    if gates:
        n_failed = sum(not g.passed for g in gates)
        against = f" (compared with champion version {champion})" if champion else ""
        summary = f"{n_failed} of {len(gates)} gates failed" if n_failed else "every gate passed"
        lines += ["", f"**Gates**: {summary}{against}.", "", "| gate | result | detail |"]
        lines += ["| --- | --- | --- |"]
        lines += [
            f"| {_cell(g.gate)} | {'PASS' if g.passed else '**FAIL**'} | {_cell(g.reason)} |"
            for g in gates
        ]
    elif verdict == VERDICT_CANDIDATE:
        lines += ["", "**Gates**: checked when promotion is tried (`vlalign registry promote`)."]
    if vs_champion is not None:
        lines += _vs_champion_lines(vs_champion)
    shown = sc.headline({"metrics": metrics})
    title = f"**Scorecard** `{scorecard_name}`" if scorecard_name else "**Scorecard**"
    if shown:
        lines += ["", f"{title}:", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {_value(k, v)} |" for k, v in shown.items()]
    else:
        lines += ["", f"{title}: none logged with this version."]
    if link:
        lines += ["", f"[Full HTML scorecard (per category, samples)]({link})"]
    if details:
        lines += [""] + [f"- {k}: `{_cell(v)}`" for k, v in details.items()]
    return "\n".join(lines) + "\n"
