"""Reading shard sets: `iter_samples` (one process) and `TrainLoader` (training, streaming).

Locations are shard-set directories or URL prefixes (http(s)://, s3://, file://); the
manifest lists the shards. Shards stream through webdataset's tar reader and are checked
against the manifest's sha256 and sample counts as they are read.

Assignment (exact: in one epoch every sample goes to exactly one consumer). A consumer is one
DataLoader worker of one rank: consumer c = rank * W + worker of C = world_size * W. Each epoch
the shard list is permuted by (seed, epoch); with at least C shards, consumer c reads shards
c, c + C, ... of that order; with fewer, every consumer reads all shards and keeps the samples
whose index in the epoch (shard offsets from the manifest) is c modulo C. Inside a consumer, a
shuffle buffer seeded by (seed, epoch, c, C) mixes samples. Settings come as arguments: rank
and world size are never read from the environment.

`TrainLoader` contract (training):
    loader = TrainLoader(location, split, kind="preference", encoder=ChatEncoder(...),
                         batch_size=B, rank=r, world_size=R, num_workers=W, seed=s,
                         start_sample=p, loop=True, on_error="skip")
    for batch in loader:   # collate_pairs / collate_sft dicts (data_pipeline.collate), plus
        ...                # "n_skipped" (bad samples dropped since the previous batch), "epoch"
    loader.position        # samples consumed by this rank so far: store it in the checkpoint
    loader.skips           # SkipCounter: count + reasons (shard, key, why) of every skip
- Each worker cuts its sample stream into windows of B samples; a window becomes one batch
  (bad samples dropped and counted, so a batch may hold fewer than B examples; a window with
  no good sample is consumed without being yielded). The DataLoader takes windows from the
  workers in turn, so after k batches the rank has consumed exactly k windows = k * B samples:
  `position`. Resuming with `start_sample=position` skips those windows in every worker (raw
  tar reads, no decoding) and continues with exactly the batches an uninterrupted run would
  have produced next. `position` must be a multiple of B.
- `augment` (the recipe's `data.augment`): each decoded sample is augmented with draws seeded by
  (seed, epoch, key) (`data_pipeline.augment`), so resumed runs see the same images. Only this
  training stream augments; `iter_samples` (evaluation, stats, validation) never does.
- `loop=True` repeats epochs (epoch, epoch + 1, ...) without end, for step-based training;
  `loop=False` reads one epoch. Ranks may get different numbers of samples per epoch (whole
  shards go to one reader), so multi-rank training loops and stops at `train.max_steps`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipeline.augment import augment_sample
from data_pipeline.collate import COLLATE
from data_pipeline.decode import decode_sample
from data_pipeline.manifest import Manifest, load_manifest
from data_pipeline.shards import ShardError, iter_shard
from data_pipeline.skips import OnError, SkipCounter, check_policy, handle
from data_pipeline.sources import join
from data_pipeline.transforms import TRAIN_KINDS, make_batch_transform
from vlalign.config.schema import AugmentConfig
from vlalign.errors import DataError


@dataclass(frozen=True)
class ShardRef:
    """A shard to read: its URL, name, manifest sample count and sha256."""

    url: str
    name: str
    samples: int
    sha256: str


@dataclass(frozen=True)
class SplitRef:
    """A split of a shard set, resolved from its manifest."""

    location: str
    split: str
    kind: str
    shards: tuple[ShardRef, ...]
    manifest: Manifest

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)


def open_split(location: str, split: str | None = None, kind: str | None = None) -> SplitRef:
    """Resolve a split from the manifest; `kind`, when given, must match the split's kind."""
    manifest = load_manifest(location)
    name, info = manifest.split(split, f"{location}/manifest.json")
    if kind is not None and kind != info.kind:
        raise DataError(f"{location}: split {name!r} holds {info.kind} records, not {kind}")
    shards = tuple(
        ShardRef(join(str(location), s.name), s.name, s.samples, s.sha256) for s in info.shards
    )
    return SplitRef(str(location), name, info.kind, shards, manifest)


# --- assignment ---------------------------------------------------------------------------


