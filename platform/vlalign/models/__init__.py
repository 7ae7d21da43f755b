"""VLM + processor builders (HF Auto classes and built-in tiny models), LoRA policy, chat inputs."""

import warnings

from vlalign.models.builder import BuiltModel, build, detect_family
from vlalign.models.lora import apply_peft, lm_prefix

# peft (0.21) reads transformers' deprecated `is_gradient_checkpointing` alias each time it wraps
# a model; the FutureWarning is addressed to peft, not to our users, so it is dropped.
warnings.filterwarnings(
    "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
)

__all__ = ["BuiltModel", "apply_peft", "build", "detect_family", "lm_prefix"]
