"""Safety evaluation: generation, refusal detection, validity, metrics, scorecard, Ray split.

`evaluate(model_ref, data, recipe, out_dir, num_workers, tracking)` is the entry point;
`log_scorecard(scorecard, run_id, name)` logs a scorecard to an MLflow run.
"""

from vlalign.evaluation.mlflow_log import log_scorecard
from vlalign.evaluation.refusal import JudgeRefusalDetector, PhraseRefusalDetector, RefusalDetector
from vlalign.evaluation.runner import evaluate
from vlalign.evaluation.scorecard import Scorecard, read_scorecard

__all__ = [
    "JudgeRefusalDetector",
    "PhraseRefusalDetector",
    "RefusalDetector",
    "Scorecard",
    "evaluate",
    "log_scorecard",
    "read_scorecard",
]
