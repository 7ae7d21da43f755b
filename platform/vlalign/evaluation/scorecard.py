"""The scorecard: JSON (what promotion gates read), a PNG chart, an HTML page, a terminal table.

JSON schema "vlalign.scorecard/1":
  {"schema", "name", "model", "data", "data_digest", "metrics": {name: float},
   "per_category": {category: {"label", "n", "refusal_rate", ...}}, "counts": {...},
   "samples": [{"prompt", "answer", "label", "category", "refused", "valid"}, ...],
   "settings": {decoding and detector settings}}
Nothing in it depends on the number of workers or the batch size.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlalign.errors import VlalignError

SCHEMA = "vlalign.scorecard/1"
JSON_NAME = "scorecard.json"
PNG_NAME = "refusal_by_category.png"
HTML_NAME = "scorecard.html"
REQUIRED = ("schema", "name", "model", "data", "metrics", "per_category", "counts")
HEADLINE = (
    "harmful_refusal_rate",
    "attack_success_rate",
    "benign_refusal_rate",
    "text_validity_rate",
    "implicit_reward_accuracy",
    "reward_accuracy",
    "mean_response_tokens",
    "n_harmful",
    "n_benign",
)
COLORS = {"harmful": "#c0392b", "benign": "#2e86c1"}


@dataclass
class Scorecard:
    """A safety scorecard (see the module docstring for the JSON form)."""

    name: str
    model: str
    data: str
    metrics: dict[str, float]
    per_category: dict[str, dict]
    counts: dict
    data_digest: str | None = None
    samples: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    schema: str = SCHEMA

    def to_dict(self) -> dict:
        d = asdict(self)
        return {"schema": d.pop("schema"), **d}

    @classmethod
    def from_dict(cls, d: dict, source: str = "scorecard") -> Scorecard:
        if not isinstance(d, dict):
            raise VlalignError(f"{source}: not a JSON object")
        if d.get("schema") != SCHEMA:
            raise VlalignError(f"{source}: schema is {d.get('schema')!r}, expected {SCHEMA!r}")
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise VlalignError(f"{source}: missing keys {missing}")
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def write_json(card: Scorecard, path: str | Path) -> Path:
    """Write the scorecard JSON (sorted keys, 2-space indent)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def read_scorecard(path: str | Path) -> Scorecard:
    """Read and check a scorecard JSON file (a directory means its scorecard.json)."""
    p = Path(path)
    if p.is_dir():
        p = p / JSON_NAME
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise VlalignError(f"{p}: no such scorecard") from None
    except json.JSONDecodeError as e:
        raise VlalignError(f"{p}: not valid JSON: {e}") from None
    return Scorecard.from_dict(data, str(p))


def write_chart(card: Scorecard, path: str | Path) -> Path:
    """Per-category refusal-rate bars, harmful (red) and benign (blue), plus the two overall rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names, rates, colors, ns = [], [], [], []
    for label in ("harmful", "benign"):
        key = f"{label}_refusal_rate"
        if key in card.metrics:
            names.append(f"ALL {label}")
            rates.append(card.metrics[key])
            colors.append(COLORS[label])
            ns.append(int(card.metrics.get(f"n_{label}", 0)))
    for cat, row in card.per_category.items():
        names.append(cat)
        rates.append(row["refusal_rate"])
        colors.append(COLORS.get(row["label"], "#7f8c8d"))
        ns.append(row["n"])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(names) + 2), 4.0), dpi=100)
    xs = range(len(names))
    bars = ax.bar(xs, rates, color=colors)
    for b, n in zip(bars, ns, strict=True):
        ax.annotate(
            f"n={n}",
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_xticks(list(xs), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("refusal rate")
    ax.set_title(f"{card.name}: refusal by category ({Path(card.model).name or card.model})")
    ax.legend(
        handles=[Patch(color=COLORS["harmful"]), Patch(color=COLORS["benign"])],
        labels=["harmful (higher is safer)", "benign (lower is better)"],
        fontsize=7,
        loc="upper right",
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isclose(v, round(v)) and abs(v) >= 1:
            return str(round(v))
        return f"{v:.4f}"
    return str(v)


def write_html(card: Scorecard, png: str | Path, path: str | Path) -> Path:
    """A short self-contained page: headline metrics, per-category table, the chart, samples."""
    e = html.escape
    img = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    metric_rows = "".join(
        f"<tr><td>{e(k)}</td><td>{e(_fmt(v))}</td></tr>" for k, v in sorted(card.metrics.items())
    )
    cat_rows = "".join(
        f"<tr><td>{e(c)}</td><td>{e(r['label'])}</td><td>{r['n']}</td>"
        f"<td>{r['refusal_rate']:.4f}</td><td>{e(_fmt(r.get('validity_rate', '')))}</td></tr>"
        for c, r in card.per_category.items()
    )
    sample_rows = "".join(
        f"<tr><td>{e(s.get('label', ''))}</td><td>{e(s.get('category', ''))}</td>"
        f"<td>{e(s.get('prompt', ''))}</td><td>{e(s.get('answer', ''))}</td>"
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
<table><tr><th>category</th><th>label</th><th>n</th><th>refusal rate</th><th>validity</th></tr>{cat_rows}</table>
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
            head.add_row(k, _fmt(card.metrics[k]))
    cats = Table(title="refusal by category", show_header=True)
    for col, just in (
        ("category", "left"),
        ("label", "left"),
        ("n", "right"),
        ("refusal", "right"),
    ):
        cats.add_column(col, justify=just)
    for c, r in card.per_category.items():
        style = "red" if r["label"] == "harmful" else "blue"
        cats.add_row(c, r["label"], str(r["n"]), f"{r['refusal_rate']:.3f}", style=style)
    return Group(head, cats)


def print_table(card: Scorecard, console=None) -> None:
    """Print `render_table` to the terminal (or the given rich console)."""
    from rich.console import Console

    (console or Console()).print(render_table(card))
