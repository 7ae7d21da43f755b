"""Safety evaluation: generation, refusal detection, validity, metrics, scorecard, Ray split.

`evaluate(model_ref, data, recipe, out_dir, num_workers, tracking)` is the entry point;
`log_scorecard(scorecard, run_id, name)` logs a scorecard to an MLflow run.

Names are imported lazily so that `vlalign --help` does not pay for torch/transformers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "JudgeRefusalDetector": "vlalign.safety.refusal",
    "PhraseRefusalDetector": "vlalign.safety.refusal",
    "RefusalDetector": "vlalign.safety.refusal",
    "Scorecard": "vlalign.evaluation.scorecard",
    "evaluate": "vlalign.evaluation.runner",
    "log_scorecard": "vlalign.evaluation.mlflow_log",
    "read_scorecard": "vlalign.evaluation.scorecard",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vlalign.evaluation' has no attribute {name!r}")
