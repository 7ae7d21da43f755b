"""The training loop: one function, the same in one process, N local ranks, or N Ray workers.

Contract (`run_training(recipe, ctx) -> TrainResult`):
- The process group is the caller's (torchrun-style env, Ray Train's gloo/NCCL group); with none,
  a one-process group is created. DeepSpeed reuses it.
- Every rank builds the same model (built-ins materialize once to a shared cache), applies the
  LoRA policy, wraps it in a DeepSpeed engine, and streams its own slice of the shards.
- The loop names no method: `load_method(recipe.method)` gives a `vlalign.methods.base.Method`
  whose `prepare` builds what it needs (reference, cache, reward head) and returns the module to
  train; batches are of its `batch_kind`.
- Each optimizer step takes `grad_accum` micro-batches; a method's loss is a SUM over its units
  (`method.units`: tokens for SFT, pairs for DPO/reward, ...) divided by the GLOBAL count of
  units in the step, so micro-batch x accumulation x ranks all give the gradient of one big batch.
- Checkpoints (`train.checkpoint_every` and at the end) hold engine, data position, RNG, step,
  MLflow run id; after each one EVERY rank calls `ctx.report(metrics, checkpoint_dir)`.
  A restart resumes from `ctx.restore_from` or the output dir's `latest` checkpoint.
- In-loop scorecards (`train.eval_every`, with `ctx.scorer`, the evaluation layer's
  InLoopScorer): every k steps and at the last one, every rank hands its in-memory policy to the
  scorer (RNG states kept, so training is unchanged) and a checkpoint is written at that step;
  rank 0 logs the metrics under `inloop/` (and `inloop/gates_passed`). The history lives in the
  trainer state; `vlalign.training.selection` picks the exported checkpoint from it (rotation
  keeps that one) and ends the run early under `train.early_stop`.
- Rank 0 logs metrics (to `ctx.tracker`, the tracking layer's MLflow RunLogger, when enabled) and
  exports the adapter (of the chosen checkpoint, with in-loop scorecards).
"""

from __future__ import annotations

import logging
import random
import re
import time
from pathlib import Path

import numpy as np
import torch

from vlalign.config.schema import Recipe
from vlalign.methods import Run, load_method
from vlalign.models import apply_peft, build
from vlalign.models.inputs import ChatEncoder
from vlalign.training import checkpoint as ckpt
from vlalign.training import resume, selection
from vlalign.training.context import Scorer, TrainContext, TrainResult
from vlalign.training.distributed import all_reduce_sum, barrier, ensure_process_group, launcher_env
from vlalign.training.engine import initialize
from vlalign.training.export import export

