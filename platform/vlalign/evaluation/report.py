"""How a scorecard is shown: a PNG chart, an HTML page, a terminal table (and the JSON beside them).

The scorecard itself (metrics, directions, JSON form) is `vlalign.scorecard`.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from vlalign.scorecard import HEADLINE, JSON_NAME, Scorecard, write_json

PNG_NAME = "refusal_by_category.png"
HTML_NAME = "scorecard.html"
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


def _fmt(v, key: str = "") -> str:
    """Counts (n_*, max_*) as integers, other floats with 4 decimals."""
    if isinstance(v, float):
        if key.startswith(("n_", "max_")) and v.is_integer():
            return str(int(v))
        return f"{v:.4f}"
    return str(v)


def write_html(card: Scorecard, png: str | Path, path: str | Path) -> Path:
    """A short self-contained page: headline metrics, per-category table, the chart, samples."""
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
    """scorecard.json, refusal_by_category.png and scorecard.html in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = write_json(card, out / JSON_NAME)
    png = write_chart(card, out / PNG_NAME)
    page = write_html(card, png, out / HTML_NAME)
    return {"json": js, "png": png, "html": page}


def render_table(card: Scorecard):
    """A rich renderable: headline metrics, then per-category refusal rates."""
    from rich.console import Group
    from rich.table import Table

    head = Table(title=f"scorecard {card.name}: {card.model}", show_header=True)
    head.add_column("metric")
    head.add_column("value", justify="right")
    for k in HEADLINE:
        if k in card.metrics:
            head.add_row(k, _fmt(card.metrics[k], k))
    cols = [k for k in CATEGORY_COLUMNS if any(k in r for r in card.per_category.values())]
    cats = Table(title="by category", show_header=True)
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
