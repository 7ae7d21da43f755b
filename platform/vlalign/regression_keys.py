"""Keys of `promotion.max_regression`: which scorecard quantity a tolerance applies to.

A key is one of (a tolerance is how much worse than the current champion a version may be):

    <metric>                  a headline metric of the primary split: harmful_refusal_rate
    <split>/<metric>          that metric on one split: shift-visual/benign_refusal_rate
    category/<name>           category <name> on the primary split: category/weapons
    category/*                every category on the primary split
    <split>/category/<name>   category <name> on one split: shift-visual/category/weapons
    */category/<name>         category <name> on every split (`*/category/*`: every category)

<metric> is a scorecard metric with a direction (`vlalign.scorecard.DIRECTION`). A category key
covers every rate the scorecard holds for that category (`CATEGORY_MEASURES`): its refusal rate
(harmful categories: higher is better; benign categories: lower is better, over-refusal), its
text validity rate and its pair accuracy (higher is better). When several category keys match
one category of one split, the most specific wins: a named category beats `*`, then a named
split beats `*`. The primary split is the held-out one the gates read (`data.eval_split`); a
key may also name it (`eval/category/*`).

Torch-free and dependency-free: the recipe schema validates keys with `parse_key`, promotion
reads them with `category_keys` / `category_tolerance`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from vlalign.scorecard import DIRECTION, HIGHER, LOWER

CATEGORY = "category"
ANY = "*"
# Per-category rates compared against the champion: name -> direction (None: from the label).
CATEGORY_MEASURES: dict[str, str | None] = {
    "refusal_rate": None,
    "validity_rate": HIGHER,
    "pair_accuracy": HIGHER,
}
LABEL_REFUSAL_DIRECTION = {"harmful": HIGHER, "benign": LOWER}
FORMS = (
    "<metric>, <split>/<metric>, category/<name>, <split>/category/<name> "
    "(<name> and <split> may be *)"
)


@dataclass(frozen=True)
class RegressionKey:
    """A parsed key. split: None for the primary split, `*` for every split (category keys).
    metric: the headline metric (metric keys); category: the category name or `*` (category keys)."""

    key: str
    split: str | None
    metric: str | None = None
    category: str | None = None

    @property
    def is_category(self) -> bool:
        return self.category is not None


def parse_key(key: str) -> RegressionKey:
    """Parse a max_regression key; ValueError saying what is wrong (the caller names the key)."""
    parts = key.split("/")
    if any(p.strip() != p or not p for p in parts):
        raise ValueError(f"empty or space-padded part in {key!r}; a key is one of {FORMS}")
    if CATEGORY in parts[:2] and len(parts) > parts.index(CATEGORY) + 1:
        at = parts.index(CATEGORY)
        split = parts[0] if at == 1 else None
        return RegressionKey(key, split, category="/".join(parts[at + 1 :]))
    if len(parts) > 2:
        raise ValueError(f"too many '/' in {key!r}; a key is one of {FORMS}")
    metric = parts[-1]
    split = parts[0] if len(parts) == 2 else None
    if split == ANY:
        raise ValueError(f"split '*' is for category keys only; a key is one of {FORMS}")
    if metric not in DIRECTION:
        raise ValueError(
            f"{metric!r} is not a metric with a direction ({', '.join(sorted(DIRECTION))}) "
            f"and the key is not a category key; a key is one of {FORMS}"
        )
    return RegressionKey(key, split, metric=metric)


def check_tolerances(max_regression: Mapping[str, float]) -> list[tuple[str, str]]:
    """(key, problem) for every bad key or tolerance (finite and >= 0) of a max_regression map."""
    problems = []
    for key, tol in max_regression.items():
        try:
            parse_key(key)
        except ValueError as e:
            problems.append((key, str(e)))
            continue
        if not math.isfinite(tol) or tol < 0:
            problems.append((key, f"tolerance {tol} must be a finite number >= 0"))
    return problems


def is_category_key(key: str) -> bool:
    """True for a category key (`category/...`, `<split>/category/...`); False for a metric key."""
    parts = key.split("/")
    return CATEGORY in parts[:2] and len(parts) > parts.index(CATEGORY) + 1


def category_keys(max_regression: Mapping[str, float]) -> list[tuple[RegressionKey, float]]:
    """The category keys of a max_regression map, parsed, with their tolerances."""
    return [(parse_key(k), float(t)) for k, t in max_regression.items() if is_category_key(k)]


def category_tolerance(
    keys: list[tuple[RegressionKey, float]], split: str, primary: str, category: str
) -> tuple[RegressionKey, float] | None:
    """The most specific key (and its tolerance) covering `category` on `split`, or None.

    primary: the name of the primary split (what a key without a split means).
    """
    best: tuple[tuple[int, int], RegressionKey, float] | None = None
    for k, tol in keys:
        if k.category == category:
            name_rank = 0
        elif k.category == ANY:
            name_rank = 1
        else:
            continue
        if k.split == split or (k.split is None and split == primary):
            split_rank = 0
        elif k.split == ANY:
            split_rank = 1
        else:
            continue
        rank = (name_rank, split_rank)
        if best is None or rank < best[0]:
            best = (rank, k, tol)
    return None if best is None else (best[1], best[2])


def measure_direction(measure: str, label: str | None) -> str | None:
    """Which way is better for a per-category rate (refusal rate: from the category's label)."""
    if measure not in CATEGORY_MEASURES:
        return None
    fixed = CATEGORY_MEASURES[measure]
    return fixed if fixed is not None else LABEL_REFUSAL_DIRECTION.get(label or "")
