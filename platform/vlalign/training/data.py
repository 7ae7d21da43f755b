"""Where training batches come from: the recipe's shards (or synthesized ones), per rank.

A thin bridge to `data_pipeline.reader.TrainLoader`: rank/world/seed/position are passed
explicitly; the loader's `position` (samples consumed by this rank) goes into checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlalign.config.schema import Recipe
from vlalign.errors import VlalignError
from vlalign.training.distributed import barrier


@dataclass
class DataInfo:
    """The training data of a run: location, manifest (as a dict) and its dataset digest."""

    train_location: str
    eval_location: str | None
    manifest: dict
    digest: str | None


def synth_location(recipe: Recipe) -> Path:
    """Where `vlalign run` synthesizes data when `data.train` is null."""
    d = recipe.data
    return Path(recipe.output_dir) / "data" / f"synth-{d.synth_pairs}-seed{d.synth_seed}"


def prepare_data(recipe: Recipe, ctx) -> DataInfo:
    """Resolve (and if needed synthesize, once, on rank 0) the training shards."""
    from data_pipeline.manifest import load_manifest

    location = recipe.data.train
    eval_location = recipe.data.eval or recipe.eval.data
    if location is None:
        out = synth_location(recipe)
        if ctx.rank == 0 and not (out / "manifest.json").is_file():
            from data_pipeline.synth import synthesize

            image_size = recipe.model.image_size or 32
            synthesize(
                out,
                pairs=recipe.data.synth_pairs,
                seed=recipe.data.synth_seed,
                image_size=image_size,
            )
        barrier()
        location = str(out)
        eval_location = eval_location or str(out)
    try:
        manifest = load_manifest(location)
    except FileNotFoundError:
        raise VlalignError(f"data.train: no manifest.json at {location}") from None
    return DataInfo(
        train_location=str(location),
        eval_location=eval_location,
        manifest=manifest.model_dump(mode="json"),
        digest=manifest.dataset_digest or None,
    )


PIPELINE_KIND = {"sft": "sft", "pairs": "preference", "unpaired": "unpaired", "prompts": "prompts"}
"""A method's batch kind -> the data pipeline's training kind (which collate builds it)."""


def _loader(recipe: Recipe, encoder, data: DataInfo, kind: str, rank: int, world: int, **kw):
    """This rank's TrainLoader over the recipe's training split (kw: loop/shuffle/position...)."""
    from data_pipeline.reader import TrainLoader

    return TrainLoader(
        data.train_location,
        recipe.data.train_split,
        kind=kind,
        encoder=encoder,
        batch_size=recipe.train.micro_batch_size,
        rank=rank,
        world_size=world,
        seed=recipe.train.seed,
        on_error=recipe.data.on_error,
        **kw,
    )


def batch_stream(
    recipe: Recipe,
    encoder,
    data: DataInfo,
    kind: str,
    rank: int,
    world: int,
    start_position: int = 0,
) -> Iterator[tuple[dict, int]]:
    """Endless (batch, position) pairs for this rank; resumes at `start_position` samples."""
    d = recipe.data
    loader = _loader(
        recipe,
        encoder,
        data,
        PIPELINE_KIND[kind],
        rank,
        world,
        num_workers=d.num_workers,
        loop=True,
        shuffle=d.shuffle_buffer > 0,
        shuffle_buffer=max(d.shuffle_buffer, 1),
        start_sample=start_position,
        augment=d.augment,
    )
    for batch in loader:
        yield batch, loader.position


def epoch_batches(
    recipe: Recipe, encoder, data: DataInfo, kind: str, rank: int, world: int
) -> Iterator[dict]:
    """One unshuffled epoch of this rank's slice as batches of `kind` (reference precompute;
    never augmented: `config.checks` refuses data.augment with a precomputed reference)."""
    yield from _loader(
        recipe,
        encoder,
        data,
        PIPELINE_KIND[kind],
        rank,
        world,
        num_workers=0,
        loop=False,
        shuffle=False,
    )
