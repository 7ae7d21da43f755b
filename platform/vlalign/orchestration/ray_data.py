"""`data.reader: ray_data`: the training split as a Ray Dataset, split across Ray Train workers.

Driver side, `train_dataset(recipe, location)` reads the shard set with
`ray.data.read_webdataset` (through `data_pipeline.ray_data`); TorchTrainer(datasets={"train":
ds}) hands each worker its own streaming split, so no sample reaches two workers in an epoch.
Worker side, `shard_batches(...)` turns `ray.train.get_dataset_shard("train")` into the same
collated batches the webdataset reader yields, epoch after epoch, with a running `position`
(samples consumed by this worker) for checkpoints.

Unlike the webdataset path, Ray Data does not promise the same order on a re-run: a run resumed
on this path skips `position` samples of its shard, but which samples those are may differ.
Use data.reader: webdataset where exact resume equivalence matters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vlalign.config.schema import Recipe
from vlalign.errors import DataError
from vlalign.training.data import PIPELINE_KIND

DATASET_NAME = "train"


def record_kind(location: str, split: str) -> str:
    """The record kind of a split (sft | preference), from its manifest."""
    from data_pipeline.reader import open_split

    return open_split(location, split).kind


def train_dataset(recipe: Recipe, location: str):
    """The training split of `location` as a Ray Dataset of raw samples (driver side)."""
    from data_pipeline.ray_data import read_ray_dataset

    return read_ray_dataset(location, recipe.data.train_split, shuffle_seed=recipe.train.seed)


def shard_batches(
    shard: Any,
    *,
    record_kind: str,
    kind: str,
    encoder: Any,
    batch_size: int,
    on_error: str = "raise",
    start_position: int = 0,
) -> Iterator[tuple[dict, int]]:
    """Endless (batch, position) pairs from a worker's dataset shard (a Ray DataIterator).

    Each pass over the shard is one epoch of this worker's share. `position` counts the
    samples this worker consumed, as on the webdataset path; batches before `start_position`
    are read and dropped (resume).
    """
    from data_pipeline.ray_data import iter_ray_batches

    position = 0
    while True:
        produced = False
        for batch in iter_ray_batches(
            shard,
            record_kind=record_kind,
            kind=kind,
            encoder=encoder,
            batch_size=batch_size,
            on_error=on_error,
        ):
            produced = True
            position += batch_size
            if position <= start_position:
                continue
            yield batch, position
        if not produced:
            raise DataError("this worker's Ray Data shard is empty: fewer samples than workers")


def worker_batches(
    recipe: Recipe,
    encoder: Any,
    data: Any,
    kind: str,
    rank: int,
    world: int,
    start_position: int = 0,
) -> Iterator[tuple[dict, int]]:
    """Batch source of a Ray Train worker, with the signature of the loop's shard reader
    (`vlalign.training.data.batch_stream`): this worker's split of the "train" dataset.
    `kind` is the method's batch kind (sft | pairs | unpaired); rank and world are Ray's own split, unused here."""
    import ray.train

    shard = ray.train.get_dataset_shard(DATASET_NAME)
    if shard is None:
        raise DataError("data.reader: ray_data, but the trainer was given no 'train' dataset")
    return shard_batches(
        shard,
        record_kind=record_kind(data.train_location, recipe.data.train_split),
        kind=PIPELINE_KIND[kind],
        encoder=encoder,
        batch_size=recipe.train.micro_batch_size,
        on_error=recipe.data.on_error,
        start_position=start_position,
    )
