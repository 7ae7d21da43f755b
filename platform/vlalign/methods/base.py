"""The Method protocol: what the training loop asks of a method, and what it gives one.

The loop never names a method. It builds the policy, hands a `Run` to `method.prepare` (which
returns the module the engine trains, and may build a frozen reference, a reference cache or a
reward head), wraps that module in the engine, calls `method.setup(engine)`, then for every
micro-batch of the method's `batch_kind`: `units(batch)`, `tokens(batch)`, `step(batch)`, and
at the end of each optimizer step `metrics(sums, count)`.

Online methods also turn a data batch (prompts) into the micro-batches they train on
(`expand`: rollout, rewards, advantages, policy epochs), act after each optimizer step
(`after_step`: weight sync to rollout workers, constraint multipliers) and keep state that a
checkpoint saves (`state_dict` / `load_state_dict`, JSON). Offline methods inherit the defaults
of `OfflineMethod`.

A method file reads top to bottom: the class with `prepare`, `setup`, `units`, `tokens`,
`step`, `metrics`, and a module-level `METHOD` naming the class (the catalog names the module).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from vlalign import catalog
from vlalign.catalog import BatchKind
from vlalign.config.schema import Recipe


@dataclass
class StepOutput:
    """One micro-batch's contribution.

    loss_sum: [] with grad, the SUM of per-unit losses (units: response tokens for SFT, pairs for
    DPO/reward, completions for KTO); the loop divides by the global count of units in the
    optimizer step, so micro-batching, accumulation and ranks all give the same gradient as one
    big batch. count: units in this micro-batch. sums: detached metric sums (the method's
    `metrics` turns them into means).
    """

    loss_sum: Tensor
    count: float
    sums: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    """What a method may use while preparing: the recipe, the policy and the run's services.

    model: the policy (PEFT-wrapped when LoRA), not yet in an engine. built: the loaded model's
    processor, family and source. encoder: the chat encoder the batches were made with.
    one_epoch(kind): one unshuffled pass over this rank's slice of the training split, as
    batches of `kind` (for precomputing per-sample values). digest: the training data's manifest
    digest (None for unversioned data). rank/world/device: where this process runs.
    """

    recipe: Recipe
    model: nn.Module
    built: Any  # vlalign.models.BuiltModel
    encoder: Any  # vlalign.models.inputs.ChatEncoder
    pad_id: int
    one_epoch: Callable[[str], Iterator[dict]]
    digest: str | None = None
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@runtime_checkable
class Method(Protocol):
    """A training method (see the module docstring for the order of calls)."""

    batch_kind: BatchKind

    def prepare(self, run: Run) -> nn.Module:
        """Build what the method needs besides the policy; return the module to train."""
        ...

    def setup(self, engine: nn.Module) -> None:
        """Receive the engine-wrapped module (its forward is the trained model's)."""
        ...

    def units(self, batch: dict) -> float:
        """Loss units in a micro-batch (the loop sums them over the step and all ranks)."""
        ...

    def tokens(self, batch: dict) -> int:
        """Tokens the model processes in a micro-batch, image tokens included (throughput)."""
        ...

    def step(self, batch: dict) -> StepOutput:
        """Forward one micro-batch: the SUM of its unit losses, its unit count, metric sums."""
        ...

    def metrics(self, sums: dict[str, float], count: float) -> dict[str, float]:
        """Step metrics from the step's metric sums (all-reduced) and its global unit count."""
        ...

    def expand(self, batch: dict) -> list[dict]:
        """The micro-batches one data batch trains as (offline: the batch itself)."""
        ...

    def after_step(self, step: int) -> dict[str, float]:
        """Called on every rank after optimizer step `step`; returns extra step metrics."""
        ...

    def state_dict(self) -> dict:
        """The method's own state for a checkpoint (JSON-serializable)."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
        ...


class OfflineMethod:
    """Defaults of a method that trains on its data batches as they come and keeps no state."""

    def expand(self, batch: dict) -> list[dict]:
        return [batch]

    def after_step(self, step: int) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


def load_method(cfg: Any) -> Method:
    """The method a recipe's `method` section names, built from that section.

    The catalog names each method's module; the module's `METHOD` is the class."""
    info = catalog.METHODS[cfg.name]
    cls = importlib.import_module(info.module).METHOD
    method = cls(cfg)
    if method.batch_kind != info.batch_kind:
        raise TypeError(f"{info.module}: batch_kind {method.batch_kind!r} != catalog's")
    return method


def mean_sums(sums: dict[str, float], count: float) -> dict[str, float]:
    """Every metric sum divided by the unit count (the common `metrics`)."""
    return {k: v / max(count, 1.0) for k, v in sums.items()}


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen reference copy (made before the engine wraps the policy)."""
    import copy

    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
