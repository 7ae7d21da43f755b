"""After training (driver side): evaluate the export, then log, register and maybe promote it.

`finish_run(recipe, result)` is what `vlalign run` does once the loop (local or on Ray) returns:
the safety evaluation of the exported policy on the recipe's eval shards (or the synthesized
eval split) writes a scorecard under `<output_dir>/eval/final/`; the same MLflow run is resumed
to log the scorecard and the model, register a version (alias `candidate`) when the recipe names
a registered model, and try promotion when `promotion.auto` is set. `vlalign run` then writes
the run's publish marker (`vlalign.training.resume.mark_published`); a run whose finish step
crashed has none, and the next `vlalign run` does this step again without training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlalign.config.schema import Recipe
from vlalign.training.context import TrainResult


@dataclass
class FinishResult:
    scorecard: dict | None
    scorecard_path: Path | None
    model_uri: str | None = None
    version: str | None = None
    promoted: bool = False
    refusal: str | None = None
    already_registered: bool = False  # this MLflow run had a version already: none was added


def eval_location(recipe: Recipe) -> str | None:
    """The eval shards of a run: eval.data, data.eval, or the synthesized set's eval split."""
    from vlalign.training.data import synth_location

    if recipe.eval.data or recipe.data.eval:
        return recipe.eval.data or recipe.data.eval
    if recipe.data.train is None:
        return str(synth_location(recipe))
    return None


def finish_run(recipe: Recipe, result: TrainResult, evaluate_export: bool = True) -> FinishResult:
    """Evaluate the export (when eval data exists) and publish it to MLflow."""
    card, card_path = None, None
    data = eval_location(recipe)
    if evaluate_export and result.export_dir is not None and data is not None:
        from vlalign.evaluation.runner import evaluate

        out = Path(recipe.output_dir) / "eval" / "final"
        sc = evaluate(
            str(result.export_dir), data, recipe, out_dir=out, num_workers=1, name="final"
        )
        card = sc.to_dict() if hasattr(sc, "to_dict") else sc
        card_path = out / "scorecard.json"
    fin = FinishResult(scorecard=card, scorecard_path=card_path)
    if not (recipe.tracking.enabled and result.run_id):
        return fin
    pub = publish_export(
        recipe,
        result.run_id,
        result.export_dir,
        card_path if card_path and card_path.is_file() else card,
    )
    fin.model_uri, fin.version = pub.model_uri, pub.version
    fin.already_registered = pub.already_registered
    fin.promoted = pub.promoted is not None
    fin.refusal = str(pub.refused) if pub.refused is not None else None
    return fin


def publish_export(recipe: Recipe, run_id: str, export_dir: Path | None, scorecard):
    """Resume the run `run_id`, log the scorecard and the model, register it (and auto-promote as
    the recipe asks); the run ends FAILED if this raises. Returns tracking's PublishResult."""
    from vlalign.tracking.publish import publish_run
    from vlalign.tracking.run_logger import RunLogger

    logger = RunLogger(recipe)
    logger.start(resume_run_id=run_id)
    try:
        pub = publish_run(logger, recipe, export_dir, scorecard)
    except BaseException as e:
        logger.fail(e)
        raise
    logger.finish()
    return pub
