"""A candidate's scorecard against the champion's, split by split and category by category (pure).

    cmp = compare(candidate_card, champion_card, recipe.promotion.max_regression, champion="3")
    cmp.failures      # [Failure(title, key, value, reason)]: what refuses the promotion
    cmp.summary()     # "3 better, 5 same, 1 worse (1 beyond tolerance): weapons -0.07"
    render_html(cmp)  # a table per split, regressions in red

For every split of the candidate (the primary, held-out one first; a card without `splits` is one
split named by settings.split, else "eval") and every category of either side, each per-category
rate the scorecards hold (`vlalign.regression_keys.CATEGORY_MEASURES`: refusal rate, whose better
direction follows the category's label, text validity, pair accuracy) becomes a `Row`: candidate
value, champion value, delta (candidate - champion), which way is better, and the tolerance of
the most specific `promotion.max_regression` category key covering it. Each split's headline
metrics are rows too (category None), with the tolerance of a metric key; they are shown, but
their gate is `evaluate_gates`' (promotion), so they are not among `failures`.

A category or split present on one side only is a row with the other value None (status "new" or
"missing"), never an error. A category key that names a split or a category the candidate's
scorecard lacks is a failure (a typo must not switch a gate off silently), as is a category key
when the candidate has no per-category results on a split it covers.
"""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field
from typing import Any

from vlalign.regression_keys import (
    ANY,
    CATEGORY_MEASURES,
    RegressionKey,
    category_keys,
    category_tolerance,
    is_category_key,
    measure_direction,
    parse_key,
)
from vlalign.scorecard import DIRECTION, HIGHER, METRICS

SAME = 1e-9  # |delta| at most this reads as "same"
DEFAULT_PRIMARY = "eval"  # data.eval_split's default: the primary split of a card without splits
# Headline metrics shown per split (attack_success_rate mirrors harmful_refusal_rate: left out).
SPLIT_METRICS = tuple(m for m in DIRECTION if m != "attack_success_rate")
MEASURE_LABELS = {"validity_rate": "validity", "pair_accuracy": "pair accuracy"}
_PRIORITY = ("regressed", "worse", "better", "same", "n/a")  # a category's status: the first
_TAG_WORST = 3
_TAG_MAX = 250


@dataclass(frozen=True)
class Row:
    """One compared quantity. category None: the split's headline metric `measure`.

    direction: "higher" | "lower" | None (not a quality: shown, never judged). tolerance and key:
    the max_regression entry that judges it (None: shown only).
    """

    split: str
    category: str | None
    label: str | None
    measure: str
    candidate: float | None
    champion: float | None
    direction: str | None
    n: int | None = None
    champion_n: int | None = None
    tolerance: float | None = None
    key: str | None = None

    @property
    def delta(self) -> float | None:
        """candidate - champion (None when either is missing)."""
        if self.candidate is None or self.champion is None:
            return None
        return self.candidate - self.champion

    @property
    def worse_by(self) -> float | None:
        """How much worse than the champion (negative: better); None when not comparable."""
        if self.delta is None or self.direction is None:
            return None
        return -self.delta if self.direction == HIGHER else self.delta

    @property
    def status(self) -> str:
        """new | missing | n/a | better | same | worse (within tolerance) | regressed."""
        if self.champion is None:
            return "new"
        if self.candidate is None:
            return "missing"
        worse = self.worse_by
        if worse is None:
            return "n/a"
        if worse < -SAME:
            return "better"
        if worse <= SAME:
            return "same"
        if self.tolerance is not None and worse > self.tolerance + SAME:
            return "regressed"
        return "worse"

    @property
    def regressed(self) -> bool:
        return self.status == "regressed"

    @property
    def what(self) -> str:
        """The quantity in words: 'harmful refusal', 'benign refusal', 'validity', a metric label."""
        if self.category is None:
            return METRICS[self.measure].label if self.measure in METRICS else self.measure
        if self.measure == "refusal_rate":
            return f"{self.label} refusal" if self.label else "refusal"
        return MEASURE_LABELS.get(self.measure, self.measure)

    def short_name(self, primary: str) -> str:
        """Compact name for a tag: 'weapons', 'shift-visual/weapons validity'."""
        name = self.category if self.category is not None else self.measure
        if self.category is not None and self.measure != "refusal_rate":
            name = f"{name} {self.what}"
        return name if self.split == primary else f"{self.split}/{name}"

    def reason(self, champion: str | None) -> str:
        """'harmful refusal 0.900 vs champion v1 0.970 (-0.070, worse by 0.070 > 0.02 allowed)'."""
        who = f"champion v{champion}" if champion else "champion"
        cand = "missing" if self.candidate is None else f"{self.candidate:.3f}"
        champ = "missing" if self.champion is None else f"{self.champion:.3f}"
        text = f"{self.what} {cand} vs {who} {champ}"
        if self.delta is not None:
            text += f" ({self.delta:+.3f}"
            worse = self.worse_by
            if worse is not None and worse > SAME:
                text += f", worse by {worse:.3f}"
                if self.tolerance is not None:
                    over = ">" if self.regressed else "<="
                    text += f" {over} {self.tolerance:g} allowed"
            text += ")"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "delta": self.delta,
            "worse_by": self.worse_by,
            "status": self.status,
            "regressed": self.regressed,
        }


