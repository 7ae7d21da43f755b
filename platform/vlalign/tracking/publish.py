"""End of a run (rank 0, after the final checkpoint): log the model, register it, maybe promote.

    logger = RunLogger(recipe); logger.start(resume_run_id=run_id)
    result = publish_run(logger, recipe, export_dir, scorecard="runs/x/eval/final/scorecard.json")

Logs the scorecard (eval/<name>/scorecard.json) and the exported policy as a pyfunc model,
registers it as a new version of recipe.tracking.registered_model (alias `candidate`) when the
recipe names one, and when recipe.promotion.auto is set tries promotion: a refusal is recorded
(version tags, result.refused) but does not fail the run.
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
    card = logger.log_scorecard(scorecard) if scorecard is not None else None
    if export_dir is None or not recipe.tracking.log_model:
        return result
    info = logger.log_model(export_dir, recipe)
    result.model_uri = info.model_uri
    name = recipe.tracking.registered_model
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
