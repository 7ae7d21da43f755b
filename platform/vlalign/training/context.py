"""What a training process is told about where it runs, and what it gives back.

The loop never reads environment variables for its settings: a launcher (local `--nproc`,
Ray Train, a test) fills a TrainContext. The process group must already exist, or the loop
creates a one-process group itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from vlalign.config.schema import Recipe

ReportFn = Callable[[dict, Path | None], None]


class RunTracker(Protocol):
    """What the loop logs a run to (rank 0). The tracking layer's RunLogger is one."""

    def start(self, recipe: Recipe | None = None, resume_run_id: str | None = None) -> str | None:
        """Start, or resume given the run id a checkpoint holds; returns the run id."""

    def log_dataset(self, location: str, manifest: Any = None) -> str | None:
        """The training shard set as the run's input."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Per-step scalars."""

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """A file (a report figure) under the run's artifacts."""

    def fail(self, error: BaseException) -> None:
        """End the run FAILED, recording the error."""

    def finish(self) -> None:
        """End the run FINISHED."""


# (recipe, rank) -> the run tracker of the main rank; picklable (launchers send it to workers).
TrackerFactory = Callable[[Recipe, int], RunTracker]


class Scorer(Protocol):
    """The in-loop safety scorecard (`train.eval_every`). The evaluation layer's
    `vlalign.evaluation.inloop.InLoopScorer` is one."""

    def __call__(
        self, model: torch.nn.Module, encoder: Any, rank: int = 0, world: int = 1, step: int = 0
    ) -> dict[str, float]:
        """Collective (every rank calls it with its in-memory policy, a PeftModel or the model
        itself, the run's ChatEncoder and the optimizer step reached); returns the same
        scorecard metrics on every rank."""


# (recipe, eval shard location) -> a Scorer, built on every rank; picklable.
ScorerFactory = Callable[[Recipe, str], Scorer]


@dataclass
class TrainContext:
    """Rank, device and launcher hooks of one training process.

    `report(metrics, checkpoint_dir)` is called by EVERY rank after each checkpoint is complete
    (Ray merges the ranks' files); `restore_from` is a checkpoint directory to resume from.
    `stop_after` (tests only) ends the loop early after that many optimizer steps, as a kill would.
    `batches` replaces the webdataset shard reader (e.g. a Ray Data shard per worker).
    `tracker` makes the MLflow run the main rank logs to when the recipe's tracking is enabled
    (`vlalign.tracking.run_logger.RunLogger`, passed by the layers above training).
    `scorer` makes the in-loop scorecard when the recipe sets `train.eval_every`
    (`vlalign.evaluation.inloop.InLoopScorer`, passed the same way).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    restore_from: Path | None = None
    report: ReportFn | None = None
    stop_after: int | None = None
    on_step: Callable[[int, dict], None] | None = None
    # Batch source with the signature of `vlalign.training.data.batch_stream` (yields
    # (batch, position)); None streams webdataset shards. Ray's `data.reader: ray_data` sets it.
    batches: Callable | None = None
    # Inside a Ray worker: the progress bar is Ray's (drawn by the driver), not a local tqdm.
    ray_progress: bool = False
    tracker: TrackerFactory | None = None
    scorer: ScorerFactory | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainResult:
    """What a run produced: per-step losses (rank 0 sees the global mean), paths, run id."""

    losses: list[float]
    metrics: list[dict]
    output_dir: Path
    export_dir: Path | None
    checkpoint_dir: Path | None
    run_id: str | None = None
    resumed_from_step: int = 0
    # With in-loop scorecards: which step's weights were exported and why ("step 40: latest
    # passing the gates"), and why the run ended early (train.early_stop), if it did.
    export_choice: str | None = None
    stopped_early: str | None = None
