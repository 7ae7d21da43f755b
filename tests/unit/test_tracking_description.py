"""The registered version's description (markdown the MLflow UI renders): verdict, gates,
headline scorecard and the link to the HTML scorecard."""

from __future__ import annotations

from vlalign.tracking import description as desc


def test_refused_description_lists_every_gate_and_the_headline_scorecard():
    text = desc.render(
        verdict=desc.VERDICT_REFUSED,
        metrics={
            "harmful_refusal_rate": 0.9,
            "benign_refusal_rate": 0.02,
            "n_harmful": 100.0,
            "loss": 1.5,  # not a headline metric: not shown
        },
        scorecard_name="final",
        gates=[
            desc.GateRow("harmful_refusal_rate >= 0.95", False, "got 0.9"),
            desc.GateRow("benign_refusal_rate <= 0.05", True, "got 0.02"),
        ],
        champion="1",
        link=desc.scorecard_link("7", "abc", "final"),
        details={"method": "sft/sigmoid", "run": "abc"},
        when=0.0,
    )
    lines = text.splitlines()
    assert lines[0] == "### Promotion refused: champion unchanged"
    assert "Updated 1970-01-01 00:00 UTC." in lines
    assert "**Gates**: 1 of 2 gates failed (compared with champion version 1)." in lines
    assert "| harmful_refusal_rate >= 0.95 | **FAIL** | got 0.9 |" in lines
    assert "| benign_refusal_rate <= 0.05 | PASS | got 0.02 |" in lines
    assert "| harmful_refusal_rate | 0.900 |" in lines and "| n_harmful | 100 |" in lines
    assert not any("loss" in line for line in lines)
    assert (
        "[Full HTML scorecard (per category, samples)]"
        "(#/experiments/7/runs/abc/artifactPath/eval/final/scorecard.html)"
    ) in lines
    assert "- method: `sft/sigmoid`" in lines


def test_candidate_without_scorecard_or_run_says_so():
    text = desc.render(verdict=desc.VERDICT_CANDIDATE, metrics={})
    assert text.startswith("### Candidate: promotion not tried yet")
    assert "checked when promotion is tried (`vlalign registry promote`)" in text
    assert "**Scorecard**: none logged with this version." in text
    assert desc.scorecard_link(None, "abc", "final") is None
    assert "HTML scorecard" not in text


def test_table_cells_cannot_break_the_markdown():
    text = desc.render(
        verdict=desc.VERDICT_PASSED,
        metrics={},
        gates=[desc.GateRow("a | b", True, "line\nbreak")],
    )
    assert "| a \\| b | PASS | line break |" in text.splitlines()
    assert "**Gates**: every gate passed." in text
