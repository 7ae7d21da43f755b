"""The Ray Data path: shard sets through `ray.data.read_webdataset`, for the Ray orchestrator.

    ds = read_ray_dataset("data/synth", "train")          # rows: raw tar members (bytes)
    # in a Ray Train worker: ray.train.get_dataset_shard("train")
    for batch in iter_ray_batches(shard, kind="preference", encoder=enc, batch_size=16):
        ...                                               # the same dicts as TrainLoader yields

Rows keep the members as stored (`__key__`, `__url__`, `json`, `img0.png`, ...); decoding,
schema checks, encoding and collation happen in the consumer with the same code as the
webdataset path, under the same `on_error` policy (skips counted in `skips` and in each
batch's "n_skipped"). Batches are pulled as numpy (Ray's torch batches reject the string
columns). Reads local and s3:// shard sets (pyarrow filesystems).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial
from typing import Any

from data_pipeline.collate import COLLATE
from data_pipeline.decode import decode_sample
from data_pipeline.reader import open_split
from data_pipeline.skips import SkipCounter, check_policy, handle
from data_pipeline.transforms import make_batch_transform
from vlalign.errors import DataError


def read_ray_dataset(
    location: str,
    split: str | None = None,
    *,
    kind: str | None = None,
    shuffle_seed: int | None = None,
    override_num_blocks: int | None = None,
):
    """A `ray.data.Dataset` of the split's raw samples (one row per sample).

    Its `kind` is the split's record kind; pass it to `iter_ray_samples` / `iter_ray_batches`.
    """
    import ray.data
    from ray.data import FileShuffleConfig

    ref = open_split(location, split, kind)
    paths = [s.url for s in ref.shards]
    if any(p.startswith(("http://", "https://", "pipe:")) for p in paths):
        raise DataError(
            f"{location}: the Ray Data reader takes local or s3:// shard sets; stream "
            "http(s) ones with data.reader: webdataset"
        )
    paths = [p.removeprefix("file://") for p in paths]
    return ray.data.read_webdataset(
        paths,
        decoder=None,
        shuffle=FileShuffleConfig(seed=shuffle_seed) if shuffle_seed is not None else None,
        override_num_blocks=override_num_blocks,
    )


def _raw_rows(batch: dict[str, Any]) -> Iterator[dict]:
    """Numpy batch (column -> array) -> raw tar samples as the webdataset path sees them."""
    n = len(batch["__key__"])
    for i in range(n):
        raw: dict[str, Any] = {}
        for col, values in batch.items():
            v = values[i]
            if v is None or (isinstance(v, float) and v != v):  # absent member (NaN / None)
                continue
            if col == "__url__":
                raw["__shard__"] = os.path.basename(str(v))
            elif col == "__key__":
                raw["__key__"] = str(v)
            elif not col.startswith("__"):
                raw[col] = bytes(v)
        yield raw


def iter_ray_samples(
    data,
    kind: str,
    *,
    batch_size: int = 256,
    on_error: str = "raise",
    skips: SkipCounter | None = None,
    images: bool = True,
) -> Iterator[dict]:
    """Decoded samples from a Ray Dataset or DataIterator (e.g. a Ray Train dataset shard).

    `kind` is the record kind of the split (`read_ray_dataset(...)` reads one split).
    """
    policy = check_policy(on_error)
    for batch in data.iter_batches(batch_size=batch_size, batch_format="numpy"):
        for raw in _raw_rows(batch):
            try:
                yield decode_sample(raw, kind, images=images)
            except DataError as e:
                handle(e, policy, skips)


def iter_ray_batches(
    data,
    *,
    record_kind: str,
    kind: str,
    encoder,
    batch_size: int,
    on_error: str = "raise",
    skips: SkipCounter | None = None,
) -> Iterator[dict]:
    """Collated training batches (`data_pipeline.collate`) from a Ray Dataset or DataIterator.

    `record_kind` is the split's kind, `kind` the training kind (sft | preference). Each batch
    also has "n_skipped" (bad samples dropped since the previous batch).
    """
    policy = check_policy(on_error)
    local = SkipCounter()
    transform = make_batch_transform(encoder, kind, on_error=policy, skips=local)
    pad_id = encoder.tokenizer.pad_token_id or 0
    collate = partial(COLLATE[kind], pad_id=pad_id)
    for batch in data.iter_batches(batch_size=batch_size, batch_format="numpy"):
        samples = []
        for raw in _raw_rows(batch):
            try:
                samples.append(decode_sample(raw, record_kind))
            except DataError as e:
                handle(e, policy, local)
        examples = transform(samples)
        n, reasons = local.take()
        if skips is not None:
            skips.merge(n, reasons)
        if not examples:
            continue
        out = collate(examples)
        out["n_skipped"] = n
        yield out
