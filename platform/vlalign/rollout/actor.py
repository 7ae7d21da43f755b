"""The rollout actor of placement ray: a policy copy and its generation engine, in a Ray actor.

`RolloutWorker` is a plain class; `vlalign.rollout.backend.RayBackend` turns it into a Ray
actor (`ray.remote(...).options(max_restarts=..., max_task_retries=...)`). It builds the
recipe's model and applies the recipe's PEFT config with the trainer's seed, so its adapter has
the same names and shapes as the trainer's, then receives the trainer's adapter weights as
`vlalign.rollout.weights.AdapterUpdate`s.

Versions. The actor remembers the version of the weights it holds (-1: none yet). Every
`rollout` call carries the trainer's current version and the object ref of the latest update
(boxed in a list, so Ray does not fetch it on every call); an actor whose version differs (a
fresh restart after a crash) fetches and loads that update before generating, so a replaced
actor generates with the same weights and, samples being seeded by (seed, step, key, index),
the same samples.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from vlalign.config.schema import Recipe
from vlalign.rollout.engine import GenerationEngine, Rollout, SamplingSettings
from vlalign.rollout.weights import (
    PARITY_TOLERANCE,
    AdapterUpdate,
    ParityResult,
    WeightSyncError,
    apply_update,
    make_probe,
)


def rollout_to(ro: Rollout, device: torch.device | str) -> Rollout:
    """The rollout with every tensor (features and image tensors included) on ``device``."""

    def mv(x):
        if isinstance(x, torch.Tensor):
            return x.to(device)
        if isinstance(x, list | tuple):
            return type(x)(mv(v) for v in x)
        return x

    features = ro.features
    if features is not None:
        features = type(features)(**{k: mv(v) for k, v in features.items()})
    return Rollout(
        input_ids=ro.input_ids.to(device),
        attention_mask=ro.attention_mask.to(device),
        labels=ro.labels.to(device),
        response_mask=ro.response_mask.to(device),
        old_logps=None if ro.old_logps is None else ro.old_logps.to(device),
        prompt_index=ro.prompt_index.to(device),
        response_lengths=ro.response_lengths.to(device),
        truncated=ro.truncated.to(device),
        texts=list(ro.texts),
        n=ro.n,
        features=features,
        image_counts=list(ro.image_counts),
        prompt_images={k: v.to(device) for k, v in ro.prompt_images.items()},
        mm_token_type_ids=None if ro.mm_token_type_ids is None else ro.mm_token_type_ids.to(device),
    )


class RolloutWorker:
    """A policy copy (the recipe's model + LoRA) and a `GenerationEngine` on this actor's device.

    ``device``: "cuda" when the actor was given a GPU, else "cpu". ``threads``: torch intra-op
    threads (the actor's CPUs).
    """

    def __init__(
        self,
        recipe: Recipe,
        settings: SamplingSettings,
        device: str = "cpu",
        threads: int = 1,
        tolerance: float = PARITY_TOLERANCE,
    ) -> None:
        from vlalign.models import apply_peft, build

        torch.set_num_threads(max(1, threads))
        built = build(recipe.model, device=device)
        self.model = apply_peft(built.model, recipe.peft, seed=recipe.train.seed)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        self.engine = GenerationEngine(
            self.model,
            built.processor,
            built.family,
            settings,
            max_length=recipe.data.max_length,
        )
        self.probe = make_probe(built.processor, built.family, max_length=recipe.data.max_length)
        self.tolerance = tolerance
        self.version = -1

    def sync(self, update: AdapterUpdate) -> ParityResult:
        """Load the trainer's adapter and check parity on the probe (not strict: the caller
        raises, naming the actor)."""
        result = apply_update(self.model, update, self.probe, self.tolerance)
        self.version = update.version
        return result

    def rollout(self, prompts: Sequence[dict], step: int, version: int, latest: list) -> Rollout:
        """n samples per prompt (on CPU, to travel back), after loading the latest weights if
        this actor's version is not ``version``. ``latest``: [ObjectRef of an AdapterUpdate]
        (or [] before the first sync)."""
        if version != self.version and latest:
            import ray

            result = self.sync(ray.get(latest[0]))
            if not result.ok:
                raise WeightSyncError(
                    f"rollout actor reloading weights v{version}: its log-probs of the probe "
                    f"differ from the trainer's by {result.max_abs_diff:.3g} > "
                    f"method.rollout.parity_tolerance {result.tolerance:.3g}"
                )
        return rollout_to(self.engine.rollout(prompts, step), "cpu")

    def state(self) -> tuple[int, int]:
        """(process id, weights version): tests see a restart as a new pid and version -1."""
        return os.getpid(), self.version
