"""Where an online method's rollouts are generated: the recipe's `method.rollout.placement`.

A `RolloutBackend` has two calls: `rollout(prompts, step) -> Rollout` (n samples per prompt,
seeded by (seed, step, key, index), on the trainer's device) and `sync(update) -> metrics` (the
trainer's new adapter weights reach the generator; returns the parity metrics).

- `LocalBackend` (placement local): the training worker's own `GenerationEngine` on its own
  policy; nothing to sync (`sync` returns {}).
- `RayBackend` (placement ray): `num_workers` Ray actors per training rank
  (`vlalign.rollout.actor.RolloutWorker`, `cpus_per_worker` / `gpus_per_worker` each), each with
  a policy copy. A rank's prompts are split into contiguous chunks across the actors and the
  rollouts are concatenated in order (`concat_rollouts`), so the result equals a local rollout
  (samples do not depend on the other prompts of a batch, up to float rounding of padding).
  `sync` puts the update into Ray's object store ONCE (`ray.put`) and passes the ref to every
  actor; each loads it and recomputes the probe's log-probs; a parity failure raises
  `WeightSyncError` naming the actor and the numbers. Every rollout call carries the current
  version and the latest update's ref, so an actor Ray restarted after a crash
  (`max_restarts`, `max_task_retries`: the interrupted call is retried) reloads the weights
  first and regenerates the same samples. When an actor's whole node is lost, Ray keeps calling
  the dead address until its health check declares the node dead (seconds), which can use up
  `max_task_retries` first ("actor temporarily unavailable"): such a call is submitted again,
  once a second, until the restarted actor answers (at most UNAVAILABLE_WAIT_S).

Ray is imported only by `RayBackend`. The actors live in the Ray cluster the process is
connected to (Ray Train workers: the run's cluster). In a process without Ray (`vlalign run
--no-ray`, a test calling the loop) `RayBackend` starts a local single-node Ray instance
(`ray.init(address="local")`, sized for the actors) and shuts it down at `close()`.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from vlalign.config.schema import Recipe
from vlalign.errors import VlalignError
from vlalign.models.inputs import IGNORE_INDEX
from vlalign.rollout.actor import RolloutWorker, rollout_to
from vlalign.rollout.engine import GenerationEngine, Rollout
from vlalign.rollout.weights import AdapterUpdate, ParityResult, WeightSyncError

MAX_RESTARTS = 4  # Ray restarts of one rollout actor before the run fails
MAX_TASK_RETRIES = 4  # retries of a rollout/sync call interrupted by an actor's death
UNAVAILABLE_WAIT_S = 300.0  # how long a call waits for an actor Ray restarts after a node loss


@runtime_checkable
class RolloutBackend(Protocol):
    """What an online method generates with (see the module docstring)."""

    def rollout(self, prompts: Sequence[dict], step: int) -> Rollout:
        """n samples for each prompt, in the trainer's layout, on the trainer's device."""
        ...

    def sync(self, update: AdapterUpdate) -> dict[str, float]:
        """Move the trainer's adapter weights to the generator; parity metrics ({} if none)."""
        ...

    def close(self) -> None:
        """Release the generator's resources (actors)."""
        ...


class LocalBackend:
    """Placement local: this worker's own engine on its own (trained) policy."""

    def __init__(self, engine: GenerationEngine) -> None:
        self.engine = engine

    def rollout(self, prompts: Sequence[dict], step: int) -> Rollout:
        return self.engine.rollout(prompts, step)

    def sync(self, update: AdapterUpdate) -> dict[str, float]:
        return {}

    def close(self) -> None:
        return None


def split_evenly(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) chunks of range(n) over at most ``parts`` workers (no empty
    chunk; the first n % parts chunks are one longer)."""
    parts = max(1, min(parts, n))
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


def _cat_features(parts: list):
    """Per-prompt features of consecutive rollouts -> one (pooler_output concatenated)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    pos = [f.pooler_output for f in parts]
    if isinstance(pos[0], torch.Tensor):
        return BaseModelOutputWithPooling(pooler_output=torch.cat(pos))
    entries = [e for po in pos for e in po]
    return BaseModelOutputWithPooling(
        pooler_output=tuple(entries) if isinstance(pos[0], tuple) else entries
    )


