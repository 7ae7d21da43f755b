"""Safety evaluation: generation, refusal detection, validity, metrics, scorecard, Ray split.

`evaluate(model_ref, data, recipe, out_dir, num_workers)` is the entry point. The scorecard's
schema is `vlalign.scorecard`; logging it to MLflow is `vlalign.tracking.scorecard_log`.

Names are imported lazily so that `vlalign --help` does not pay for torch/transformers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "JudgeRefusalDetector": "vlalign.safety.refusal",
    "PhraseRefusalDetector": "vlalign.safety.refusal",
    "RefusalDetector": "vlalign.safety.refusal",
    "Scorecard": "vlalign.scorecard",
    "evaluate": "vlalign.evaluation.runner",
    "read_scorecard": "vlalign.scorecard",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vlalign.evaluation' has no attribute {name!r}")
