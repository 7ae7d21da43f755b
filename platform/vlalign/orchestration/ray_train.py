"""The training loop in N Ray Train workers: a TorchTrainer around `run_training`, nothing more.

Each worker builds a TrainContext from Ray Train's context (rank, local rank, device, the
checkpoint to restore) and calls the same `vlalign.training.loop.run_training` that
`vlalign run --no-ray` calls. Ray Train has already created the process group (gloo on CPU,
NCCL on GPU); DeepSpeed reuses it. The recipe's `resources` section sizes the run:
num_workers, cpus_per_worker, gpus_per_worker, storage_path, max_failures.

Checkpoints: after each checkpoint the loop calls `ctx.report(metrics, checkpoint_dir)` on every
rank; this shell turns that into `ray.train.report`, so Ray Train persists the checkpoint to
storage and, when a worker dies, restarts the worker group (FailureConfig(max_failures)) with
`ray.train.get_checkpoint()` pointing at the latest one, which becomes `ctx.restore_from`.
Data: with data.reader webdataset (default) every worker streams its own slice of the shards
(the loop's reader splits them by rank); with ray_data the driver reads the split with
`ray.data.read_webdataset`, Ray Train hands each worker a streaming split, and the worker's
TrainContext gets `orchestration.ray_data.worker_batches` as its batch source.

The loop writes a checkpoint into a folder all ranks of a node share; on each node the
local-rank-0 worker attaches it to its report (the others report metrics only, which Ray
requires of every rank), so each node uploads it once and Ray merges the nodes' files.

Ray Train V2 drops what the worker function returns and keeps only the metrics attached to
checkpoints: `run_on_ray` rebuilds the TrainResult from the last persisted checkpoint (its
trainer_state.json holds every step's losses and metrics, restored steps included) and from the
keys this shell adds to each report: `resumed_from_step` and `restored_from` (the checkpoint
Ray handed the current worker group, or None on a first attempt).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from vlalign.config.schema import Recipe
from vlalign.errors import VlalignError
from vlalign.orchestration.cluster import ray_cluster
from vlalign.orchestration.submit import PASSTHROUGH_ENV
from vlalign.training.context import TrainResult

StepHook = Callable[[int, dict], None]


def _train_location(recipe: Recipe) -> str:
    """The training shards, synthesized here first when data.train is null (the driver must
    read them before the workers start)."""
    from vlalign.training.context import TrainContext
    from vlalign.training.data import prepare_data

    return prepare_data(recipe, TrainContext()).train_location


def storage_path(recipe: Recipe) -> str:
    """Where Ray Train persists checkpoints: resources.storage_path (a folder or a URI), else
    the run's output folder. Local folders are made absolute (Ray requires it)."""
    path = recipe.resources.storage_path or recipe.output_dir
    if "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def run_name(recipe: Recipe) -> str:
    """Ray Train run name: `ray` inside the output folder by default, the recipe name in a
    storage_path shared by many runs."""
    return "ray" if recipe.resources.storage_path is None else recipe.name


def _worker_env(extra: dict[str, str] | None) -> dict[str, str]:
    """Environment of the training workers: library settings set here, then `extra`."""
    env = {k: os.environ[k] for k in PASSTHROUGH_ENV if os.environ.get(k)}
    env.update(extra or {})
    return env


def _report_fn(local_rank: int, restored_from: Path | None):
    """`ctx.report` for the loop: ray.train.report, with the checkpoint from local rank 0 and
    where this worker group resumed from."""
    import ray.train

    resumed_from_step = _checkpoint_step(restored_from) if restored_from else 0

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        checkpoint = None
        if checkpoint_dir is not None and local_rank == 0:
            checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir))
        ray.train.report(
            {
                **metrics,
                "resumed_from_step": resumed_from_step,
                "restored_from": str(restored_from) if restored_from else None,
            },
            checkpoint=checkpoint,
            checkpoint_dir_name=Path(checkpoint_dir).name if checkpoint_dir else None,
            delete_local_checkpoint_after_upload=False,  # the loop keeps and prunes its own
        )

    return report


def _trainer_state(checkpoint_dir: Path) -> dict:
    """The loop's trainer_state.json of a checkpoint (step, losses, metrics, run id)."""
    f = Path(checkpoint_dir) / "trainer_state.json"
    if not f.is_file():
        raise VlalignError(f"checkpoint {checkpoint_dir} has no trainer_state.json")
    return json.loads(f.read_text())


def _checkpoint_step(checkpoint_dir: Path) -> int:
    return int(_trainer_state(checkpoint_dir)["step"])