def epoch_order(shards: tuple[ShardRef, ...], seed: int, epoch: int, shuffle: bool) -> list:
    order = list(shards)
    if shuffle:
        random.Random(f"vlalign-shards-{seed}-{epoch}").shuffle(order)
    return order


def consumer_plan(
    shards: tuple[ShardRef, ...],
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    consumer: int,
    consumers: int,
) -> tuple[list[tuple[ShardRef, int]], bool]:
    """Shards consumer `consumer` reads this epoch, each with its epoch offset, and whether it
    keeps only the samples whose epoch index is `consumer` modulo `consumers`."""
    if not 0 <= consumer < consumers:
        raise DataError(f"consumer {consumer} out of range for {consumers} consumers")
    order = epoch_order(shards, seed, epoch, shuffle)
    offsets, off = [], 0
    for s in order:
        offsets.append(off)
        off += s.samples
    pairs = list(zip(order, offsets, strict=True))
    if len(order) >= consumers:
        return pairs[consumer::consumers], False
    return pairs, True


def consumer_epoch_size(
    shards: tuple[ShardRef, ...],
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    consumer: int,
    consumers: int,
) -> int:
    """Samples consumer `consumer` gets in one epoch (from the manifest's counts)."""
    plan, strided = consumer_plan(
        shards, seed=seed, epoch=epoch, shuffle=shuffle, consumer=consumer, consumers=consumers
    )
    if not strided:
        return sum(s.samples for s, _ in plan)
    total = sum(s.samples for s, _ in plan)
    return len(range(consumer, total, consumers))


def _raw_epoch(
    ref: SplitRef,
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    shuffle_buffer: int,
    consumer: int,
    consumers: int,
    on_error: OnError,
    skips: SkipCounter | None,
    verify: bool,
) -> Iterator[dict]:
    plan, strided = consumer_plan(
        ref.shards, seed=seed, epoch=epoch, shuffle=shuffle, consumer=consumer, consumers=consumers
    )

    def raw() -> Iterator[dict]:
        for shard, offset in plan:
            try:
                for i, sample in enumerate(
                    iter_shard(
                        shard.url,
                        shard.name,
                        sha256=shard.sha256,
                        samples=shard.samples,
                        verify=verify,
                    )
                ):
                    if strided and (offset + i) % consumers != consumer:
                        continue
                    sample["__epoch__"] = epoch
                    yield sample
            except ShardError as e:
                lost = e.lost
                if strided:
                    lost = len(
                        [
                            j
                            for j in range(shard.samples - e.lost, shard.samples)
                            if (offset + j) % consumers == consumer
                        ]
                    )
                handle(e, on_error, skips, max(1, lost))

    if shuffle and shuffle_buffer > 1:
        rng = random.Random(f"vlalign-samples-{seed}-{epoch}-{consumer}-{consumers}")
        return wds.shuffle(shuffle_buffer, initial=shuffle_buffer, rng=rng)(raw())
    return raw()


def consumer_stream(
    ref: SplitRef,
    *,
    seed: int = 0,
    epoch: int = 0,
    loop: bool = False,
    shuffle: bool = True,
    shuffle_buffer: int = 256,
    consumer: int = 0,
    consumers: int = 1,
    skip: int = 0,
    on_error: OnError = "raise",
    skips: SkipCounter | None = None,
    verify: bool = True,
) -> Iterator[dict]:
    """Raw samples of one consumer: epoch `epoch` (and the next ones with `loop`), after
    skipping the first `skip` samples (whole epochs by manifest counts, the rest by reading)."""
    e = epoch
    while True:
        size = consumer_epoch_size(
            ref.shards,
            seed=seed,
            epoch=e,
            shuffle=shuffle,
            consumer=consumer,
            consumers=consumers,
        )
        if loop and size == 0:
            raise DataError(
                f"{ref.location}: split {ref.split!r} has {ref.samples} samples: too few for "
                f"{consumers} readers (ranks x workers)"
            )
        if skip >= size:
            skip -= size
        else:
            yielded = 0
            for sample in _raw_epoch(
                ref,
                seed=seed,
                epoch=e,
                shuffle=shuffle,
                shuffle_buffer=shuffle_buffer,
                consumer=consumer,
                consumers=consumers,
                on_error=on_error,
                skips=skips,
                verify=verify,
            ):
                if skip:
                    skip -= 1
                    continue
                yielded += 1
                yield sample
            if loop and yielded == 0 and size > 0:
                raise DataError(f"{ref.location}: split {ref.split!r}: an epoch gave no sample")
        if not loop:
            return
        e += 1


