"""VLM + processor builders (HF Auto classes and built-in tiny models), LoRA policy, chat inputs."""

from vlalign.models.builder import BuiltModel, build, detect_family
from vlalign.models.lora import apply_peft, lm_prefix

__all__ = ["BuiltModel", "apply_peft", "build", "detect_family", "lm_prefix"]
