"""Training methods, one module each with the same functions in the same order:
`setup(recipe, engine_model, pad_id) -> State`, `step(state, batch) -> StepOutput`, `metrics(sums, count)`.
"""

from vlalign.methods import dpo, reward, sft
from vlalign.methods.base import StepOutput

METHODS = {"sft": sft, "dpo": dpo, "reward": reward}

__all__ = ["METHODS", "StepOutput", "dpo", "reward", "sft"]
