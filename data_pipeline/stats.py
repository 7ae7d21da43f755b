"""`vlalign data stats DIR [--recipe R]`: what a shard set holds.

Per split: samples, counts per category and label (harmful / benign / unknown), images per
sample and image sizes (read from the headers), text lengths in characters, and with a recipe
the token-length distribution with the recipe's processor (prompt with its image tokens, and
prompt + each response), plus how many sequences exceed `data.max_length` (their response tail
would be cut).
"""

from __future__ import annotations

import io
import math
from collections import Counter, defaultdict
from typing import Any

from PIL import Image
from tqdm import tqdm

from data_pipeline.decode import decode_image
from data_pipeline.manifest import load_manifest
from data_pipeline.reader import iter_samples
from vlalign.config.schema import Recipe
from vlalign.models.inputs import ChatEncoder

RESPONSE_FIELDS = ("response", "chosen", "rejected", "reference")


def distribution(values: list[int]) -> dict[str, float]:
    """min, p50, p90, p99, max, mean of a list (empty: n = 0 only)."""
    if not values:
        return {"n": 0}
    v = sorted(values)

    def pct(p: float) -> float:
        return float(v[min(len(v) - 1, max(0, math.ceil(p / 100 * len(v)) - 1))])

    return {
        "n": len(v),
        "min": float(v[0]),
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "max": float(v[-1]),
        "mean": round(sum(v) / len(v), 2),
    }


def _label(sample: dict) -> str:
    if sample.get("label"):
        return sample["label"]
    harmful = sample["meta"].get("harmful")
    return "unknown" if harmful is None else ("harmful" if harmful else "benign")


def compute_stats(
    location: str,
    recipe: Recipe | None = None,
    splits: list[str] | None = None,
    *,
    encoder: ChatEncoder | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Statistics of a shard set (see the module docstring).

    With a loaded `recipe`, token lengths too: `encoder` is then the recipe's chat encoder (its
    processor and family; `vlalign data stats --recipe` builds it from the recipe).
    """
    if (recipe is None) != (encoder is None):
        raise ValueError("compute_stats: token lengths need both the recipe and its encoder")
    manifest = load_manifest(location)
    out: dict[str, Any] = {
        "location": str(location),
        "dataset_digest": manifest.dataset_digest,
        "splits": {},
    }
    names = splits or sorted(manifest.splits)
    for name in names:
        _, sp = manifest.split(name, f"{location}/manifest.json")
        cats: dict[str, Counter] = defaultdict(Counter)
        labels: Counter = Counter()
        n_images: Counter = Counter()
        sizes: Counter = Counter()
        chars: dict[str, list[int]] = defaultdict(list)
        tokens: dict[str, list[int]] = defaultdict(list)
        bar = tqdm(total=sp.samples, desc=f"stats {name}", unit="sample", disable=not progress)
        for s in iter_samples(location, name, images=False):
            bar.update(1)
            label = _label(s)
            cat = s.get("category") or s["meta"].get("category", "unknown")
            cats[cat][label] += 1
            labels[label] += 1
            n_images[len(s["images"])] += 1
            for data in s["images"]:
                with Image.open(io.BytesIO(data)) as im:
                    sizes[f"{im.width}x{im.height}"] += 1
            chars["prompt"].append(len(s["prompt"]))
            for f in RESPONSE_FIELDS:
                if s.get(f) is not None:
                    chars[f].append(len(s[f]))
            if encoder is not None:
                images = [
                    decode_image(d, f"img{i}", {"__key__": s["key"], "__shard__": s["shard"]})
                    for i, d in enumerate(s["images"])
                ]
                p = len(encoder.encode_prompt(images, s["prompt"]).input_ids)
                tokens["prompt"].append(p)
                for f in RESPONSE_FIELDS:
                    if s.get(f) is not None:
                        tokens[f"prompt+{f}"].append(p + len(encoder.encode_response(s[f])))
        bar.close()
        entry: dict[str, Any] = {
            "kind": sp.kind,
            "samples": sp.samples,
            "shards": len(sp.shards),
            "bytes": sp.bytes,
            "labels": dict(sorted(labels.items())),
            "categories": {c: dict(sorted(v.items())) for c, v in sorted(cats.items())},
            "images_per_sample": {str(k): v for k, v in sorted(n_images.items())},
            "image_sizes": dict(sizes.most_common()),
            "chars": {k: distribution(v) for k, v in chars.items()},
        }
        if encoder is not None:
            max_len = recipe.data.max_length
            entry["tokens"] = {k: distribution(v) for k, v in tokens.items()}
            entry["tokenizer"] = recipe.model.name
            entry["max_length"] = max_len
            entry["over_max_length"] = {
                k: sum(1 for x in v if x > max_len) for k, v in tokens.items() if k != "prompt"
            }
        out["splits"][name] = entry
    return out


def format_stats(stats: dict[str, Any]) -> str:
    """A plain-text report of `compute_stats` output."""
    lines = [f"{stats['location']}  digest {stats['dataset_digest']}"]
    for name, e in stats["splits"].items():
        lines.append("")
        lines.append(
            f"split {name}: {e['samples']} {e['kind']} samples in {e['shards']} shards "
            f"({e['bytes'] / 1e6:.1f} MB)"
        )
        lines.append("  labels     " + ", ".join(f"{k} {v}" for k, v in e["labels"].items()))
        lines.append(
            f"  {'category':<24} " + " ".join(f"{k:>8}" for k in ("harmful", "benign", "unknown"))
        )
        for cat, c in e["categories"].items():
            lines.append(
                f"  {cat:<24} "
                + " ".join(f"{c.get(k, 0):>8}" for k in ("harmful", "benign", "unknown"))
            )
        lines.append(
            "  images/sample  " + ", ".join(f"{k}: {v}" for k, v in e["images_per_sample"].items())
        )
        sizes = list(e["image_sizes"].items())
        more = f" (+{len(sizes) - 5} more sizes)" if len(sizes) > 5 else ""
        lines.append("  image sizes    " + ", ".join(f"{k}: {v}" for k, v in sizes[:5]) + more)
        for title, key in (("chars", "chars"), ("tokens", "tokens")):
            if key not in e:
                continue
            head = f"  {title:<16}" + "".join(
                f"{c:>8}" for c in ("min", "p50", "p90", "p99", "max", "mean")
            )
            if key == "tokens":
                head += f"   > max_length {e['max_length']} ({e['tokenizer']})"
            lines.append(head)
            for field, d in e[key].items():
                if not d.get("n"):
                    continue
                row = f"    {field:<14}" + "".join(
                    f"{d[c]:>8g}" for c in ("min", "p50", "p90", "p99", "max", "mean")
                )
                if key == "tokens" and field in e["over_max_length"]:
                    row += f"   {e['over_max_length'][field]}"
                lines.append(row)
    return "\n".join(lines)