# --- one process --------------------------------------------------------------------------


def iter_samples(
    location: str,
    split: str | None = None,
    *,
    kind: str | None = None,
    shuffle: bool = False,
    seed: int = 0,
    on_error: str = "raise",
    skips: SkipCounter | None = None,
    epoch: int = 0,
    shuffle_buffer: int = 1000,
    rank: int = 0,
    world_size: int = 1,
    images: bool = True,
) -> Iterator[dict]:
    """Every decoded sample of a split in one process (rank/world_size: that rank's share).

    Bad samples raise `DataError` naming shard and key, or with on_error="skip" are dropped,
    logged and counted in `skips`.
    """
    policy = check_policy(on_error)
    ref = open_split(location, split, kind)
    for raw in consumer_stream(
        ref,
        seed=seed,
        epoch=epoch,
        shuffle=shuffle,
        shuffle_buffer=shuffle_buffer,
        consumer=rank,
        consumers=world_size,
        on_error=policy,
        skips=skips,
    ):
        try:
            yield decode_sample(raw, ref.kind, images=images)
        except DataError as e:
            handle(e, policy, skips)


# --- training stream ----------------------------------------------------------------------


def windows_per_worker(consumed: int, n_workers: int, limits: list[float]) -> tuple[list[int], int]:
    """Windows each worker produced when a DataLoader handed out `consumed` of them, and the
    worker the next window comes from.

    The DataLoader takes one window from each worker in turn (0, 1, ..., W-1, 0, ...), passing
    over exhausted ones; `limits` is each worker's number of windows (inf when looping).
    """
    taken = [0] * n_workers
    if all(x == float("inf") for x in limits):
        for w in range(n_workers):
            taken[w] = (consumed - w + n_workers - 1) // n_workers if consumed > w else 0
        return taken, consumed % n_workers
    left, nxt = consumed, 0
    while left > 0 and any(taken[w] < limits[w] for w in range(n_workers)):
        for k in range(n_workers):
            w = (nxt + k) % n_workers
            if taken[w] < limits[w]:
                taken[w] += 1
                left -= 1
                nxt = (w + 1) % n_workers
                break
    return taken, nxt


