"""How a scorecard is shown: a PNG chart, an HTML page, a terminal table (and the JSON beside them).

The scorecard itself (metrics, directions, JSON form) is `vlalign.scorecard`. With several eval
splits (held-out and shifted), each split's results are drawn side by side in splits.png and in
the HTML page's "held-out vs shifted" table.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from vlalign.scorecard import HEADLINE, JSON_NAME, Scorecard, write_json

PNG_NAME = "refusal_by_category.png"
HTML_NAME = "scorecard.html"
SPLITS_PNG_NAME = "splits.png"
SPLIT_COLUMNS = (
    "harmful_refusal_rate",
    "benign_refusal_rate",
    "text_validity_rate",
    "implicit_reward_accuracy",
)
COLORS = {"harmful": "#c0392b", "benign": "#2e86c1"}
CATEGORY_COLUMNS = ("refusal_rate", "validity_rate", "pairs", "pair_accuracy")


def _chart_series(card: Scorecard) -> tuple[str, str, list[tuple[str, float, str, int]]]:
    """(metric key, axis label, [(bar name, value, label, n)]): refusal rates, or pair accuracy
    for a reward model's scorecard (no answers, so no refusals)."""
    rows = card.per_category
    if any("refusal_rate" in r for r in rows.values()) or not rows:
        key, axis, overall = "refusal_rate", "refusal rate", "{label}_refusal_rate"
    else:
        key, axis, overall = "pair_accuracy", "pair accuracy", None
    bars = []
    if overall:
        for label in ("harmful", "benign"):
            if overall.format(label=label) in card.metrics:
                n = int(card.metrics.get(f"n_{label}", 0))
                bars.append((f"ALL {label}", card.metrics[overall.format(label=label)], label, n))
    for cat, r in rows.items():
        if key in r:
            bars.append((cat, float(r[key]), r["label"], int(r.get("pairs", r["n"]))))
    return key, axis, bars


def write_chart(card: Scorecard, path: str | Path) -> Path:
    """Per-category refusal-rate bars, harmful (red) and benign (blue), plus the two overall rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    key, axis, bars = _chart_series(card)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(bars) + 2), 4.0), dpi=100)
    xs = list(range(len(bars)))
    drawn = ax.bar(xs, [b[1] for b in bars], color=[COLORS.get(b[2], "#7f8c8d") for b in bars])
    for bar, (_, value, _, n) in zip(drawn, bars, strict=True):
        ax.annotate(
            f"{value:.2f}\nn={n}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_xticks(xs, [b[0] for b in bars], rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel(axis)
    what = "refusal" if key == "refusal_rate" else "pair accuracy"
    ax.set_title(f"{card.name}: {what} by category ({card.model})", fontsize=10)
    if key == "refusal_rate":
        ax.legend(
            handles=[Patch(color=COLORS["harmful"]), Patch(color=COLORS["benign"])],
            labels=["harmful prompts (higher is safer)", "benign prompts (lower is better)"],
            fontsize=7,
            loc="upper right",
        )
    if not bars:
        ax.text(0.5, 0.5, "no categories", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def split_table(card: Scorecard) -> list[tuple[str, str, dict[str, float]]]:
    """(split, shift, metrics) of every split, the primary first ([] for a one-split card)."""
    if len(card.splits) < 2:
        return []
    order = [n for n in card.settings.get("splits", []) if n in card.splits]  # JSON sorts keys
    order += sorted(set(card.splits) - set(order))
    order.sort(key=lambda n: not card.splits[n].get("primary"))
    return [
        (
            n,
            str(
                card.splits[n].get("shift")
                or ("held-out" if card.splits[n].get("primary") else "-")
            ),
            card.splits[n]["metrics"],
        )
        for n in order
    ]


def write_split_chart(card: Scorecard, path: str | Path) -> Path | None:
    """Grouped bars, one group per split: harmful refusal, benign refusal, text validity."""
    table = split_table(card)
    if not table:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = (
        ("harmful_refusal_rate", "harmful refusal (higher is safer)", COLORS["harmful"]),
        ("benign_refusal_rate", "benign refusal (lower is better)", COLORS["benign"]),
        ("text_validity_rate", "text validity", "#27ae60"),
    )
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(table) + 2), 4.0), dpi=100)
    width = 0.8 / len(series)
    for j, (key, label, colour) in enumerate(series):
        xs = [i + (j - 1) * width for i in range(len(table))]
        vals = [float(m.get(key, float("nan"))) for _, _, m in table]
        bars = ax.bar(xs, vals, width, color=colour, label=label)
        for bar, v in zip(bars, vals, strict=True):
            ax.annotate(
                f"{v:.2f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(range(len(table)), [f"{n}\n({shift})" for n, shift, _ in table], fontsize=8)
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("rate")
    ax.set_title(f"{card.name}: held-out vs shifted splits ({card.model})", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _fmt(v, key: str = "") -> str:
    """Counts (n_*, max_*) as integers, other floats with 4 decimals."""
    if isinstance(v, float):
        if key.startswith(("n_", "max_")) and v.is_integer():
            return str(int(v))
        return f"{v:.4f}"
    return str(v)


def _splits_html(card: Scorecard, splits_png: str | Path | None) -> str:
    table = split_table(card)
    if not table:
        return ""
    e = html.escape
    head = "".join(f"<th>{e(k.replace('_', ' '))}</th>" for k in SPLIT_COLUMNS)
    body = "".join(
        f"<tr><td>{e(n)}</td><td>{e(shift)}</td><td>{_fmt(m.get('n_total', ''), 'n_total')}</td>"
        + "".join(f"<td>{e(_fmt(m[k], k)) if k in m else '-'}</td>" for k in SPLIT_COLUMNS)
        + "</tr>"
        for n, shift, m in table
    )
    img = ""
    if splits_png is not None:
        data = base64.b64encode(Path(splits_png).read_bytes()).decode("ascii")
        img = f'<img alt="metrics by split" src="data:image/png;base64,{data}">'
    return (
        "<h2>Held-out vs shifted splits</h2>"
        f"<table><tr><th>split</th><th>shift</th><th>n</th>{head}</tr>{body}</table>{img}"
        "<p>Metrics, category table and samples below are the held-out split's; every split's "
        "metrics are also listed as <code>split/metric</code>.</p>"
    )


def write_html(
    card: Scorecard, png: str | Path, path: str | Path, splits_png: str | Path | None = None
) -> Path:
    """A short self-contained page: the splits side by side (when several), headline metrics,
    per-category table, the chart, samples."""
    e = html.escape
    img = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    metric_rows = "".join(
        f"<tr><td>{e(k)}</td><td>{e(_fmt(v, k))}</td></tr>" for k, v in sorted(card.metrics.items())
    )
    cat_rows = "".join(
        f"<tr><td>{e(c)}</td><td>{e(r['label'])}</td><td>{r['n']}</td>"
        + "".join(f"<td>{e(_fmt(r.get(k, '')))}</td>" for k in CATEGORY_COLUMNS)
        + "</tr>"
        for c, r in card.per_category.items()
    )
    cat_head = "".join(f"<th>{k.replace('_', ' ')}</th>" for k in CATEGORY_COLUMNS)
    sample_rows = "".join(
        f"<tr><td>{e(s.get('label', ''))}</td><td>{e(s.get('category', ''))}</td>"
        f"<td>{e(s.get('prompt') or '')}</td><td>{e(s.get('answer') or '')}</td>"
        f"<td>{'yes' if s.get('refused') else 'no'}</td><td>{'yes' if s.get('valid') else 'no'}</td></tr>"
        for s in card.samples
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(card.name)} scorecard</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}th{{background:#eee}}</style></head>
<body>
<h1>Safety scorecard: {e(card.name)}</h1>
<p>model <code>{e(card.model)}</code><br>data <code>{e(card.data)}</code>
(digest <code>{e(str(card.data_digest))}</code>)</p>
{_splits_html(card, splits_png)}
<h2>Metrics</h2>
<table><tr><th>metric</th><th>value</th></tr>{metric_rows}</table>
<h2>Refusal by category</h2>
<img alt="refusal rate by category" src="data:image/png;base64,{img}">
<table><tr><th>category</th><th>label</th><th>n</th>{cat_head}</tr>{cat_rows}</table>
<h2>Samples</h2>
<table><tr><th>label</th><th>category</th><th>prompt</th><th>answer</th><th>refused</th><th>valid</th></tr>{sample_rows}</table>
</body></html>
"""
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


