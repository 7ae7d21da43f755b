"""Whether and from where a run resumes: the recipe digest, the finished-run rule, and the
fallback past a corrupt checkpoint.

A checkpoint records `recipe_digest`, a sha256 over the parts of the recipe that decide what
is trained and how (model, LoRA policy, training data, method and loss, optimizer and
schedule, engine, number of workers); logging, checkpoint cadence, evaluation (the in-loop
scorecard too), tracking and promotion settings are left out, so they may change between a run
and its resumption.

Two places use it:
- the driver (`vlalign run`), before any worker starts, calls `plan(recipe)`: a fresh run, a
  resumption (said plainly, with the step), a finished run (nothing to train; `--restart`
  sets the old run aside and trains anew), a finished run whose publish step did not complete
  (see below), or a refusal when the output directory holds a checkpoint of a different recipe;
- each training process calls `restore(engine, recipe, root, restore_from, rank)` (in the
  loop, where it resumes): the same digest check, then the newest checkpoint that loads on
  every rank; a corrupt one is named and skipped for the previous good one.

Publishing. After training, `vlalign run` evaluates the export and logs and registers it
(`vlalign.pipeline.finish_run`); when that completes, the driver writes `<output_dir>/
published.json` (`mark_published`: the final step, the MLflow run, what was published). A
finished checkpoint without a marker for its step and run is a run whose evaluation or
registration crashed (a missing eval split, an unreachable MLflow store, a killed driver):
`plan` answers "publish", and `vlalign run` does only that step again, from the final
checkpoint's state and the export, without training (registration never makes a second
version of one MLflow run: `vlalign.tracking.publish.version_of_run`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlalign.config.schema import Recipe
from vlalign.errors import VlalignError
from vlalign.training import checkpoint as ckpt
from vlalign.training.context import TrainResult

log = logging.getLogger("vlalign.train")

# Recipe fields that do not change what a step computes (dotted paths).
_IGNORED = {
    "name",
    "description",
    "extends",
    "eval",
    "tracking",
    "promotion",
    "model.cache_dir",
    "data.eval",
    "data.eval_split",
    "method.reference_cache_dir",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.output_dir",
    "train.export",
    "train.eval_every",
    "train.eval_samples",
    "train.eval_splits",
    "train.best",
    "train.early_stop",
    "resources.cpus_per_worker",
    "resources.gpus_per_worker",
    "resources.address",
    "resources.storage_path",
    "resources.max_failures",
}


def _strip(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        path = f"{prefix}{k}"
        if path in _IGNORED:
            continue
        out[k] = _strip(v, f"{path}.") if isinstance(v, dict) else v
    return out


def recipe_digest(recipe: Recipe) -> str:
    """sha256 of the training-relevant part of the recipe (see the module docstring)."""
    data = _strip(recipe.model_dump(mode="json"))
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def candidates(root: Path, restore_from: Path | None = None) -> list[Path]:
    """Checkpoints to try, best first: the one handed over (Ray), `latest`, then older ones."""
    out: list[Path] = []
    if restore_from is not None:
        out.append(Path(restore_from))
    newest = ckpt.latest(root)
    if newest is not None:
        out.append(newest)
    if root.is_dir():
        steps = sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)
        out.extend(p for p in steps if (p / "trainer_state.json").is_file())
    seen, unique = set(), []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def check_digest(checkpoint: Path, state: dict, recipe: Recipe) -> None:
    """VlalignError when the checkpoint was written by a different recipe."""
    saved = state.get("recipe_digest")
    if saved is None:  # written before checkpoints carried a digest: nothing to compare
        return
    mine = recipe_digest(recipe)
    if saved != mine:
        what = state.get("method") or "another recipe"
        raise VlalignError(
            f"{checkpoint} was written by a different recipe ({what}, digest {saved[7:19]}; "
            f"this recipe: {recipe.method.name}, digest {mine[7:19]}): it will not be resumed. "
            f"Use another train.output_dir, or `vlalign run --restart` to set "
            f"{Path(recipe.output_dir)} aside and train anew"
        )


@dataclass
class Plan:
    """What `vlalign run` will do with the recipe's output directory."""

    action: str  # "fresh" | "resume" | "publish" | "finished"
    checkpoint: Path | None = None
    step: int = 0
    run_id: str | None = None
    message: str = ""


PUBLISHED = "published.json"  # <output_dir>/published.json: the run's publish step completed


