"""Checks of a recipe against the world: files, shard manifests, model names and families.

Schema validation (types, ranges, unknown keys) happens when the recipe loads; these checks
run before anything starts (`vlalign validate`, `vlalign run`).
"""

from __future__ import annotations

from pathlib import Path

from vlalign.config.preflight import HUB_ID as _HUB_ID
from vlalign.config.preflight import batch_problems, model_source_problems
from vlalign.config.schema import BUILTIN_MODELS, Recipe

_REMOTE = ("http://", "https://", "s3://", "gs://", "pipe:")


def _check_shards(key: str, location: str | None, problems: list[str]) -> None:
    if location is None or location.startswith(_REMOTE):
        return
    p = Path(location)
    if not p.exists():
        problems.append(f"{key}: shard directory {location!r} does not exist")
    elif p.is_dir() and not (p / "manifest.json").is_file():
        problems.append(
            f"{key}: {location!r} has no manifest.json (write shards with `vlalign data`)"
        )


def check_recipe(recipe: Recipe) -> list[str]:
    """Problems that make the recipe unrunnable here, each naming its key path."""
    problems: list[str] = []
    m = recipe.model
    is_local = Path(m.name).expanduser().exists()
    if m.name not in BUILTIN_MODELS and not is_local and not _HUB_ID.match(m.name):
        problems.append(
            f"model.name: {m.name!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}), "
            "an existing local directory, nor a hub id (owner/name)"
        )
    if m.name not in BUILTIN_MODELS and m.family == "auto" and is_local:
        cfg = Path(m.name).expanduser() / "config.json"
        if not cfg.is_file():
            problems.append(f"model.name: {m.name!r} has no config.json to detect the family from")
    problems += model_source_problems(recipe)
    problems += batch_problems(recipe)
    if m.name in BUILTIN_MODELS and m.family not in ("auto", recipe.family):
        problems.append(f"model.family: {m.family!r} does not match built-in {m.name!r}")
    _check_shards("data.train", recipe.data.train, problems)
    _check_shards("data.eval", recipe.data.eval, problems)
    _check_shards("eval.data", recipe.eval.data, problems)
    if recipe.engine.template is not None and not Path(recipe.engine.template).is_file():
        problems.append(f"engine.template: {recipe.engine.template!r} does not exist")
    reference = getattr(recipe.method, "reference", None)
    if reference == "adapter_disabled" and recipe.peft.mode == "full":
        problems.append(
            "method.reference: adapter_disabled needs peft.mode lora (use frozen_copy"
            + (" or precomputed)" if recipe.method.name == "dpo" else ")")
        )
    if recipe.method.info.batch_kind == "unpaired" and recipe.train.micro_batch_size < 2:
        problems.append(
            f"train.micro_batch_size: {recipe.method.name} estimates its KL reference point "
            "from mismatched pairs in the micro-batch: use 2 or more"
        )
    if recipe.data.augment.enabled:  # augmented images change every epoch (data_pipeline.augment)
        if getattr(recipe.method, "reference", None) == "precomputed":
            problems.append(
                "data.augment: a precomputed reference is scored on unaugmented images; "
                "use method.reference adapter_disabled or frozen_copy"
            )
        if recipe.data.reader == "ray_data":
            problems.append("data.augment: supported on the webdataset reader only")
    if recipe.tracking.registered_model is None and recipe.promotion.auto:
        problems.append("promotion.auto: needs tracking.registered_model")
    if recipe.promotion.auto and not recipe.promotion.gates:
        problems.append("promotion.gates: automatic promotion needs at least one gate")
    problems += _in_loop_problems(recipe)
    return problems


def _in_loop_problems(recipe: Recipe) -> list[str]:
    """What makes the in-loop scorecard (train.eval_every, best, early_stop) unrunnable."""
    t = recipe.train
    if t.eval_every is None:
        return []
    problems = []
    if recipe.method.info.loss_kind in ("reward", "cost"):
        problems.append(
            f"train.eval_every: method {recipe.method.name} trains a scalar head, which answers "
            "no prompts: there is no in-loop scorecard for it"
        )
    if recipe.engine.zero_stage == 3:
        problems.append(
            "train.eval_every: the in-loop scorecard generates with each rank's in-memory "
            "policy, which needs engine.zero_stage 0, 1 or 2"
        )
    if recipe.data.train is not None and not (recipe.data.eval or recipe.eval.data):
        problems.append("train.eval_every: no eval data for the in-loop scorecard (set data.eval)")
    if t.early_stop is not None and not recipe.promotion.gates:
        problems.append(
            "train.early_stop: a run ends early only once promotion.gates pass; add gates"
        )
    if t.eval_splits:
        for g in recipe.promotion.gates:
            split = g.metric.rsplit("/", 1)[0] if "/" in g.metric else recipe.data.eval_split
            if split not in t.eval_splits:
                problems.append(
                    f"train.eval_splits: promotion gate {g.metric} reads split {split!r}, "
                    "which the in-loop scorecard does not score (it would never pass)"
                )
    return problems