def train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the training loop with a TrainContext from Ray Train's context."""
    import ray.train
    import ray.train.torch

    from vlalign.evaluation.inloop import InLoopScorer
    from vlalign.tracking.run_logger import RunLogger
    from vlalign.training.context import TrainContext
    from vlalign.training.loop import run_training

    recipe = Recipe.model_validate(config["recipe"])
    tctx = ray.train.get_context()
    local_rank = tctx.get_local_rank()
    checkpoint = ray.train.get_checkpoint()
    batches = None
    if recipe.data.reader == "ray_data":
        from vlalign.orchestration.ray_data import worker_batches as batches
    with checkpoint.as_directory() if checkpoint is not None else nullcontext() as restore:
        ctx = TrainContext(
            tracker=RunLogger,
            scorer=InLoopScorer,
            batches=batches,
            rank=tctx.get_world_rank(),
            world_size=tctx.get_world_size(),
            local_rank=local_rank,
            device=ray.train.torch.get_device(),
            restore_from=Path(restore) if restore else None,
            report=_report_fn(local_rank, Path(restore) if restore else None),
            on_step=config.get("on_step"),
            ray_progress=config.get("ray_progress", True),
        )
        run_training(recipe, ctx)


def build_trainer(
    recipe: Recipe,
    *,
    on_step: StepHook | None = None,
    worker_env: dict[str, str] | None = None,
    ray_progress: bool = True,
):
    """The TorchTrainer for a recipe (not started). `on_step(step, metrics)` runs in every
    worker after each optimizer step; `worker_env` adds environment variables to the workers.
    ray_progress: rank 0 draws its bar with Ray's tqdm, which the driver renders (False: a plain
    bar in the worker's own output, for a driver that draws its own from `on_step`)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    res = recipe.resources
    datasets = None
    if recipe.data.reader == "ray_data":
        from vlalign.orchestration.ray_data import DATASET_NAME, train_dataset

        datasets = {DATASET_NAME: train_dataset(recipe, _train_location(recipe))}
    per_worker = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker > 0:
        per_worker["GPU"] = res.gpus_per_worker
    return TorchTrainer(
        train_worker,
        train_loop_config={
            "recipe": recipe.model_dump(mode="json"),
            "on_step": on_step,
            "ray_progress": ray_progress,
        },
        scaling_config=ScalingConfig(
            num_workers=res.num_workers,
            use_gpu=res.gpus_per_worker > 0,
            resources_per_worker=per_worker,
        ),
        run_config=RunConfig(
            name=run_name(recipe),
            storage_path=storage_path(recipe),
            failure_config=FailureConfig(max_failures=res.max_failures),
            worker_runtime_env={"env_vars": _worker_env(worker_env)},
        ),
        datasets=datasets,
    )


def _result_from(fit_result, recipe: Recipe) -> TrainResult:
    """Rank 0's TrainResult, from the last persisted checkpoint and its report metrics."""
    checkpoint = fit_result.checkpoint
    if checkpoint is None:
        raise VlalignError(f"{recipe.name}: the Ray run ended without a checkpoint")
    # Only trainer_state.json is read: a remote (s3://) checkpoint is not downloaded whole.
    state_file = f"{checkpoint.path.rstrip('/')}/trainer_state.json"
    try:
        with checkpoint.filesystem.open_input_stream(state_file) as f:
            state = json.loads(f.read())
    except (FileNotFoundError, OSError) as e:
        raise VlalignError(
            f"checkpoint {checkpoint.path} has no readable trainer_state.json: {e}"
        ) from None
    reported = fit_result.metrics or {}
    out_dir = Path(recipe.output_dir)
    inloop = state.get("inloop") or {}
    finished = state["step"] >= recipe.train.max_steps or bool(inloop.get("stopped"))
    choice = None
    if finished and recipe.train.eval_every is not None and "history" in inloop:
        from vlalign.training.selection import choose

        choice = choose(inloop["history"], recipe.train.best, state["step"]).describe()
    return TrainResult(
        losses=state["losses"],
        metrics=state["metrics"],
        output_dir=out_dir,
        export_dir=out_dir / "export" if finished and (out_dir / "export").is_dir() else None,
        checkpoint_dir=Path(checkpoint.path),
        run_id=state.get("run_id"),
        resumed_from_step=int(reported.get("resumed_from_step", 0)),
        export_choice=choice,
        stopped_early=inloop.get("stopped"),
    )


def run_on_ray(
    recipe: Recipe,
    address: str | None = None,
    *,
    on_step: StepHook | None = None,
    worker_env: dict[str, str] | None = None,
    ray_progress: bool = True,
) -> TrainResult:
    """Run the recipe in `resources.num_workers` Ray Train workers and return rank 0's result.

    `address`: a Ray cluster to join (else RAY_ADDRESS, else resources.address, else a local
    cluster). `checkpoint_dir` of the result is the checkpoint as Ray Train persisted it.
    `on_step`, `worker_env`, `ray_progress`: as for build_trainer.
    Raises VlalignError when the run fails after `resources.max_failures` restarts.
    """
    from ray.train import TrainingFailedError

    with ray_cluster(address, recipe) as where:
        print(f"{recipe.name}: {recipe.resources.num_workers} Ray Train workers on {where}")
        trainer = build_trainer(
            recipe, on_step=on_step, worker_env=worker_env, ray_progress=ray_progress
        )
        try:
            fit_result = trainer.fit()
        except TrainingFailedError as e:
            raise VlalignError(f"{recipe.name}: Ray training failed: {e}") from e
    return _result_from(fit_result, recipe)