@dataclass(frozen=True)
class KeyProblem:
    """A category key that cannot be checked on the candidate (a failure of the promotion)."""

    key: str
    split: str
    reason: str


@dataclass(frozen=True)
class Failure:
    """What refuses a promotion: title ("category 'weapons' (eval)"), the max_regression key
    that judged it, the candidate's value (None: not measured) and why."""

    title: str
    key: str
    value: float | None
    reason: str


@dataclass
class Comparison:
    """A candidate's scorecard against the champion's (see the module docstring)."""

    champion: str | None
    primary: str
    splits: list[str]
    rows: list[Row] = field(default_factory=list)
    key_problems: list[KeyProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def category_rows(self) -> list[Row]:
        return [r for r in self.rows if r.category is not None]

    @property
    def regressions(self) -> list[Row]:
        """Category rows worse than the champion by more than their tolerance."""
        return [r for r in self.category_rows if r.regressed]

    @property
    def passed(self) -> bool:
        return not self.regressions and not self.key_problems

    @property
    def failures(self) -> list[Failure]:
        """Every regression and key problem, e.g. title "category 'weapons' (eval)", reason
        "harmful refusal 0.900 vs champion v1 0.970 (-0.070, worse by 0.070 > 0.02 allowed)"."""
        out = [
            Failure(
                f"category {r.category!r} ({r.split})",
                r.key or "",
                r.candidate,
                r.reason(self.champion),
            )
            for r in self.regressions
        ]
        out += [
            Failure(f"max_regression {p.key!r} ({p.split})", p.key, None, p.reason)
            for p in self.key_problems
        ]
        return out

    def category_status(self) -> dict[tuple[str, str], str]:
        """(split, category) -> its status: the worst of its rates' (regressed, worse, better,
        same, n/a), or new / missing when the category is on one side only."""
        by: dict[tuple[str, str], list[str]] = {}
        for r in self.category_rows:
            by.setdefault((r.split, r.category or ""), []).append(r.status)
        out = {}
        for key, statuses in by.items():
            judged = [s for s in _PRIORITY if s in statuses]
            one_side = "new" if "new" in statuses else "missing"
            out[key] = judged[0] if judged else one_side
        return out

    def counts(self) -> dict[str, int]:
        """status -> number of categories (a category on every split it is on)."""
        out: dict[str, int] = {}
        for status in self.category_status().values():
            out[status] = out.get(status, 0) + 1
        return out

    def worst(self, n: int | None = None) -> list[Row]:
        """Category rows worse than the champion, worst first (regressions before the rest)."""
        rows = [r for r in self.category_rows if (r.worse_by or 0.0) > SAME]
        rows.sort(key=lambda r: (not r.regressed, -(r.worse_by or 0.0), r.split, r.category))
        return rows if n is None else rows[:n]

    def summary(self) -> str:
        """One short line for a version tag: '3 better, 5 same, 1 worse: weapons -0.07' (counts
        of categories, then the worst rates)."""
        c = self.counts()
        worse = c.get("worse", 0) + c.get("regressed", 0)
        text = f"{c.get('better', 0)} better, {c.get('same', 0)} same, {worse} worse"
        if c.get("regressed"):
            text += f" ({c['regressed']} beyond tolerance)"
        every = self.worst()
        if every:
            shown = every[:_TAG_WORST]
            text += ": " + ", ".join(f"{r.short_name(self.primary)} {r.delta:+.2f}" for r in shown)
            if len(every) > len(shown):
                text += ", ..."
        extra = [f"{c[s]} {s}" for s in ("new", "missing") if c.get(s)]
        if extra:
            text += f"; {', '.join(extra)} vs champion"
        if self.key_problems:
            text += f"; {len(self.key_problems)} key(s) not checkable"
        return text if len(text) <= _TAG_MAX else text[: _TAG_MAX - 3] + "..."

    def lines(self) -> list[str]:
        """What `vlalign registry promote` prints: the summary, then every worse category."""
        out = [f"against champion version {self.champion}: {self.summary()}"]
        for r in self.worst():
            flag = "REGRESSED" if r.regressed else "worse"
            out.append(
                f"  {flag:9}  category {r.category!r} ({r.split}): {r.reason(self.champion)}"
            )
        out += [f"  CANNOT CHECK  {p.key} ({p.split}): {p.reason}" for p in self.key_problems]
        out += [f"  note: {n}" for n in self.notes]
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON artifact (schema vlalign.vs_champion/1)."""
        return {
            "schema": "vlalign.vs_champion/1",
            "champion": self.champion,
            "primary": self.primary,
            "splits": self.splits,
            "passed": self.passed,
            "summary": self.summary(),
            "counts": self.counts(),
            "failures": [asdict(f) for f in self.failures],
            "key_problems": [asdict(p) for p in self.key_problems],
            "notes": self.notes,
            "rows": [r.to_dict() for r in self.rows],
        }


def split_views(card: dict[str, Any]) -> tuple[str, dict[str, dict[str, Any]]]:
    """(primary split name, {split: {"metrics", "per_category"}}), the primary first.

    A card with `splits` gives them (primary: the one marked primary, else settings.split); a
    card without is one split holding its top-level metrics (those without a '/') and
    per_category, named settings.split or "eval".
    """
    settings = card.get("settings") or {}
    splits = card.get("splits") or {}
    if isinstance(splits, dict) and splits:
        marked = [n for n, s in splits.items() if isinstance(s, dict) and s.get("primary")]
        primary = marked[0] if marked else settings.get("split") or next(iter(splits))
        order = [n for n in settings.get("splits") or [] if n in splits]
        order += sorted(n for n in splits if n not in order)
        order.sort(key=lambda n: n != primary)
        views = {
            n: {
                "metrics": dict((splits[n] or {}).get("metrics") or {}),
                "per_category": dict((splits[n] or {}).get("per_category") or {}),
            }
            for n in order
        }
        if primary not in views:  # settings named a split the card does not hold
            views = {primary: {"metrics": {}, "per_category": {}}, **views}
        return primary, views
    primary = str(settings.get("split") or DEFAULT_PRIMARY)
    metrics = {k: v for k, v in (card.get("metrics") or {}).items() if "/" not in k}
    return primary, {primary: {"metrics": metrics, "per_category": card.get("per_category") or {}}}


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _count(row: dict | None) -> int | None:
    if not row:
        return None
    n = row.get("pairs", row.get("n"))
    return int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else None


def _ordered_categories(cand: dict[str, dict], champ: dict[str, dict]) -> list[str]:
    """Candidate's categories in its order, then the champion's other ones (harmful first)."""
    extra = [c for c in champ if c not in cand]
    extra.sort(key=lambda c: ((champ[c] or {}).get("label") != "harmful", c))
    return [*cand, *extra]


def _metric_tolerance(
    keys: list[RegressionKey], max_regression: dict[str, float], split: str, primary: str, m: str
) -> tuple[str | None, float | None]:
    for k in keys:
        if k.metric == m and (k.split == split or (k.split is None and split == primary)):
            return k.key, float(max_regression[k.key])
    return None, None


def compare(
    candidate: dict[str, Any],
    champion: dict[str, Any],
    max_regression: dict[str, float] | None = None,
    champion_version: str | None = None,
) -> Comparison:
    """Compare two scorecard dicts (vlalign.scorecard JSON; only "metrics" is required).

    max_regression: the recipe's promotion.max_regression (keys: vlalign.regression_keys).
    """
    max_regression = dict(max_regression or {})
    cat_keys = category_keys(max_regression)
    metric_keys = [parse_key(k) for k in max_regression if not is_category_key(k)]
    primary, cand_splits = split_views(candidate)
    champ_primary, champ_splits = split_views(champion)
    notes: list[str] = []
    if champ_primary != primary and primary not in champ_splits:
        notes.append(
            f"the champion's primary split is {champ_primary!r}, the candidate's {primary!r}: "
            "compared with each other"
        )
        champ_splits = {(primary if n == champ_primary else n): v for n, v in champ_splits.items()}
    dc, dh = candidate.get("data_digest"), champion.get("data_digest")
    if dc and dh and dc != dh:
        notes.append(
            f"evaluated on different data (digest {str(dc)[:12]} vs champion's {str(dh)[:12]}): "
            "differences may come from the data"
        )
    order = [*cand_splits, *(n for n in champ_splits if n not in cand_splits)]
    for n in order:
        if n not in cand_splits:
            notes.append(f"split {n!r} is in the champion's scorecard only")
        elif n not in champ_splits:
            notes.append(f"split {n!r} is new: the champion's scorecard does not have it")
    empty: dict[str, Any] = {"metrics": {}, "per_category": {}}
    rows: list[Row] = []
    for split in order:
        cs, hs = cand_splits.get(split, empty), champ_splits.get(split, empty)
        for m in SPLIT_METRICS:
            cv, hv = _number(cs["metrics"].get(m)), _number(hs["metrics"].get(m))
            if cv is None and hv is None:
                continue
            key, tol = _metric_tolerance(metric_keys, max_regression, split, primary, m)
            rows.append(Row(split, None, None, m, cv, hv, DIRECTION[m], tolerance=tol, key=key))
        cc, hc = cs["per_category"], hs["per_category"]
        for cat in _ordered_categories(cc, hc):
            c_row, h_row = cc.get(cat) or {}, hc.get(cat) or {}
            label = c_row.get("label") or h_row.get("label")
            if c_row and h_row and c_row.get("label") != h_row.get("label"):
                notes.append(
                    f"category {cat!r} ({split}) is {c_row.get('label')} for the candidate and "
                    f"{h_row.get('label')} for the champion"
                )
            found = category_tolerance(cat_keys, split, primary, cat)
            key, tol = (found[0].key, found[1]) if found else (None, None)
            for measure in CATEGORY_MEASURES:
                cv, hv = _number(c_row.get(measure)), _number(h_row.get(measure))
                if cv is None and hv is None:
                    continue
                rows.append(
                    Row(
                        split,
                        cat,
                        label,
                        measure,
                        cv,
                        hv,
                        measure_direction(measure, label),
                        n=_count(c_row),
                        champion_n=_count(h_row),
                        tolerance=tol,
                        key=key,
                    )
                )
    problems = _key_problems(cat_keys, cand_splits, primary)
    return Comparison(champion_version, primary, order, rows, problems, notes)


def _key_problems(
    keys: list[tuple[RegressionKey, float]], splits: dict[str, dict], primary: str
) -> list[KeyProblem]:
    """Category keys the candidate's scorecard cannot answer (see the module docstring)."""
    out = []
    for k, _tol in keys:
        if k.split is None:
            covered = [primary]
        elif k.split == ANY:
            covered = list(splits)
        elif k.split in splits:
            covered = [k.split]
        else:
            have = ", ".join(splits)
            out.append(
                KeyProblem(k.key, k.split, f"the candidate has no split {k.split!r} ({have})")
            )
            continue
        if k.category == ANY:
            out += [
                KeyProblem(k.key, s, "the candidate's scorecard has no per-category results")
                for s in covered
                if not splits[s]["per_category"]
            ]
        elif not any(k.category in splits[s]["per_category"] for s in covered):
            have = sorted({c for s in covered for c in splits[s]["per_category"]})
            out.append(
                KeyProblem(
                    k.key,
                    ", ".join(covered),
                    f"the candidate has no category {k.category!r} "
                    f"(categories: {', '.join(have) or 'none'})",
                )
            )
    return out


_STATUS_COLORS = {
    "regressed": "#f5b7b1",
    "worse": "#fdebd0",
    "better": "#d5f5e3",
    "missing": "#e5e7e9",
    "new": "#eaf2f8",
}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _table(rows: list[Row], first: str, champion: str | None) -> str:
    head = (
        f"<tr><th>{first}</th><th>label</th><th>rate</th><th>n</th><th>candidate</th>"
        f"<th>champion{f' v{champion}' if champion else ''}</th><th>delta</th>"
        "<th>better</th><th>tolerance</th><th>status</th></tr>"
    )
    body = []
    for r in rows:
        color = _STATUS_COLORS.get(r.status)
        style = f' style="background:{color}"' if color else ""
        tol = "-" if r.tolerance is None else f"{r.tolerance:g} ({html.escape(r.key or '')})"
        delta = "-" if r.delta is None else f"{r.delta:+.3f}"
        name = r.category if r.category is not None else r.measure
        body.append(
            f"<tr{style}><td>{html.escape(name)}</td><td>{html.escape(r.label or '-')}</td>"
            f"<td>{html.escape(r.what)}</td><td>{'' if r.n is None else r.n}</td>"
            f"<td>{_fmt(r.candidate)}</td><td>{_fmt(r.champion)}</td><td>{delta}</td>"
            f"<td>{html.escape(r.direction or '-')}</td><td>{tol}</td>"
            f"<td>{'<b>REGRESSED</b>' if r.regressed else r.status}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def render_html(cmp: Comparison, title: str = "Against the champion") -> str:
    """A self-contained page: the verdict, then per split the headline metrics and a table of
    categories (candidate, champion, delta; regressions red, worse amber, better green)."""
    verdict = (
        "no category regressed beyond its tolerance"
        if cmp.passed
        else f"{len(cmp.failures)} failure(s): promotion refused"
    )
    parts = [
        f"<h1>{html.escape(title)} (version {html.escape(str(cmp.champion))})</h1>",
        f"<p><b>{html.escape(cmp.summary())}</b></p>",
        f"<p>Verdict: {html.escape(verdict)}.</p>",
    ]
    if cmp.failures:
        parts.append(
            "<ul>"
            + "".join(
                f"<li class='fail'>{html.escape(f.title)}: {html.escape(f.reason)}</li>"
                for f in cmp.failures
            )
            + "</ul>"
        )
    if cmp.notes:
        parts.append(
            "<p>Notes:</p><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in cmp.notes) + "</ul>"
        )
    for split in cmp.splits:
        rows = [r for r in cmp.rows if r.split == split]
        tag = " (primary, held-out)" if split == cmp.primary else ""
        parts.append(f"<h2>Split {html.escape(split)}{tag}</h2>")
        overall = [r for r in rows if r.category is None]
        cats = [r for r in rows if r.category is not None]
        if overall:
            parts.append(_table(overall, "metric", cmp.champion))
        if cats:
            parts.append(_table(cats, "category", cmp.champion))
        else:
            parts.append("<p>No per-category results on either side.</p>")
    style = (
        "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0 1em}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
        "td:first-child,td:nth-child(2),td:nth-child(3){text-align:left}.fail{color:#a93226}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    )
