"""End of a run (rank 0, after the final checkpoint): log the model, register it, maybe promote.

    logger = RunLogger(recipe); logger.start(resume_run_id=run_id)
    result = publish_run(logger, recipe, export_dir, scorecard="runs/x/eval/final/scorecard.json")

Logs the scorecard (eval/<name>/scorecard.json) and the exported policy as a pyfunc model,
registers it as a new version of recipe.tracking.registered_model (alias `candidate`) when the
recipe names one, and when recipe.promotion.auto is set tries promotion: a refusal is recorded
(version tags, result.refused) but does not fail the run. A run is registered at most once: when
the registered model already has a version of this MLflow run, that version is returned and
nothing is logged or registered again (`result.already_registered`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlalign.config import Recipe
from vlalign.tracking.promotion import PromotionRefused, PromotionResult, promote
from vlalign.tracking.registry import register_version
from vlalign.tracking.run_logger import RunLogger


@dataclass
class PublishResult:
    """What was published: the logged model, its registered version, the promotion outcome."""

    model_uri: str | None = None
    version: str | None = None
    promoted: PromotionResult | None = None
    refused: PromotionRefused | None = None
    already_registered: bool = False


def version_of_run(store, name: str, run_id: str) -> str | None:
    """The version of registered model `name` made from MLflow run `run_id`, if any."""
    from vlalign.tracking.store import client_for

    found = client_for(store).search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return str(min(int(v.version) for v in found)) if found else None


def publish_run(
    logger: RunLogger,
    recipe: Recipe,
    export_dir: str | Path | None,
    scorecard: str | Path | dict[str, Any] | None = None,
) -> PublishResult:
    """Log scorecard + model, register, auto-promote as the recipe asks (no-op when disabled)."""
    result = PublishResult()
    if not logger.enabled or logger.run_id is None:
        return result
    name = recipe.tracking.registered_model
    if name and export_dir is not None and recipe.tracking.log_model:
        existing = version_of_run(logger.store, name, logger.run_id)
        if existing is not None:  # this run was published before: never a second version
            result.version, result.already_registered = existing, True
            return result
    card = logger.log_scorecard(scorecard) if scorecard is not None else None
    if export_dir is None or not recipe.tracking.log_model:
        return result
    info = logger.log_model(export_dir, recipe)
    result.model_uri = info.model_uri
    if not name:
        return result
    mv = register_version(
        logger.store, name, info.model_uri, recipe, run_id=logger.run_id, scorecard=card
    )
    result.version = str(mv.version)
    logger.set_tags(
        {"vlalign.registered_model": name, "vlalign.registered_version": result.version}
    )
    if recipe.promotion.auto:
        try:
            result.promoted = promote(logger.store, name, result.version, recipe.promotion)
            logger.set_tags({"vlalign.promotion": "passed"})
        except PromotionRefused as e:
            result.refused = e
            logger.set_tags({"vlalign.promotion": "refused"})
    return result