class BatchStream(IterableDataset):
    """Collated batches of one rank, split over DataLoader workers (see the module docstring).

    Yields dicts: the collated batch (or only the counters when a whole window was bad), plus
    "n_skipped", "skip_reasons", "epoch" and "n_examples".
    """

    def __init__(
        self,
        location: str,
        split: str | None,
        *,
        kind: str,
        encoder,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        loop: bool = True,
        shuffle: bool = True,
        shuffle_buffer: int = 256,
        start_sample: int = 0,
        on_error: str = "raise",
        verify: bool = True,
        augment: AugmentConfig | None = None,
    ) -> None:
        super().__init__()
        if kind not in TRAIN_KINDS:
            raise DataError(f"training kind must be one of {TRAIN_KINDS}, got {kind!r}")
        if batch_size < 1:
            raise DataError("batch_size must be >= 1")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} out of range for world size {world_size}")
        if start_sample % batch_size:
            raise DataError(
                f"start_sample {start_sample} is not a multiple of the batch size {batch_size}"
            )
        self.ref = open_split(location, split)
        if kind in ("preference", "unpaired") and self.ref.kind == "sft":
            raise DataError(f"{location}: split {self.ref.split!r} holds sft records, not pairs")
        self.kind = kind
        self.encoder = encoder
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.epoch, self.loop = seed, epoch, loop
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.start_sample = start_sample
        self.on_error = check_policy(on_error)
        self.verify = verify
        self.augment = augment if augment is not None and augment.enabled else None

    def _assignment(self, worker: int, n_workers: int) -> tuple[int, int]:
        """(logical worker, raw samples to skip) of DataLoader worker `worker` on resume.

        A resumed DataLoader starts its round robin at worker 0, while the next window of the
        uninterrupted run comes from some worker w*: worker i plays logical worker
        (w* + i) mod W, which keeps the order of windows exactly.
        """
        consumed = self.start_sample // self.batch_size
        if self.loop:
            limits = [float("inf")] * n_workers
        else:
            limits = []
            for w in range(n_workers):
                size = consumer_epoch_size(
                    self.ref.shards,
                    seed=self.seed,
                    epoch=self.epoch,
                    shuffle=self.shuffle,
                    consumer=self.rank * n_workers + w,
                    consumers=self.world_size * n_workers,
                )
                limits.append(-(-size // self.batch_size))
        taken, nxt = windows_per_worker(consumed, n_workers, limits)
        logical = (nxt + worker) % n_workers
        return logical, taken[logical] * self.batch_size

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        skips = SkipCounter()
        transform = make_batch_transform(
            self.encoder, self.kind, on_error=self.on_error, skips=skips
        )
        pad_id = self.encoder.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = 0
        collate = partial(COLLATE[self.kind], pad_id=pad_id)
        logical, skip = self._assignment(worker, n_workers)
        raw_iter = consumer_stream(
            self.ref,
            seed=self.seed,
            epoch=self.epoch,
            loop=self.loop,
            shuffle=self.shuffle,
            shuffle_buffer=self.shuffle_buffer,
            consumer=self.rank * n_workers + logical,
            consumers=self.world_size * n_workers,
            skip=skip,
            on_error=self.on_error,
            skips=skips,
            verify=self.verify,
        )
        window: list[dict] = []
        for raw in raw_iter:
            window.append(raw)
            if len(window) == self.batch_size:
                yield self._batch(window, transform, collate, skips)
                window = []
        if window:
            yield self._batch(window, transform, collate, skips)

    def _batch(self, window: list[dict], transform: Callable, collate: Callable, skips) -> dict:
        samples = []
        for raw in window:
            try:
                sample = decode_sample(raw, self.ref.kind)
            except DataError as e:
                handle(e, self.on_error, skips)
                continue
            if self.augment is not None:
                sample = augment_sample(
                    sample, self.augment, seed=self.seed, epoch=raw["__epoch__"]
                )
            samples.append(sample)
        examples = transform(samples)
        batch = collate(examples) if examples else {"n_examples": 0}
        n, reasons = skips.take()
        batch.update(n_skipped=n, skip_reasons=reasons, epoch=max(r["__epoch__"] for r in window))
        return batch


def _identity(x):
    return x


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


class TrainLoader:
    """Batches for one training rank: BatchStream in a DataLoader with `num_workers` workers.

    See the module docstring for the contract (position, resume, skips, loop).
    """

    def __init__(
        self,
        location: str,
        split: str | None = None,
        *,
        kind: str,
        encoder,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        epoch: int = 0,
        loop: bool = True,
        shuffle: bool = True,
        shuffle_buffer: int = 256,
        start_sample: int = 0,
        on_error: str = "raise",
        verify: bool = True,
        augment: AugmentConfig | None = None,
    ) -> None:
        self.stream = BatchStream(
            location,
            split,
            kind=kind,
            encoder=encoder,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
            seed=seed,
            epoch=epoch,
            loop=loop,
            shuffle=shuffle,
            shuffle_buffer=shuffle_buffer,
            start_sample=start_sample,
            on_error=on_error,
            verify=verify,
            augment=augment,
        )
        self.num_workers = num_workers
        self.batch_size = batch_size
        self.position = start_sample
        self.skips = SkipCounter()

    @property
    def dataset_digest(self) -> str:
        return self.stream.ref.manifest.dataset_digest

    def __iter__(self) -> Iterator[dict]:
        self.stream.start_sample = self.position
        loader = DataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_identity,
            worker_init_fn=_worker_init if self.num_workers else None,
        )
        for batch in loader:
            self.position += self.batch_size
            self.skips.merge(batch["n_skipped"], batch.pop("skip_reasons"))
            if batch["n_examples"] == 0:
                continue
            yield batch