log = logging.getLogger("vlalign.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _to_device(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device)
            if v.is_floating_point() and k.startswith("pixel_values"):
                v = v.to(dtype)
        out[k] = v
    return out


def _tracker(recipe: Recipe, ctx: TrainContext):
    if not (ctx.is_main and recipe.tracking.enabled):
        return None
    if ctx.tracker is None:
        log.warning("tracking.enabled, but the launcher gave no tracker: no MLflow run is logged")
        return None
    return ctx.tracker(recipe, ctx.rank)


def _scorer(recipe: Recipe, ctx: TrainContext, eval_location: str | None) -> Scorer | None:
    """The in-loop scorer of this rank (None when train.eval_every is off)."""
    if recipe.train.eval_every is None:
        return None
    if ctx.scorer is None:
        log.warning(
            "train.eval_every is set, but the launcher gave no scorer: no in-loop scorecard, "
            "the final weights are exported"
        )
        return None
    location = recipe.eval.data or eval_location
    if location is None:
        from vlalign.errors import VlalignError

        raise VlalignError("train.eval_every: no eval data (set data.eval or eval.data)")
    return ctx.scorer(recipe, location)


_UNSAFE_NAME = re.compile(r"[^0-9A-Za-z_\-. /]")  # what MLflow refuses in a metric name


def _in_loop_scorecard(
    scorer: Scorer, model, encoder, recipe: Recipe, tstate, ctx, tracker
) -> str | None:
    """Score the policy now (every rank), record it in the trainer state, log it (rank 0);
    returns why the run stops here (train.early_stop), or None."""
    saved = ckpt.rng_state()  # scoring must not move training's random streams
    t0 = time.perf_counter()
    try:
        metrics = scorer(model, encoder, ctx.rank, ctx.world_size, tstate.step)
    finally:
        ckpt.set_rng_state(saved)
    history = tstate.inloop.setdefault("history", [])
    rec = selection.record(tstate.step, metrics, recipe.promotion)
    history.append(rec)
    if tracker:
        logged = {f"inloop/{_UNSAFE_NAME.sub('_', k)}": v for k, v in metrics.items()}
        if rec["gates_passed"] is not None:
            logged["inloop/gates_passed"] = float(rec["gates_passed"])
        logged["inloop/time_s"] = time.perf_counter() - t0
        tracker.log_metrics(logged, step=tstate.step)
    stop = selection.stop_reason(history, recipe.train.early_stop)
    if stop:
        tstate.inloop["stopped"] = stop
    return stop


def run_training(recipe: Recipe, ctx: TrainContext | None = None) -> TrainResult:
    """Train per the recipe in this process (one rank of possibly many). See module docstring."""
    from vlalign.training.data import batch_stream, epoch_batches, prepare_data

    ctx = ctx or TrainContext()
    rank, world = ensure_process_group(ctx.device)
    ctx.rank, ctx.world_size = rank, world
    t = recipe.train
    seed_everything(t.seed)
    if ctx.device.type == "cpu":
        # One intra-op thread per reserved CPU: OpenMP threads that outnumber the cores a rank
        # really has spin against each other (a tiny model's matmul went from 0.4 to 16 ms).
        torch.set_num_threads(max(1, int(recipe.resources.cpus_per_worker)))
    out_dir = Path(recipe.output_dir)
    root = out_dir / "checkpoints"

    data = prepare_data(recipe, ctx)  # synthesizes when data.train is null (rank 0, then barrier)
    if rank == 0:
        build(recipe.model)  # materialize a built-in once before every rank loads it
    barrier()
    built = build(recipe.model, device=ctx.device)
    encoder = ChatEncoder(built.processor, built.family, recipe.data.max_length)
    pad_id = built.processor.tokenizer.pad_token_id
    model = apply_peft(built.model, recipe.peft, seed=t.seed)
    method = load_method(recipe.method)
    kind = method.batch_kind
    run = Run(
        recipe=recipe,
        model=model,
        built=built,
        encoder=encoder,
        pad_id=pad_id,
        one_epoch=lambda k: epoch_batches(recipe, encoder, data, k, rank, world),
        digest=data.digest,
        rank=rank,
        world=world,
        device=ctx.device,
    )
    train_model = method.prepare(run)
    with launcher_env(rank, ctx.local_rank, world):  # DeepSpeed reads LOCAL_RANK here
        engine = initialize(train_model, recipe, world)
    method.setup(engine)
    dtype = next(p for p in engine.module.parameters()).dtype

    tstate, restore = resume.restore(engine, recipe, root, ctx.restore_from, rank)
    if restore is not None:
        log.info("resumed from %s at step %d", restore, tstate.step)
    resumed_from = tstate.step

    tracker = _tracker(recipe, ctx)
    scorer = _scorer(recipe, ctx, data.eval_location)
    run_id = tracker.start(resume_run_id=tstate.run_id) if tracker else tstate.run_id
    tstate.run_id = run_id
    if tracker and restore is None:
        tracker.log_dataset(data.train_location, data.manifest)

    if tstate.method_state:
        method.load_state_dict(tstate.method_state)
    position = tstate.data_positions.get(str(rank), 0)
    source = ctx.batches or batch_stream
    stream = source(recipe, encoder, data, kind, rank, world, start_position=position)
    queue: list[dict] = []  # micro-batches the method made of the last data batch (expand)
    ckpt_pending = False
    eval_pending = False
    last_ckpt: Path | None = None
    progress = _progress(ctx, t.max_steps, tstate.step)
    own_grad_norm = not records_grad_norm(engine)
    try:
        while tstate.step < t.max_steps and not tstate.inloop.get("stopped"):
            step_start = time.perf_counter()
            micro, wait, expand_s = [], 0.0, 0.0
            for _ in range(t.grad_accum):
                if not queue:
                    t0 = time.perf_counter()
                    batch, position = next(stream)
                    t1 = time.perf_counter()
                    wait += t1 - t0
                    queue = method.expand(_to_device(batch, ctx.device, dtype))
                    expand_s += time.perf_counter() - t1
                micro.append(queue.pop(0))
            global_units = all_reduce_sum(sum(method.units(b) for b in micro), ctx.device)
            loss_sum, sums, n_tokens, skipped = 0.0, {}, 0, 0
            own_norm = None
            for i, b in enumerate(micro):
                out = method.step(b)
                engine.backward(out.loss_sum / max(global_units, 1.0) * t.grad_accum * world)
                if own_grad_norm and i == len(micro) - 1:  # the boundary: grads all-reduced
                    own_norm = gradient_norm(engine.module)
                engine.step()
                loss_sum += float(out.loss_sum.detach())
                for k, v in out.sums.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_tokens += method.tokens(b)
                skipped += int(b.get("n_skipped", 0))
            after = method.after_step(tstate.step + 1)
            tstate.step += 1
            tstate.data_positions[str(rank)] = position
            step_time = time.perf_counter() - step_start
            metrics = _step_metrics(
                engine,
                method,
                loss_sum,
                sums,
                global_units,
                n_tokens,
                step_time,
                wait,
                skipped,
                ctx,
                own_norm,
            )
            # expand: turning data into micro-batches (the rollout, for online RL methods);
            # update: the forward, backward and optimizer steps (and any weight sync after)
            metrics["expand_s"] = expand_s
            metrics["update_s"] = max(step_time - wait - expand_s, 0.0)
            metrics.update(after)
            tstate.losses.append(metrics["loss"])
            tstate.metrics.append(metrics)
            if tracker and tstate.step % t.log_every == 0:
                tracker.log_metrics(metrics, step=tstate.step)
            if ctx.on_step:
                ctx.on_step(tstate.step, metrics)
            progress(tstate.step, metrics)
            due = t.checkpoint_every and tstate.step % t.checkpoint_every == 0
            eval_due = scorer is not None and (
                tstate.step % t.eval_every == 0 or tstate.step == t.max_steps
            )
            # A checkpoint falls between data batches: the micro-batches a method made of one
            # (an online method's rollout) are not saved, so a resume regenerates them exactly.
            # An in-loop scorecard comes with a checkpoint (the weights it scored can be exported).
            ckpt_pending = ckpt_pending or bool(due) or eval_due
            eval_pending = eval_pending or eval_due
            stop = None
            if (ckpt_pending and not queue) or tstate.step == t.max_steps:
                ckpt_pending = False
                if eval_pending:
                    eval_pending = False
                    stop = _in_loop_scorecard(scorer, model, encoder, recipe, tstate, ctx, tracker)
                tstate.data_positions = gather_positions(position, rank, world)
                tstate.method_state = method.state_dict()
                keep = selection.protected_step(tstate.inloop.get("history", []), t.best)
                last_ckpt = ckpt.save(engine, root, tstate, rank, world, t.keep_checkpoints, keep)
                if ctx.report:
                    ctx.report({"step": tstate.step, **metrics}, last_ckpt)
            if stop:
                log.info("step %d: %s", tstate.step, stop)
                break
            if ctx.stop_after is not None and tstate.step >= ctx.stop_after:
                break
        export_dir, choice = None, None
        if tstate.step >= t.max_steps or tstate.inloop.get("stopped"):
            if scorer is not None:
                choice = selection.choose(tstate.inloop.get("history", []), t.best, tstate.step)
                if not choice.final and choice.step != tstate.step:
                    ckpt.load_weights(engine, root / ckpt.step_dirname(choice.step))
                log.info("export: %s", choice.describe())
            export_dir = export(
                engine.module,
                built.processor,
                recipe,
                built.family,
                out_dir / "export",
                rank,
                recipe.engine.zero_stage,
            )  # logged + registered after evaluation, by vlalign.pipeline.finish_run
    except BaseException as e:
        if tracker:
            tracker.fail(e)
        raise
    finally:
        progress(None, None)
        if hasattr(method, "close"):  # an online method's rollout actors
            method.close()
    if ctx.is_main:
        from vlalign.training.report import constraint_curves

        png = constraint_curves(tstate.metrics, out_dir / "report" / "lagrange.png")
        if png is not None and tracker:
            tracker.log_artifact(png, "report")
    if tracker:
        tracker.finish()
    return TrainResult(
        losses=tstate.losses,
        metrics=tstate.metrics,
        output_dir=out_dir,
        export_dir=export_dir,
        checkpoint_dir=last_ckpt,
        run_id=run_id,
        resumed_from_step=resumed_from,
        export_choice=choice.describe() if choice else None,
        stopped_early=tstate.inloop.get("stopped"),
    )


def records_grad_norm(engine) -> bool:
    """Whether DeepSpeed keeps the gradient norm of a step (`get_global_grad_norm`): its ZeRO,
    fp16 and bf16 optimizers do; plain fp32 without ZeRO clips and drops the norm."""
    return bool(engine.zero_optimization() or engine.fp16_enabled() or engine.bfloat16_enabled())


def gradient_norm(module) -> float:
    """The 2-norm of every gradient of `module`'s parameters, before clipping (what DeepSpeed's
    ZeRO optimizers report): taken after the boundary's backward, when ranks' gradients are
    already all-reduced."""
    import torch

    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.nn.utils.get_total_norm(grads, norm_type=2.0))


