"""Local launcher: the training loop in N processes on this machine (no Ray).

`vlalign run RECIPE --no-ray --nproc N` uses this; each process joins a gloo (CPU) or NCCL (GPU)
group over 127.0.0.1 and runs `run_training`. Rank 0's result comes back to the caller.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback

import torch

from vlalign.config.schema import Recipe
from vlalign.errors import VlalignError
from vlalign.training.context import ScorerFactory, TrackerFactory, TrainContext, TrainResult
from vlalign.training.distributed import free_port


def device_for(local_rank: int) -> torch.device:
    """cuda:<local_rank> when GPUs exist, else CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _worker(
    rank: int,
    world: int,
    port: int,
    recipe_dict: dict,
    queue,
    stop_after: int | None,
    tracker: TrackerFactory | None,
    on_step=None,
    scorer: ScorerFactory | None = None,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    from vlalign.training.loop import run_training

    try:
        recipe = Recipe.model_validate(recipe_dict)
        result = run_training(
            recipe,
            TrainContext(
                rank=rank,
                world_size=world,
                local_rank=rank,
                device=device_for(rank),
                stop_after=stop_after,
                tracker=tracker,
                on_step=on_step,
                scorer=scorer,
            ),
        )
        if rank == 0:
            queue.put(("ok", result))
    except BaseException as e:
        queue.put(("error", f"rank {rank}: {type(e).__name__}: {e}\n{traceback.format_exc()}"))
        raise SystemExit(1) from None


def launch_local(
    recipe: Recipe,
    nproc: int = 1,
    stop_after: int | None = None,
    tracker: TrackerFactory | None = None,
    on_step=None,
    scorer: ScorerFactory | None = None,
) -> TrainResult:
    """Run the loop in `nproc` local processes (1: in this process) and return rank 0's result.

    tracker: the MLflow run logger (`vlalign.tracking.run_logger.RunLogger`, as `vlalign run`
    passes it); None logs no run. on_step(step, metrics): called on every rank after each
    optimizer step (picklable). scorer: the in-loop scorecard of `train.eval_every`
    (`vlalign.evaluation.inloop.InLoopScorer`, as `vlalign run` passes it); None scores nothing.
    """
    if nproc == 1:
        from vlalign.training.loop import run_training

        ctx = TrainContext(
            device=device_for(0),
            stop_after=stop_after,
            tracker=tracker,
            on_step=on_step,
            scorer=scorer,
        )
        return run_training(recipe, ctx)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                r,
                nproc,
                port,
                recipe.model_dump(mode="json"),
                queue,
                stop_after,
                tracker,
                on_step,
                scorer,
            ),
        )
        for r in range(nproc)
    ]
    for p in procs:
        p.start()
    result, error = None, None
    while result is None and error is None:
        try:
            status, payload = queue.get(timeout=1.0)
            if status == "ok":
                result = payload
            else:
                error = payload
        except Exception:  # queue.Empty: check for dead workers
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead and queue.empty():
                error = f"rank process exited with code {dead[0].exitcode}"
    for p in procs:
        if error:
            p.terminate()
        p.join()
    if error:
        raise VlalignError(f"training failed: {error}")
    return result