def write_outputs(card: Scorecard, out_dir: str | Path) -> dict[str, Path]:
    """scorecard.json, refusal_by_category.png, scorecard.html (and splits.png when the card
    has several splits) in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = write_json(card, out / JSON_NAME)
    png = write_chart(card, out / PNG_NAME)
    splits_png = write_split_chart(card, out / SPLITS_PNG_NAME)
    page = write_html(card, png, out / HTML_NAME, splits_png)
    paths = {"json": js, "png": png, "html": page}
    if splits_png is not None:
        paths["splits_png"] = splits_png
    return paths


def render_table(card: Scorecard):
    """A rich renderable: headline metrics, then per-category refusal rates."""
    from rich.console import Group
    from rich.table import Table

    table = split_table(card)
    head = Table(title=f"scorecard {card.name}: {card.model}", show_header=True)
    head.add_column("metric")
    if table:  # one column per split, the held-out one first
        for n, shift, _ in table:
            head.add_column(f"{n}\n({shift})", justify="right")
        for k in HEADLINE:
            if any(k in m for _, _, m in table):
                head.add_row(k, *[_fmt(m[k], k) if k in m else "-" for _, _, m in table])
    else:
        head.add_column("value", justify="right")
        for k in HEADLINE:
            if k in card.metrics:
                head.add_row(k, _fmt(card.metrics[k], k))
    cols = [k for k in CATEGORY_COLUMNS if any(k in r for r in card.per_category.values())]
    cats = Table(title="by category" + (f" ({table[0][0]})" if table else ""), show_header=True)
    for col in ("category", "label", "n", *cols):
        just = "left" if col in ("category", "label") else "right"
        cats.add_column(col.replace("_", " "), justify=just)
    for c, r in card.per_category.items():
        style = "red" if r["label"] == "harmful" else "blue"
        cells = [_fmt(r[k]) if k in r else "-" for k in cols]
        cats.add_row(c, r["label"], str(r["n"]), *cells, style=style)
    return Group(head, cats)


def print_table(card: Scorecard, console=None) -> None:
    """Print `render_table` to the terminal (or the given rich console)."""
    from rich.console import Console

    (console or Console()).print(render_table(card))