def gather_positions(position: int, rank: int, world: int) -> dict[str, int]:
    """Every rank's data position (samples consumed), so a restart resumes each rank's stream."""
    import torch.distributed as dist

    if world == 1 or not dist.is_initialized():
        return {str(rank): position}
    parts: list = [None] * world
    dist.all_gather_object(parts, position)
    return {str(r): int(p) for r, p in enumerate(parts)}


def _step_metrics(
    engine, method, loss_sum, sums, global_units, n_tokens, step_time, wait, skipped, ctx, own_norm
) -> dict:
    """Global metrics of one optimizer step (sums all-reduced over ranks). `own_norm`: the
    gradient norm the loop measured where DeepSpeed keeps none (`records_grad_norm`)."""
    device = ctx.device
    loss = all_reduce_sum(loss_sum, device) / max(global_units, 1.0)
    reduced = {k: all_reduce_sum(v, device) for k, v in sorted(sums.items())}
    tokens = all_reduce_sum(float(n_tokens), device)
    metrics = {"loss": loss, **method.metrics(reduced, global_units)}
    metrics["loss"] = loss
    gn = engine.get_global_grad_norm()
    if gn is None:
        gn = own_norm
    metrics["grad_norm"] = float(gn) if gn is not None else float("nan")
    metrics["lr"] = float(engine.get_lr()[0])
    metrics["tokens_per_s"] = tokens / step_time if step_time > 0 else 0.0
    metrics["data_wait_s"] = wait
    metrics["step_time_s"] = step_time
    metrics["data/skipped"] = all_reduce_sum(float(skipped), device)
    return metrics


def _progress(ctx: TrainContext, total: int, start: int):
    """A progress bar on rank 0 (a no-op elsewhere); call with (step, metrics), then (None, None).

    In a Ray worker it is Ray's tqdm, which the driver draws as one bar (a plain tqdm there would
    print a line per refresh through Ray's log forwarding)."""
    if not ctx.is_main:
        return lambda *_: None
    if ctx.ray_progress:  # Ray's tqdm has no postfix: the figures go in the description
        from ray.experimental.tqdm_ray import tqdm as ray_tqdm

        bar = ray_tqdm(desc="train", total=total, unit="step")
        bar.n = start

        def show(m: dict) -> None:
            bar.set_description(f"train loss={m['loss']:.4f} lr={m['lr']:.2e}")
    else:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, leave=False
        )

        def show(m: dict) -> None:
            bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}")

    def update(step, metrics):
        if step is None:
            bar.close()
            return
        bar.update(step - bar.n)
        show(metrics)

    return update
