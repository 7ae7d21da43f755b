"""Checkpoints that hold everything a restart needs, written atomically.

Layout under `<output_dir>/checkpoints/`::

    step-000020/            one self-contained checkpoint (what Ray reports and restores)
      ds/ckpt/...           DeepSpeed engine state (model, optimizer, scheduler; per-rank files)
      trainer_state.json    step, data position per rank, MLflow run id, losses so far,
                            in-loop scorecards (`vlalign.training.selection`)
      rng-rank{R}.pt        python / numpy / torch RNG states of rank R (safe: tensors + lists)
    latest                  text file naming the newest COMPLETE checkpoint

Every rank calls `save` (DeepSpeed's save is collective). Files go to `.tmp-step-000020/`; after
a barrier rank 0 renames it and only then moves `latest`, so an interrupted save never becomes
the restart point. A save that fails for want of space (or any OS error; torch.save's own
errors for a failed or short write included) removes its temp folder and raises VlalignError
naming the path; the previous checkpoint and `latest` stay.
trainer_state.json also records the recipe digest and method (`vlalign.training.resume`).
Rotation keeps the `train.keep_checkpoints` newest and the one the run will export.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from vlalign.training.distributed import barrier

DS_TAG = "ckpt"


@dataclass
class TrainerState:
    """Loop state saved beside the engine state."""

    step: int
    data_positions: dict[str, int] = field(default_factory=dict)  # rank -> samples consumed
    run_id: str | None = None
    losses: list[float] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    method_state: dict = field(default_factory=dict)  # the method's own state (JSON)
    recipe_digest: str | None = None  # training-relevant recipe (vlalign.training.resume)
    method: str | None = None
    # In-loop scorecards (vlalign.training.selection): {"history": [evaluation records],
    # "stopped": why train.early_stop ended the run, or absent}
    inloop: dict = field(default_factory=dict)


def step_dirname(step: int) -> str:
    return f"step-{step:06d}"


def rng_state() -> dict:
    """RNG states as tensors/ints only, so they load with torch.load(weights_only=True)."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in mt.tolist()), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    engine,
    root: Path,
    state: TrainerState,
    rank: int,
    world_size: int,
    keep: int,
    protect: int | None = None,
) -> Path:
    """Collective save of engine + trainer state + RNG; returns the final checkpoint directory.

    Only the `keep` newest checkpoints stay, and the one of step `protect` (the checkpoint the
    run will export, `vlalign.training.selection.protected_step`)."""
    final = root / step_dirname(state.step)
    tmp = root / f".tmp-{step_dirname(state.step)}"
    try:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        engine.save_checkpoint(str(tmp / "ds"), tag=DS_TAG, save_latest=False)
        torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
        barrier()
        if rank == 0:
            (tmp / "trainer_state.json").write_text(json.dumps(asdict(state)))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _write_latest(root, final.name)
            _prune(root, keep, protect)
    except OSError as e:
        raise _save_failed(root, tmp, e) from None
    except RuntimeError as e:  # torch.save wraps the OS error, or checks what it wrote
        if not (_disk_full(root) or any(m in str(e).lower() for m in _TORCH_WRITE_ERRORS)):
            raise
        raise _save_failed(root, tmp, e) from None
    barrier()
    return final


# How torch.save reports a failed write: the OS error wrapped ("... file write failed"), or, on
# a short write (a full disk), its zip writer's position check ("unexpected pos N vs M").
_TORCH_WRITE_ERRORS = ("write", "unexpected pos")
_FULL_BELOW_BYTES = 1 << 20  # a filesystem with less free space than this counts as full


def _disk_full(path: Path) -> bool:
    """True when the filesystem holding `path` (or its nearest existing parent) is full."""
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free < _FULL_BELOW_BYTES
            except OSError:
                return False
    return False


def _save_failed(root: Path, tmp: Path, e: Exception):
    """The error of a checkpoint that could not be written; its temp folder is removed."""
    from vlalign.errors import VlalignError

    if isinstance(e, OSError) and e.strerror:
        reason = e.strerror
    elif _disk_full(root):  # measured before the temp folder frees its part
        reason = f"No space left on device; torch: {str(e).strip()}"
    else:
        reason = str(e).strip()
    shutil.rmtree(tmp, ignore_errors=True)
    prev = latest(root)
    kept = f"; the previous checkpoint {prev} is intact" if prev else ""
    return VlalignError(f"checkpoint {tmp}: cannot write ({reason}){kept}")


def _write_latest(root: Path, name: str) -> None:
    tmp = root / ".latest.tmp"
    tmp.write_text(name)
    os.replace(tmp, root / "latest")


def _prune(root: Path, keep: int, protect: int | None = None) -> None:
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    kept = None if protect is None else step_dirname(protect)
    for p in steps[:-keep]:
        if p.name != kept:
            shutil.rmtree(p, ignore_errors=True)


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under root, or None."""
    f = root / "latest"
    if not f.is_file():
        return None
    p = root / f.read_text().strip()
    return p if (p / "trainer_state.json").is_file() else None


def load_weights(engine, ckpt: Path) -> None:
    """Put the module weights of checkpoint `ckpt` back into the engine (every rank; optimizer,
    scheduler, RNG and trainer state untouched): what the export of a chosen step needs."""
    from vlalign.errors import VlalignError

    if not (ckpt / "ds" / DS_TAG).is_dir():
        raise VlalignError(f"checkpoint {ckpt}: no engine state to export the weights of")
    engine.load_checkpoint(
        str(ckpt / "ds"),
        tag=DS_TAG,
        load_module_only=True,
        load_optimizer_states=False,
        load_lr_scheduler_states=False,
    )


def load(engine, ckpt: Path, rank: int) -> TrainerState:
    """Restore engine (model, optimizer, scheduler), this rank's RNG, and the trainer state."""
    if not (ckpt / "trainer_state.json").is_file():
        from vlalign.errors import VlalignError

        raise VlalignError(f"checkpoint {ckpt} is incomplete (no trainer_state.json)")
    engine.load_checkpoint(
        str(ckpt / "ds"), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    rng = ckpt / f"rng-rank{rank}.pt"
    if rng.is_file():
        set_rng_state(torch.load(rng, weights_only=True))
    known = TrainerState.__dataclass_fields__
    saved = json.loads((ckpt / "trainer_state.json").read_text())
    return TrainerState(**{k: v for k, v in saved.items() if k in known})