def concat_rollouts(parts: Sequence[Rollout], pad_id: int) -> Rollout:
    """Rollouts of consecutive prompt chunks -> the rollout of all prompts, rows in order.

    [N_i, T_i] tensors are right-padded to max T_i (input_ids with ``pad_id``, masks 0 / False,
    labels -100, log-probs 0, token types 0), as one engine lays out one batch; prompt_index is
    offset by the prompts before each part.
    """
    if len(parts) == 1:
        return parts[0]
    T = max(p.input_ids.shape[1] for p in parts)

    def cat(name: str, value) -> torch.Tensor:
        return torch.cat(
            [F.pad(getattr(p, name), (0, T - p.input_ids.shape[1]), value=value) for p in parts]
        )

    offsets, total = [], 0
    for p in parts:
        offsets.append(total)
        total += p.input_ids.shape[0] // p.n  # P_i prompts of n rows each
    feats = [p.features for p in parts]
    has_types = parts[0].mm_token_type_ids is not None
    return Rollout(
        input_ids=cat("input_ids", pad_id),
        attention_mask=cat("attention_mask", 0),
        labels=cat("labels", IGNORE_INDEX),
        response_mask=cat("response_mask", False),
        old_logps=None if parts[0].old_logps is None else cat("old_logps", 0.0),
        prompt_index=torch.cat([p.prompt_index + o for p, o in zip(parts, offsets, strict=True)]),
        response_lengths=torch.cat([p.response_lengths for p in parts]),
        truncated=torch.cat([p.truncated for p in parts]),
        texts=[t for p in parts for t in p.texts],
        n=parts[0].n,
        features=None if feats[0] is None else _cat_features(feats),
        image_counts=[c for p in parts for c in p.image_counts],
        prompt_images={
            k: torch.cat([p.prompt_images[k] for p in parts]) for k in parts[0].prompt_images
        },
        mm_token_type_ids=cat("mm_token_type_ids", 0) if has_types else None,
    )


def _get(refs: list) -> list:
    """ray.get; a VlalignError raised in an actor is re-raised as itself (not Ray's wrapper)."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(refs)
    except RayTaskError as e:
        if isinstance(e.cause, VlalignError):
            raise e.cause from None
        raise


def _call_all(calls: Sequence[Callable[[], object]], what: str) -> list:
    """Submit each call (one remote call on one actor: returns its ObjectRef) and get the
    results in order. A call whose actor is temporarily unavailable (its node was lost and Ray
    has not restarted it yet; see the module docstring) is submitted again once a second until
    it answers; after UNAVAILABLE_WAIT_S a VlalignError names the actor."""
    from ray.exceptions import ActorUnavailableError

    refs = [call() for call in calls]
    results: list = []
    deadline = time.monotonic() + UNAVAILABLE_WAIT_S
    for i, call in enumerate(calls):
        while True:
            try:
                results.append(_get([refs[i]])[0])
                break
            except ActorUnavailableError as e:
                if time.monotonic() > deadline:
                    raise VlalignError(
                        f"{what}: rollout actor {i} has been unavailable for "
                        f"{UNAVAILABLE_WAIT_S:.0f} s (its node lost and no room to restart it?): "
                        f"{e}"
                    ) from None
                time.sleep(1.0)
                refs[i] = call()
    return results


def parity_metrics(results: Sequence[ParityResult]) -> dict[str, float]:
    """The worst actor's parity metrics; `WeightSyncError` naming the actor, the difference and
    the tolerance when one actor's probe log-probs are off."""
    for i, r in enumerate(results):
        if not r.ok:
            raise WeightSyncError(
                f"weight sync v{r.version}: rollout actor {i}'s log-probs of the probe differ "
                f"from the trainer's by {r.max_abs_diff:.3g} > method.rollout.parity_tolerance "
                f"{r.tolerance:.3g}"
            )
    return max(results, key=lambda r: r.max_abs_diff).metrics()


