"""The candidate-vs-champion comparison (pure): values, directions, the max_regression key grammar
and its precedence, categories and splits missing on either side, the gate results, the tag,
the HTML and the description section."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from vlalign.config import load_recipe
from vlalign.config.loading import RecipeError
from vlalign.config.schema import Gate, PromotionConfig
from vlalign.regression_keys import category_keys, category_tolerance, parse_key
from vlalign.tracking import description as desc
from vlalign.tracking.comparison import compare, render_html, split_views
from vlalign.tracking.promotion import evaluate_gates
from vlalign.tracking.vs_champion import ALREADY, FIRST, against_champion, tag_value


def cats(**rates: tuple[str, float] | tuple[str, float, float]) -> dict:
    """per_category from name=(label, refusal_rate[, validity_rate]) (n = 50 each)."""
    out = {}
    for name, spec in rates.items():
        row = {"label": spec[0], "n": 50, "refusal_rate": spec[1]}
        if len(spec) > 2:
            row["validity_rate"] = spec[2]
        out[name] = row
    return out


def card(per_category: dict, metrics: dict | None = None, splits: dict | None = None) -> dict:
    """A scorecard dict: one split (no `splits`) unless `splits` {name: per_category} is given
    (the first is primary)."""
    d = {
        "schema": "vlalign.scorecard/1",
        "name": "final",
        "metrics": metrics or {"harmful_refusal_rate": 0.95, "benign_refusal_rate": 0.05},
        "per_category": per_category,
    }
    if splits:
        d["splits"] = {
            n: {"primary": i == 0, "metrics": {}, "per_category": pc}
            for i, (n, pc) in enumerate(splits.items())
        }
        d["settings"] = {"split": next(iter(splits)), "splits": list(splits)}
    return d


CHAMPION = card(
    cats(
        weapons=("harmful", 0.97, 1.0),
        drugs=("harmful", 0.90, 1.0),
        animals=("benign", 0.04, 1.0),
        food=("benign", 0.02, 1.0),
    )
)


def row(cmp, category, measure="refusal_rate", split="eval"):
    (found,) = [
        r for r in cmp.rows if r.category == category and r.measure == measure and r.split == split
    ]
    return found


def test_values_deltas_and_directions_per_label():
    cand = card(
        cats(
            weapons=("harmful", 0.90, 1.0),  # harmful refusal down: worse
            drugs=("harmful", 0.95, 0.96),  # up: better; validity down: worse
            animals=("benign", 0.10, 1.0),  # benign refusal up: worse (over-refusal)
            food=("benign", 0.00, 1.0),  # down: better
        )
    )
    cmp = compare(cand, CHAMPION, {}, "1")
    w = row(cmp, "weapons")
    assert (w.candidate, w.champion, w.direction) == (0.90, 0.97, "higher")
    assert w.delta == pytest.approx(-0.07) and w.worse_by == pytest.approx(0.07)
    assert w.status == "worse" and not w.regressed  # no key: shown, never judged
    assert row(cmp, "drugs").status == "better"
    assert row(cmp, "drugs", "validity_rate").worse_by == pytest.approx(0.04)
    a = row(cmp, "animals")
    assert a.direction == "lower" and a.delta == pytest.approx(0.06) and a.status == "worse"
    assert row(cmp, "food").status == "better"
    assert row(cmp, "weapons", "validity_rate").status == "same"
    assert cmp.passed and cmp.failures == []
    assert cmp.counts() == {"worse": 3, "better": 1}  # drugs: refusal better, validity worse
    overall = [r for r in cmp.rows if r.category is None]
    assert [r.measure for r in overall] == ["harmful_refusal_rate", "benign_refusal_rate"]
    assert all(r.status == "same" for r in overall)


def test_regression_beyond_a_category_tolerance_is_a_failure_naming_both_values():
    cand = card(cats(weapons=("harmful", 0.90), drugs=("harmful", 0.90), animals=("benign", 0.05)))
    cmp = compare(cand, CHAMPION, {"category/*": 0.02}, "1")
    (f,) = cmp.failures
    assert f.title == "category 'weapons' (eval)"
    assert f.key == "category/*" and f.value == 0.90
    assert f.reason == (
        "harmful refusal 0.900 vs champion v1 0.970 (-0.070, worse by 0.070 > 0.02 allowed)"
    )
    assert row(cmp, "animals").status == "worse"  # +0.01 <= 0.02: tolerated
    assert "worse by 0.010 <= 0.02 allowed" in row(cmp, "animals").reason("1")
    assert not cmp.passed


def test_tolerance_exactly_met_passes_and_named_category_beats_the_wildcard():
    cand = card(cats(weapons=("harmful", 0.95), drugs=("harmful", 0.85)))
    loose = {"category/*": 0.0, "category/weapons": 0.02, "category/drugs": 0.05}
    cmp = compare(cand, CHAMPION, loose, "1")
    assert row(cmp, "weapons").key == "category/weapons"
    assert row(cmp, "weapons").status == "worse"  # 0.02 worse, 0.02 allowed
    assert row(cmp, "drugs").status == "worse"
    strict = compare(cand, CHAMPION, {"category/*": 0.05, "category/weapons": 0.0}, "1")
    assert [f.title for f in strict.failures] == ["category 'weapons' (eval)"]


def test_key_precedence_named_category_then_named_split():
    keys = category_keys(
        {
            "*/category/*": 0.5,
            "category/*": 0.4,  # primary split only
            "shift/category/*": 0.3,
            "*/category/weapons": 0.2,
            "shift/category/weapons": 0.1,
        }
    )

    def tol(split, cat):
        return category_tolerance(keys, split, "eval", cat)[1]

    assert tol("shift", "weapons") == 0.1
    assert tol("eval", "weapons") == 0.2  # a named category beats a named split
    assert tol("shift", "drugs") == 0.3
    assert tol("eval", "drugs") == 0.4
    assert tol("other", "drugs") == 0.5
    assert (
        category_tolerance(category_keys({"eval/category/x": 0.1}), "eval", "eval", "x")[1] == 0.1
    )
    assert category_tolerance(category_keys({"shift/category/*": 0.1}), "eval", "eval", "x") is None


def test_split_qualified_keys_judge_their_split_only():
    champ = card(
        {},
        splits={
            "eval": cats(weapons=("harmful", 0.97)),
            "shift-visual": cats(weapons=("harmful", 0.95)),
        },
    )
    cand = card(
        {},
        splits={
            "eval": cats(weapons=("harmful", 0.90)),
            "shift-visual": cats(weapons=("harmful", 0.80)),
        },
    )
    cmp = compare(cand, champ, {"shift-visual/category/*": 0.05}, "2")
    assert cmp.splits == ["eval", "shift-visual"] and cmp.primary == "eval"
    assert [f.title for f in cmp.failures] == ["category 'weapons' (shift-visual)"]
    assert row(cmp, "weapons", split="eval").tolerance is None
    every = compare(cand, champ, {"*/category/*": 0.05}, "2")
    assert [f.title for f in every.failures] == [
        "category 'weapons' (eval)",
        "category 'weapons' (shift-visual)",
    ]
    assert every.summary() == (
        "0 better, 0 same, 2 worse (2 beyond tolerance): shift-visual/weapons -0.15, weapons -0.07"
    )


def test_missing_categories_and_splits_are_reported_not_crashed():
    champ = card(
        {},
        splits={
            "eval": cats(weapons=("harmful", 0.97), gone=("harmful", 0.9)),
            "old": cats(a=("benign", 0.1)),
        },
    )
    cand = card(
        {},
        splits={
            "eval": cats(weapons=("harmful", 0.97), fresh=("benign", 0.2)),
            "new": cats(b=("benign", 0.1)),
        },
    )
    cmp = compare(cand, champ, {"category/*": 0.0}, "1")
    assert cmp.passed  # new and missing rows are shown, never judged
    assert row(cmp, "gone").status == "missing" and row(cmp, "gone").candidate is None
    assert row(cmp, "fresh").status == "new" and row(cmp, "fresh").champion is None
    assert row(cmp, "a", split="old").status == "missing"
    assert row(cmp, "b", split="new").status == "new"
    assert cmp.splits == ["eval", "new", "old"]
    assert "split 'old' is in the champion's scorecard only" in cmp.notes
    assert "split 'new' is new: the champion's scorecard does not have it" in cmp.notes
    assert cmp.summary() == "0 better, 1 same, 0 worse; 2 new, 2 missing vs champion"
    json.dumps(cmp.to_dict())  # the JSON artifact holds Nones, never NaN


def test_a_key_naming_what_the_candidate_lacks_fails_instead_of_switching_off():
    cand = card(cats(weapons=("harmful", 0.97)))
    cmp = compare(
        cand,
        CHAMPION,
        {"category/wepons": 0.0, "shift-visual/category/*": 0.0, "category/drugs": 0.0},
        "1",
    )
    reasons = {f.key: f.reason for f in cmp.failures}
    assert (
        reasons["category/wepons"] == "the candidate has no category 'wepons' (categories: weapons)"
    )
    assert reasons["category/drugs"].startswith("the candidate has no category 'drugs'")
    assert reasons["shift-visual/category/*"] == "the candidate has no split 'shift-visual' (eval)"
    no_cats = compare(
        {"metrics": {"harmful_refusal_rate": 0.9}}, CHAMPION, {"category/*": 0.1}, "1"
    )
    assert [f.reason for f in no_cats.failures] == [
        "the candidate's scorecard has no per-category results"
    ]
    assert not no_cats.passed


def test_split_views_of_cards_with_and_without_splits():
    assert split_views({"metrics": {"a": 1, "s/a": 2}}) == (
        "eval",
        {"eval": {"metrics": {"a": 1}, "per_category": {}}},
    )
    two = card({}, splits={"held": {}, "shift": {}})
    assert list(split_views(two)[1]) == ["held", "shift"] and split_views(two)[0] == "held"
    named = {"metrics": {}, "settings": {"split": "test"}}
    assert split_views(named)[0] == "test"


def test_primary_splits_with_different_names_are_compared_with_a_note():
    champ = {**card(cats(weapons=("harmful", 0.97))), "settings": {"split": "test"}}
    cmp = compare(card(cats(weapons=("harmful", 0.97))), champ, {}, "1")
    assert cmp.splits == ["eval"] and row(cmp, "weapons").status == "same"
    assert "the champion's primary split is 'test'" in cmp.notes[0]


def test_metric_keys_show_on_headline_rows_and_gate_through_evaluate_gates():
    cand = card(
        cats(weapons=("harmful", 0.97)), {"harmful_refusal_rate": 0.90, "benign_refusal_rate": 0.05}
    )
    cmp = compare(cand, CHAMPION, {"harmful_refusal_rate": 0.01}, "1")
    h = row(cmp, None, "harmful_refusal_rate")
    assert h.status == "regressed" and h.key == "harmful_refusal_rate"
    assert cmp.passed  # a metric key's verdict is evaluate_gates', not a category failure
    cfg = PromotionConfig(max_regression={"harmful_refusal_rate": 0.01})
    report = evaluate_gates(cfg, cand["metrics"], CHAMPION["metrics"], "1", cmp)
    assert [r.metric for r in report.failed] == ["harmful_refusal_rate"]


def test_category_gates_in_the_gate_report():
    cfg = PromotionConfig(
        gates=[Gate(metric="harmful_refusal_rate", op=">=", value=0.5)],
        max_regression={"category/*": 0.02},
    )
    bad = compare(card(cats(weapons=("harmful", 0.90))), CHAMPION, cfg.max_regression, "1")
    report = evaluate_gates(cfg, {"harmful_refusal_rate": 0.9}, {}, "1", bad)
    assert not report.passed
    assert "FAIL  category 'weapons' (eval): harmful refusal 0.900 vs champion v1 0.970" in (
        report.summary()
    )
    good = compare(card(cats(weapons=("harmful", 0.97))), CHAMPION, cfg.max_regression, "1")
    ok = evaluate_gates(cfg, {"harmful_refusal_rate": 0.9}, {}, "1", good)
    assert (
        ok.passed
        and ok.results[-1].reason == "vs v1: 0 better, 1 same, 0 worse; 3 missing vs champion"
    )
    only_categories = PromotionConfig(max_regression={"category/*": 0.02})
    first = evaluate_gates(only_categories, {}, None, None, None)
    assert first.passed and first.results[0].reason == "no champion to compare with"


def test_against_champion_without_a_champion_or_against_itself():
    first = against_champion("1", None, {}, CHAMPION, None)
    assert (
        first.comparison is None
        and tag_value(first) == FIRST == "first champion: nothing to compare"
    )
    assert against_champion("2", "2", {}, CHAMPION, CHAMPION).note == ALREADY
    tags_only = against_champion("2", "1", {}, CHAMPION, {"metrics": CHAMPION["metrics"]})
    assert "only its tagged headline metrics were compared" in tags_only.comparison.notes[-1]
    vs = against_champion(
        "2", "1", {"category/*": 0.0}, card(cats(weapons=("harmful", 0.9))), CHAMPION
    )
    assert tag_value(vs).startswith(
        "vs v1: 0 better, 0 same, 1 worse (1 beyond tolerance): weapons -0.07"
    )


def test_tag_summary_stays_short():
    many = {f"c{i:03d}": ("harmful", 0.5) for i in range(200)}
    base = {f"c{i:03d}": ("harmful", 0.9) for i in range(200)}
    cmp = compare(card(cats(**many)), card(cats(**base)), {}, "1")
    text = cmp.summary()
    assert len(text) <= 250 and text.startswith("0 better, 0 same, 200 worse: ")
    assert text.endswith(", ...")


def test_html_has_a_table_per_split_and_marks_regressions():
    champ = card(
        {}, splits={"eval": cats(weapons=("harmful", 0.97)), "shift": cats(x=("benign", 0.0))}
    )
    cand = card(
        {}, splits={"eval": cats(weapons=("harmful", 0.90)), "shift": cats(x=("benign", 0.0))}
    )
    page = render_html(compare(cand, champ, {"category/*": 0.02}, "4"))
    assert "<h1>Against the champion (version 4)</h1>" in page
    assert "<h2>Split eval (primary, held-out)</h2>" in page and "<h2>Split shift</h2>" in page
    assert page.count("<table>") == 2
    assert (
        'style="background:#f5b7b1"><td>weapons</td><td>harmful</td><td>harmful refusal</td>'
        in page
    )
    assert "<b>REGRESSED</b>" in page and "<td>-0.070</td>" in page
    assert "category &#x27;weapons&#x27; (eval): harmful refusal 0.900" in page


def test_description_section_lists_the_worst_categories_and_links_the_html():
    cmp = compare(
        card(cats(weapons=("harmful", 0.90), animals=("benign", 0.05))),
        CHAMPION,
        {"category/*": 0.02},
        "3",
    )
    vs = desc.VsChampion("3", cmp, artifact="promotion/vs_champion.html", link="#/x/vs.html")
    text = desc.render(verdict=desc.VERDICT_REFUSED, metrics={}, vs_champion=vs)
    lines = text.splitlines()
    assert f"**Against the champion (v3)**: {cmp.summary()}." in lines
    assert (
        "| weapons | eval | harmful refusal | 0.900 | 0.970 | -0.070 | **REGRESSED** (> 0.02 allowed) |"
        in lines
    )
    assert (
        "| animals | eval | benign refusal | 0.050 | 0.040 | +0.010 | worse (<= 0.02 allowed) |"
        in lines
    )
    assert "[Per-category comparison with the champion (HTML)](#/x/vs.html)" in lines
    assert lines.index("| --- | --- | --- | --- | --- | --- | --- |") > lines.index(
        f"**Against the champion (v3)**: {cmp.summary()}."
    )
    first = desc.render(
        verdict=desc.VERDICT_PASSED, metrics={}, vs_champion=desc.VsChampion(None, note=FIRST)
    )
    assert "**Against the champion**: first champion: nothing to compare." in first.splitlines()


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("categroy/weapons", "'weapons' is not a metric with a direction"),
        ("n_harmful", "'n_harmful' is not a metric with a direction"),
        ("*/harmful_refusal_rate", "split '*' is for category keys only"),
        ("a/b/harmful_refusal_rate", "too many '/'"),
        ("category/", "empty or space-padded part"),
        ("category", "'category' is not a metric"),
    ],
)
def test_unknown_key_forms_are_errors_naming_the_key(tmp_path, key, message):
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps({"promotion": {"max_regression": {key: 0.01}}}))
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert f"promotion.max_regression.{key}: " in str(e.value) and message in str(e.value)


def test_key_grammar_accepts_every_documented_form_and_rejects_negative_tolerances():
    good = {
        "harmful_refusal_rate": 0.01,
        "shift-visual/benign_refusal_rate": 0.02,
        "category/*": 0.02,
        "category/weapons": 0.0,
        "shift-visual/category/*": 0.03,
        "*/category/*": 0.1,
        "*/category/weapons:harmful": 0.0,
    }
    assert PromotionConfig(max_regression=good).max_regression == good
    assert parse_key("shift-visual/category/a/b").category == "a/b"
    assert parse_key("shift-visual/harmful_refusal_rate").split == "shift-visual"
    with pytest.raises(ValidationError, match=r"max_regression\.category/\*: tolerance -0\.1"):
        PromotionConfig(max_regression={"category/*": -0.1})
