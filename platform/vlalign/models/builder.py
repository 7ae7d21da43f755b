"""`build(model_cfg)`: the model and its processor from a built-in name, local path or hub id.

Weights load through safetensors only; remote code runs only when the recipe says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, PreTrainedModel

from vlalign import catalog
from vlalign.config.schema import BUILTIN_FAMILY, BUILTIN_MODELS, ModelConfig
from vlalign.errors import VlalignError
from vlalign.models.families import family as family_named
from vlalign.models.tiny import TinySpec, materialize

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BuiltModel:
    """A loaded VLM: model, processor, family and the directory its weights came from."""

    model: PreTrainedModel
    processor: object
    family: str
    source: str  # the local directory or hub id that was loaded


def tiny_spec(cfg: ModelConfig) -> TinySpec:
    """The built-in spec a model config names (the image size defaults per family)."""
    fam = family_named(BUILTIN_FAMILY[cfg.name])
    px = cfg.image_size or fam.tiny_image_size
    return TinySpec(name=cfg.name, seed=cfg.seed, size=cfg.size, image_size=px)


def resolve_source(cfg: ModelConfig) -> str:
    """Materialize a built-in (once) and return the directory or hub id to load from."""
    if cfg.name in BUILTIN_MODELS:
        fam = family_named(BUILTIN_FAMILY[cfg.name])
        return str(materialize(tiny_spec(cfg), fam.tiny, cfg.cache_dir))
    return cfg.name


def detect_family(cfg: ModelConfig, source: str | None = None) -> str:
    """The recipe's family, or the one implied by the built-in name / the checkpoint's config."""
    if cfg.family != "auto":
        return cfg.family
    if cfg.name in BUILTIN_FAMILY:
        return BUILTIN_FAMILY[cfg.name]
    src = source or cfg.name
    cfg_file = Path(src) / "config.json"
    if cfg_file.is_file():
        model_type = json.loads(cfg_file.read_text()).get("model_type", "")
    else:
        model_type = AutoConfig.from_pretrained(
            src, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision
        ).model_type
    found = catalog.family_of_model_type(model_type)
    if found is None:
        raise VlalignError(
            f"model.name: {cfg.name!r} has model_type {model_type!r}, not a supported family "
            f"({', '.join(catalog.FAMILIES)}); set model.family explicitly"
        )
    return found


def build(cfg: ModelConfig, device: str | torch.device | None = None) -> BuiltModel:
    """Load model + processor. Shapes: the model maps input_ids [B, T] + images to logits [B, T, V]."""
    source = resolve_source(cfg)
    family = detect_family(cfg, source)
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            source,
            dtype=DTYPES[cfg.dtype],
            trust_remote_code=cfg.trust_remote_code,
            revision=cfg.revision,
            use_safetensors=True,
        )
    except OSError as e:
        raise VlalignError(f"model.name: cannot load {cfg.name!r}: {e}") from None
    processor = family_named(family).load_processor(source, cfg.trust_remote_code, cfg.revision)
    if device is not None:
        model.to(device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return BuiltModel(model=model, processor=processor, family=family, source=source)