class RayBackend:
    """Placement ray: rollout actors holding policy copies (see the module docstring).

    recipe: the run's recipe (the actors build its model and LoRA); engine: the trainer-side
    engine (its sampling settings, pad id); rank: the training rank (names the actors);
    device: where the returned rollouts go (the trainer's device).
    """

    def __init__(
        self,
        recipe: Recipe,
        engine: GenerationEngine,
        rank: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        import ray

        cfg = recipe.method.rollout
        self.cfg = cfg
        self.pad_id = engine.pad_id
        self.device = torch.device(device)
        self.started_ray = False
        if not ray.is_initialized():
            ray.init(
                address="local",
                num_cpus=max(math.ceil(cfg.num_workers * cfg.cpus_per_worker), 1),
                num_gpus=math.ceil(cfg.num_workers * cfg.gpus_per_worker) or None,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            self.started_ray = True
        remote = ray.remote(RolloutWorker)
        tag = uuid.uuid4().hex[:8]
        self.actors = [
            remote.options(
                name=f"vlalign-rollout-{recipe.name}-r{rank}-{i}-{tag}",
                num_cpus=cfg.cpus_per_worker,
                num_gpus=cfg.gpus_per_worker,
                max_restarts=MAX_RESTARTS,
                max_task_retries=MAX_TASK_RETRIES,
            ).remote(
                recipe,
                engine.settings,
                "cuda" if cfg.gpus_per_worker > 0 else "cpu",
                max(1, int(cfg.cpus_per_worker)),
                cfg.parity_tolerance,
            )
            for i in range(cfg.num_workers)
        ]
        self.version = -1
        self.latest = None  # ObjectRef of the latest AdapterUpdate
        self.last_parity: list[ParityResult] = []

    def sync(self, update: AdapterUpdate) -> dict[str, float]:
        """One `ray.put`, its ref to every actor; parity checked there; the worst one logged."""
        import ray

        ref = ray.put(update)
        results: list[ParityResult] = _call_all(
            [lambda a=a: a.sync.remote(ref) for a in self.actors], f"weight sync v{update.version}"
        )
        self.latest, self.version = ref, update.version
        self.last_parity = results
        return parity_metrics(results)

    def rollout(self, prompts: Sequence[dict], step: int) -> Rollout:
        """The prompts split across the actors; their rollouts concatenated in order."""

        latest = [self.latest] if self.latest is not None else []
        chunks = split_evenly(len(prompts), len(self.actors))
        calls = [
            lambda a=a, s=s, e=e: a.rollout.remote(list(prompts[s:e]), step, self.version, latest)
            for a, (s, e) in zip(self.actors, chunks, strict=False)
        ]
        parts = _call_all(calls, f"rollout of step {step}")
        return rollout_to(concat_rollouts(parts, self.pad_id), self.device)

    def close(self) -> None:
        """Kill the actors (and the Ray instance this backend started)."""
        import ray

        if not ray.is_initialized():
            return
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
        if self.started_ray:
            ray.shutdown()


def build_backend(
    recipe: Recipe, engine: GenerationEngine, rank: int = 0, device: torch.device | str = "cpu"
) -> RolloutBackend:
    """The backend `recipe.method.rollout.placement` names (ray: a LoRA policy only)."""
    if recipe.method.rollout.placement == "ray":
        if recipe.peft.mode != "lora":
            raise WeightSyncError(
                f"method.rollout.placement: ray needs peft.mode lora (got {recipe.peft.mode!r}): "
                "only the LoRA adapter travels to the rollout actors"
            )
        return RayBackend(recipe, engine, rank, device)
    return LocalBackend(engine)
