"""A promotion attempt's comparison with the current champion, recorded on the version.

    vs = against_champion(version, champion, max_regression, card, champion_card)   # pure
    vs = record(store, name, version, run_id, vs)                                    # MLflow

`record` tags the version `vlalign.vs_champion` with a short summary ("vs v3: 3 better, 5 same,
1 worse: weapons -0.07", short enough for the UI's tag column) and logs to the candidate's run
`promotion/vs_champion.html` (a table per split; the version's description links it) and
`promotion/vs_champion.json` (the same for machines). With no champion the tag says "first
champion: nothing to compare" ("no champion yet: ..." when the version was refused) and nothing
is logged.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from vlalign.tracking.comparison import compare, render_html
from vlalign.tracking.description import VsChampion
from vlalign.tracking.store import Store, client_for

TAG = "vlalign.vs_champion"
HTML_ARTIFACT = "promotion/vs_champion.html"
JSON_ARTIFACT = "promotion/vs_champion.json"
FIRST = "first champion: nothing to compare"
NO_CHAMPION = "no champion yet: nothing to compare"  # the same, for a refused version
ALREADY = "already the champion: nothing to compare"


def against_champion(
    version: str,
    champion: str | None,
    max_regression: dict[str, float],
    card: dict[str, Any],
    champion_card: dict[str, Any] | None,
) -> VsChampion:
    """Compare the candidate's scorecard (`card`) with the champion's (pure).

    champion: the champion's version (None: there is none). champion_card: its scorecard (at
    least {"metrics": ...}; None when nothing of it could be read).
    """
    if champion is None:
        return VsChampion(None, note=FIRST)
    if champion == version:
        return VsChampion(champion, note=ALREADY)
    if champion_card is None:
        return VsChampion(champion, note=f"version {champion}'s scorecard could not be read")
    cmp = compare(card, champion_card, max_regression, champion)
    if "per_category" not in champion_card:
        cmp.notes.append(
            f"version {champion}'s scorecard file could not be read: only its tagged headline "
            "metrics were compared"
        )
    return VsChampion(champion, cmp)


def tag_value(vs: VsChampion) -> str:
    """The `vlalign.vs_champion` tag: "vs v3: <summary>" or the note."""
    if vs.comparison is None:
        return vs.note or "nothing compared"
    return f"vs v{vs.champion}: {vs.comparison.summary()}"


def record(
    store: Store, name: str, version: str, run_id: str | None, vs: VsChampion, passed: bool
) -> VsChampion:
    """Tag the version and log the HTML + JSON comparison to its run; returns `vs` with the
    HTML artifact's path set (left None, with a note, when there is no run to log to).
    passed: the attempt's verdict (a refused version is no "first champion")."""
    if vs.champion is None and not passed:
        vs = replace(vs, note=NO_CHAMPION)
    client = client_for(store)
    client.set_model_version_tag(name, version, TAG, tag_value(vs))
    cmp = vs.comparison
    if cmp is None:
        return vs
    if not run_id:
        cmp.notes.append("the version has no run: the comparison was not logged as an artifact")
        return vs
    client.log_text(run_id, render_html(cmp), HTML_ARTIFACT)
    client.log_dict(run_id, cmp.to_dict(), JSON_ARTIFACT)
    return replace(vs, artifact=HTML_ARTIFACT)


def summary_lines(vs: VsChampion) -> list[str]:
    """What `vlalign registry promote` prints about the comparison."""
    if vs.comparison is None:
        return [f"against the champion: {vs.note or 'nothing compared'}"]
    lines = vs.comparison.lines()
    if vs.artifact:
        lines.append(f"  per-category comparison logged to the version's run: {vs.artifact}")
    return lines
