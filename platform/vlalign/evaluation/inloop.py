"""The in-loop safety scorecard: a fixed subset of the eval split(s), answered by the policy
being trained (in memory, never reloaded), scored as `vlalign.evaluation.runner.evaluate` scores.

`InLoopScorer` is the scorer factory a launcher puts in `TrainContext.scorer` (the class itself:
picklable, Ray sends the context's pieces to its workers). Every rank builds one with
`InLoopScorer(recipe, location)` and calls it every `train.eval_every` steps:

    metrics = scorer(policy, encoder, rank, world)      # collective: every rank calls it

- The subset (chosen once, the same on every rank): per split, up to `train.eval_samples`
  prompts stratified by (label, category): the split's first `SCAN_FACTOR * eval_samples`
  records are grouped by (label, category) in reading order and taken round-robin across the
  groups, so a small subset still holds every category the split opens with.
- Rank r answers the prompts i with i % world == r (greedy decoding: an answer does not depend
  on its batch); the rows are gathered, rank 0 detects refusals, checks validity and computes
  the metrics (`vlalign.evaluation.metrics.compute_metrics`), and broadcasts them, so every
  rank returns the same dict and takes the same early-stop decision. The policy is the rank's
  in-memory module: with ZeRO 0-2 every rank holds all its weights (ZeRO-3 is refused by
  `vlalign.config.checks`).
- Splits (`inloop_splits`): `train.eval_splits`, else `data.eval_split` and the splits the
  promotion gates name (so the gates can be evaluated in the loop).

Returned metrics, keyed as a scorecard's (what promotion gates read): the primary split's
metrics (`harmful_refusal_rate`, `benign_refusal_rate`, `text_validity_rate`, ...), another
split's as `<split>/<metric>`, and per category `refusal_rate/<category>` (another split's:
`<split>/refusal_rate/<category>`). The loop logs them to MLflow under `inloop/`.
"""

from __future__ import annotations

from vlalign.config.schema import Recipe
from vlalign.errors import DataError
from vlalign.evaluation.metrics import compute_metrics
from vlalign.evaluation.runner import score_rows
from vlalign.evaluation.worker import eval_row, iter_eval_samples
from vlalign.models.generation import GenerationSettings, generate
from vlalign.safety.refusal import RefusalDetector, make_detector
from vlalign.training.distributed import broadcast_object, gather_objects

SCAN_FACTOR = 16  # records read per wanted prompt when choosing the stratified subset


def inloop_splits(recipe: Recipe) -> list[str]:
    """The splits the in-loop scorecard scores, the primary (`data.eval_split`) first."""
    primary = recipe.data.eval_split
    if recipe.train.eval_splits:
        names = list(dict.fromkeys(recipe.train.eval_splits))
    else:
        named = [g.metric.rsplit("/", 1)[0] for g in recipe.promotion.gates if "/" in g.metric]
        names = [primary, *dict.fromkeys(named)]
    if primary in names:
        names.remove(primary)
        names.insert(0, primary)
    return names


def stratified_indices(groups: list[tuple[str, str]], n: int) -> list[int]:
    """Indices of `n` records taken round-robin across their (label, category) groups, each
    group in reading order; returned in reading order. groups[i] is record i's group."""
    by_group: dict[tuple[str, str], list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    queues = list(by_group.values())
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(chosen) < n:
                chosen.append(q[depth])
        depth += 1
    return sorted(chosen)


def select_subset(location: str, split: str, n: int) -> list[dict]:
    """The split's stratified subset of `n` eval samples (images decoded), in reading order."""
    from data_pipeline.reader import iter_samples

    scan = n * SCAN_FACTOR
    groups = []
    for i, s in enumerate(iter_samples(location, split=split, kind="eval", images=False)):
        if i >= scan:
            break
        groups.append((str(s.get("label")), str(s.get("category") or "uncategorized")))
    if not groups:
        raise DataError(f"train.eval_every: the eval set {location} (split {split!r}) is empty")
    wanted = set(stratified_indices(groups, n))
    return [s for i, s in iter_eval_samples(location, split, scan) if i in wanted]


def _flat(metrics: dict[str, float], per_category: dict[str, dict], prefix: str) -> dict:
    out = {f"{prefix}{k}": float(v) for k, v in metrics.items()}
    out.update(
        {
            f"{prefix}refusal_rate/{cat}": float(row["refusal_rate"])
            for cat, row in per_category.items()
            if "refusal_rate" in row
        }
    )
    return out


class InLoopScorer:
    """Scores the policy on the fixed subset (see the module docstring). Built on every rank."""

    def __init__(self, recipe: Recipe, location: str) -> None:
        self.recipe = recipe
        self.location = location
        self.splits = inloop_splits(recipe)
        self.settings = GenerationSettings.from_eval_config(recipe.eval)
        self.subsets = {
            s: select_subset(location, s, recipe.train.eval_samples) for s in self.splits
        }
        self._detector: RefusalDetector | None = None

    def detector(self) -> RefusalDetector:
        """The recipe's refusal detector (rank 0; made at the first scorecard)."""
        if self._detector is None:
            ev = self.recipe.eval
            self._detector = make_detector(
                ev.refusal_detector, ev.judge_model, cache_dir=self.recipe.model.cache_dir
            )
        return self._detector

    def _answer(self, model, encoder, rank: int, world: int) -> list[dict]:
        """This rank's rows: the prompts i % world == rank of every split."""
        rows = []
        for split, samples in self.subsets.items():
            mine = [(i, s) for i, s in enumerate(samples) if i % world == rank]
            answers = generate(model, encoder, [s for _, s in mine], self.settings)
            for (i, s), g in zip(mine, answers, strict=True):
                rows.append(eval_row(split, i, s, g))
        return rows

    def __call__(
        self, model, encoder, rank: int = 0, world: int = 1, step: int = 0
    ) -> dict[str, float]:
        """The scorecard metrics of `model` (the in-memory policy at optimizer step `step`; see
        the module docstring). Collective over the `world` ranks; `model`'s train/eval mode is
        kept."""
        was_training = model.training
        try:
            rows = self._answer(model, encoder, rank, world)
        finally:
            model.train(was_training)
        parts = gather_objects(rows)
        metrics: dict[str, float] | None = None
        if rank == 0:
            merged = sorted((r for p in parts for r in p), key=lambda r: (r["split"], r["index"]))
            scored = score_rows(merged, self.detector())
            metrics = {}
            for split in self.splits:
                mine = [r for r, m in zip(scored, merged, strict=True) if m["split"] == split]
                res = compute_metrics(mine)
                prefix = "" if split == self.splits[0] else f"{split}/"
                metrics.update(_flat(res.metrics, res.per_category, prefix))
        return broadcast_object(metrics)
