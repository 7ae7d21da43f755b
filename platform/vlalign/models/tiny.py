"""Built-in tiny VLMs: real transformers architectures built from configs with random weights.

Each is a genuine model of its family (same classes as the published checkpoints), small enough
to train on a laptop CPU, with a locally trained tokenizer and the matching processor. The
family module (`vlalign/models/families/<name>.py`) says how its twin is configured
(`Family.tiny`, passed in as `make`); this module holds what they share: the sizes, the Llama text config, building
with seeded random weights, and `materialize()`, which writes one to a cache directory once
(safetensors), so every process and Ray worker loads identical weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, LlamaConfig, PreTrainedModel

from vlalign.cache import cache_dir

FORMAT_VERSION = 1  # bump when a built-in's construction changes: invalidates caches

SIZES = {
    # LM hidden, LM layers, heads, kv heads, MLP; vision hidden, vision layers
    "nano": dict(hidden=64, layers=2, heads=4, kv=2, mlp=128, vhidden=32, vlayers=2),
    "small": dict(hidden=192, layers=4, heads=6, kv=2, mlp=512, vhidden=64, vlayers=2),
}


@dataclass(frozen=True)
class TinySpec:
    """What identifies a built-in tiny model's weights (image_size: the family's default unless
    the recipe sets model.image_size; `vlalign.models.builder.tiny_spec` resolves it)."""

    name: str
    seed: int = 0
    size: str = "nano"
    image_size: int = 32

    @property
    def resolved_image_size(self) -> int:
        return self.image_size

    @property
    def sizes(self) -> dict:
        """Layer widths and depths of this size (see SIZES)."""
        return SIZES[self.size]

    @property
    def key(self) -> str:
        return f"{self.name}-{self.size}-px{self.resolved_image_size}-seed{self.seed}-v{FORMAT_VERSION}"


def llama_text_config(vocab: int, s: dict, **extra) -> LlamaConfig:
    """The Llama LM of a tiny twin with sizes `s` (one of SIZES) and `vocab` tokens."""
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=s["hidden"],
        intermediate_size=s["mlp"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv"],
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        **extra,
    )


TwinMaker = Callable[[TinySpec], tuple[object, object]]
"""spec -> (transformers config, processor): a family's `Family.tiny`."""


def build_tiny(spec: TinySpec, make: TwinMaker) -> tuple[PreTrainedModel, object]:
    """Build a tiny model with random weights from `spec.seed`, and its processor (in memory).

    `make` gives its config and processor (the family's `Family.tiny`).
    """
    cfg, proc = make(spec)
    torch.manual_seed(spec.seed)
    model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.float32)
    model.generation_config.pad_token_id = proc.tokenizer.pad_token_id
    model.generation_config.eos_token_id = cfg.get_text_config().eos_token_id
    return model, proc


def default_cache_dir() -> Path:
    """~/.cache/vlalign/models (XDG_CACHE_HOME respected)."""
    return cache_dir("models")


def materialize(spec: TinySpec, make: TwinMaker, cache_dir: str | Path | None = None) -> Path:
    """Save a built-in model once to `cache_dir/spec.key` (atomically) and return its path.

    `make` is the family's `Family.tiny` (see `build_tiny`).
    """
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / spec.key
    if (target / "vlalign_builtin.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    model, proc = build_tiny(spec, make)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.key}.", dir=root))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        proc.save_pretrained(tmp)
        (tmp / "vlalign_builtin.json").write_text(
            json.dumps({"spec": spec.__dict__, "key": spec.key})
        )
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race: its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
