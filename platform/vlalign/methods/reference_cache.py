"""Precomputed DPO reference log-probs: one pass over the data set, cached on disk.

With `method.reference: precomputed`, the reference (the base model = policy with the adapter
disabled, which at initialization is exactly the policy) scores every training pair once. The
cache is keyed by the model digest, the data manifest digest, the split and the chat template
(+ max length), so training runs no reference forward at all and a second run with the same
model and data reuses the file. Each rank scores its own slice; rank 0 writes the merged table
atomically; every rank then loads it.

File: `<cache_dir>/<key>.json` = {"key": ..., "inputs": {...}, "logps": {sample_key: [chosen, rejected]}}.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from vlalign.cache import cache_dir
from vlalign.config.schema import BUILTIN_MODELS, Recipe
from vlalign.errors import VlalignError
from vlalign.methods.base import Run
from vlalign.methods.forward import pair_forward
from vlalign.models.builder import BuiltModel, tiny_spec
from vlalign.models.inputs import ChatEncoder
from vlalign.models.pair_inputs import PairOptions


def default_cache_dir() -> Path:
    return cache_dir("reference-logps")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_digest(recipe: Recipe, built: BuiltModel) -> str:
    """Identity of the reference weights: the built-in spec, or sha256 of the safetensors files."""
    if recipe.model.name in BUILTIN_MODELS:
        return "builtin:" + tiny_spec(recipe.model).key
    src = Path(built.source)
    files = sorted(src.glob("*.safetensors")) if src.is_dir() else []
    if not files:  # a hub id: the resolved commit identifies the weights
        commit = (
            getattr(built.model.config, "_commit_hash", None) or recipe.model.revision or "unknown"
        )
        return f"hub:{recipe.model.name}@{commit}"
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(_file_sha256(f).encode())
    return "sha256:" + h.hexdigest()


def cache_inputs(recipe: Recipe, built: BuiltModel, encoder: ChatEncoder, data_digest: str) -> dict:
    """Everything the cached numbers depend on."""
    template = built.processor.chat_template or ""
    return {
        "model": model_digest(recipe, built),
        "dtype": recipe.model.dtype,
        "data": data_digest,
        "split": recipe.data.train_split,
        "template": hashlib.sha256(
            f"{template}|{encoder.response_prefix}|{encoder.end_of_turn}|{encoder.max_length}".encode()
        ).hexdigest(),
    }


def cache_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


@torch.no_grad()
def compute_slice(model, batches, pad_id: int, opts: PairOptions, device) -> dict[str, list[float]]:
    """Reference log-probs of this rank's pairs: {sample_key: [chosen_sum, rejected_sum]}."""
    out: dict[str, list[float]] = {}
    was_training = model.training
    model.eval()
    ctx = model.disable_adapter() if hasattr(model, "disable_adapter") else torch.no_grad()
    with ctx:
        for batch in batches:
            b = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            c, r = pair_forward(model, b, pad_id, opts)
            for key, lc, lr in zip(batch["keys"], c.sum.tolist(), r.sum.tolist(), strict=True):
                out[key] = [lc, lr]
    model.train(was_training)
    return out


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def load_or_compute(run: Run, cache_root: str | None, opts: PairOptions) -> dict:
    """The cached table for this (model, data, template), computing it once if missing.

    Returns {sample_key: (chosen_logps_sum, rejected_logps_sum)} for the whole training split."""
    if run.digest is None:
        raise VlalignError("method.reference: precomputed needs shards with a manifest digest")
    inputs = cache_inputs(run.recipe, run.built, run.encoder, run.digest)
    root = Path(cache_root) if cache_root else default_cache_dir()
    path = root / f"{cache_key(inputs)}.json"
    if not path.is_file():
        table = compute_slice(run.model, run.one_epoch("pairs"), run.pad_id, opts, run.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            parts: list = [None] * dist.get_world_size()
            dist.all_gather_object(parts, table)
            table = {k: v for part in parts for k, v in part.items()}
        if run.rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"key": path.stem, "inputs": inputs, "logps": table}))
            os.replace(tmp, path)
        _barrier()
    data_ = json.loads(path.read_text())
    if data_.get("inputs") != inputs:
        raise VlalignError(f"reference cache {path} was computed for other inputs; delete it")
    return {k: tuple(v) for k, v in data_["logps"].items()}