def published(recipe: Recipe, step: int, run_id: str | None) -> dict[str, Any] | None:
    """The publish marker of the run that ended at `step` in MLflow run `run_id`, or None (no
    marker, an unreadable one, or one of another run, e.g. before a `--restart`)."""
    try:
        data = json.loads((Path(recipe.output_dir) / PUBLISHED).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("step") != step or data.get("run_id") != run_id:
        return None
    return data


def mark_published(recipe: Recipe, step: int, run_id: str | None, **details: Any) -> Path:
    """Write the publish marker (atomically) once the run's publish step completed; `details`
    (JSON values) record what was published."""
    out = Path(recipe.output_dir)
    data = {
        "step": step,
        "run_id": run_id,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **details,
    }
    tmp = out / f".{PUBLISHED}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, out / PUBLISHED)
    return out / PUBLISHED


def plan(recipe: Recipe) -> Plan:
    """Decide, before any worker starts, how a run starts (see the module docstring)."""
    root = Path(recipe.output_dir) / "checkpoints"
    for c in candidates(root):
        try:
            state = _state(c)
        except (OSError, ValueError) as e:
            log.warning("checkpoint %s: unreadable trainer_state.json (%s); skipped", c, e)
            continue
        check_digest(c, state, recipe)
        step, run_id = int(state.get("step", 0)), state.get("run_id")
        stopped = (state.get("inloop") or {}).get("stopped")
        done = step >= recipe.train.max_steps or bool(stopped)
        where = (
            f"step {step} of {recipe.train.max_steps}"
            + (", stopped early by train.early_stop" if stopped else "")
            + (f", MLflow run {run_id}" if run_id else "")
        )
        if done and published(recipe, step, run_id) is None:
            return Plan(
                "publish",
                c,
                step,
                run_id,
                f"{recipe.output_dir} holds a finished run of this recipe ({where}) whose "
                "evaluation and publishing did not complete: doing them now, without training",
            )
        if done:
            return Plan(
                "finished",
                c,
                step,
                run_id,
                f"{recipe.output_dir} holds a finished run of this recipe ({where}): nothing to "
                "train; `vlalign run --restart` sets it aside and trains anew",
            )
        return Plan(
            "resume",
            c,
            step,
            run_id,
            f"resuming {recipe.output_dir} from checkpoint {c.name} (step {step} of "
            f"{recipe.train.max_steps})" + (f", MLflow run {run_id}" if run_id else ""),
        )
    return Plan("fresh", message=f"starting {recipe.output_dir} at step 0")


def finished_result(recipe: Recipe, checkpoint: Path) -> TrainResult:
    """The TrainResult of a finished run, read back from its final checkpoint and export (for
    a publish step done again). VlalignError when the export it needs is missing or partial."""
    from vlalign.training.export import EXPORT_MANIFEST

    state = _state(checkpoint)
    out = Path(recipe.output_dir)
    export_dir: Path | None = out / "export"
    if recipe.train.export == "none":
        export_dir = None
    elif not (export_dir / EXPORT_MANIFEST).is_file():
        raise VlalignError(
            f"{out} holds a finished run (checkpoint {checkpoint.name}) but its export "
            f"{export_dir} is missing or incomplete (no {EXPORT_MANIFEST}), so it cannot be "
            f"published; `vlalign run --restart` sets the run aside and trains anew"
        )
    step = int(state["step"])
    return TrainResult(
        losses=list(state.get("losses", [])),
        metrics=list(state.get("metrics", [])),
        output_dir=out,
        export_dir=export_dir,
        checkpoint_dir=checkpoint,
        run_id=state.get("run_id"),
        resumed_from_step=step,
        stopped_early=(state.get("inloop") or {}).get("stopped"),
    )


# What a run leaves in its output directory; --restart moves these aside.
RUN_PARTS = ("checkpoints", "export", "eval", "ray", "reference_cache", PUBLISHED)


def set_aside(recipe: Recipe) -> Path | None:
    """Move a previous run's parts into `<output_dir>/previous-<UTC time>/` (nothing is
    deleted); returns that folder, or None when there was nothing to move."""
    out = Path(recipe.output_dir)
    parts = [out / p for p in RUN_PARTS if (out / p).exists()]
    if not parts:
        return None
    dest = out / time.strftime("previous-%Y%m%dT%H%M%SZ", time.gmtime())
    dest.mkdir(parents=True, exist_ok=False)
    for p in parts:
        shutil.move(str(p), str(dest / p.name))
    return dest


def _diagnose(checkpoint: Path, error: BaseException) -> str:
    """The file of a checkpoint that does not load, when one can be singled out."""
    import torch

    for f in sorted(checkpoint.rglob("*")):
        if not f.is_file():
            continue
        try:
            if f.suffix == ".json":
                json.loads(f.read_text())
            elif f.suffix in (".pt", ".bin", ".pth"):
                torch.load(f, map_location="cpu", weights_only=False)
        except Exception as e:
            return f"{f}: {type(e).__name__}: {e}"
    return f"{checkpoint}: {type(error).__name__}: {error}"


def restore(
    engine, recipe: Recipe, root: Path, restore_from: Path | None, rank: int
) -> tuple[ckpt.TrainerState, Path | None]:
    """Load the newest good checkpoint into the engine (all ranks agree which); returns the
    trainer state (step 0 and this recipe's digest when there is none) and its directory.

    A checkpoint of another recipe raises VlalignError; one that fails to load on any rank is
    named and the previous one tried; when none loads, VlalignError names the first problem.
    """
    import torch

    from vlalign.training.distributed import all_reduce_sum

    device = getattr(engine, "device", torch.device("cpu"))
    problems: list[str] = []
    tried = candidates(root, restore_from)
    for c in tried:
        error: BaseException | None = None
        try:
            state = _state(c)
        except (OSError, ValueError) as e:
            state, error = {}, e
        if error is None:
            check_digest(c, state, recipe)
            try:
                tstate = ckpt.load(engine, c, rank)
            except Exception as e:
                error = e
        failed = all_reduce_sum(1.0 if error is not None else 0.0, device)
        if failed == 0:
            if problems:
                log.warning("resumed from the previous good checkpoint %s", c)
            tstate.recipe_digest = tstate.recipe_digest or recipe_digest(recipe)
            tstate.method = tstate.method or recipe.method.name
            return tstate, c
        if error is not None:
            problems.append(_diagnose(c, error))
            log.warning(
                "checkpoint %s does not load (%s); trying the previous one", c, problems[-1]
            )
        else:
            problems.append(f"{c}: failed to load on another rank")
    if problems:
        raise VlalignError(f"no checkpoint under {root} loads; first problem: {problems[0]}")
    return ckpt.TrainerState(
        step=0, recipe_digest=recipe_digest(recipe), method=recipe.method.name
    ), None
