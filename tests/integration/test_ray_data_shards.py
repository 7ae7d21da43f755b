"""`data.reader: ray_data` worker side: each of two dataset splits (what Ray Train hands its
workers) yields its own half of the samples as training batches, loops epochs, and skips to a
resume position. Runs on a local Ray cluster started by the test (~15 s)."""

from __future__ import annotations

import hashlib
import threading

import pytest

from vlalign.config.loading import load_recipe
from vlalign.models import build
from vlalign.models.inputs import ChatEncoder
from vlalign.orchestration.ray_data import record_kind, shard_batches, train_dataset

PAIRS = 64
BATCH = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory, model_cache):
    import ray

    from data_pipeline.synth import synthesize

    out = tmp_path_factory.mktemp("ray-data-shards")
    synthesize(out, pairs=PAIRS, seed=3, shard_samples=16)
    recipe = load_recipe("tiny/dpo", [f"data.train={out}", f"model.cache_dir={model_cache}"])
    built = build(recipe.model)
    encoder = ChatEncoder(built.processor, built.family, recipe.data.max_length)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield recipe, str(out), encoder
    if started:
        ray.shutdown()


def _row_hashes(batch: dict) -> list[str]:
    """One hash per pair: its image and chosen tokens (the synthetic images are all distinct)."""
    px, ids, mask = batch["pixel_values"], batch["chosen_input_ids"], batch["chosen_attention_mask"]
    return [  # tokens without padding: padding depends on the other rows of the batch
        hashlib.sha1(px[i].numpy().tobytes() + ids[i][mask[i].bool()].numpy().tobytes()).hexdigest()
        for i in range(px.shape[0])
    ]


def _consume(shard, encoder, kind, n_batches, start, out, slot):
    got = []
    stream = shard_batches(
        shard,
        record_kind=kind,
        kind="preference",
        encoder=encoder,
        batch_size=BATCH,
        start_position=start,
    )
    for _ in range(n_batches):
        got.append(next(stream))
    out[slot] = got


def _run_splits(ds, encoder, kind, n_batches, start=0):
    splits = ds.streaming_split(2, equal=True)
    out: dict[int, list] = {}
    threads = [
        threading.Thread(target=_consume, args=(s, encoder, kind, n_batches, start, out, i))
        for i, s in enumerate(splits)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert set(out) == {0, 1}, "a split consumer did not finish"
    return out


def test_two_splits_share_an_epoch_without_duplicates(setup):
    recipe, location, encoder = setup
    kind = record_kind(location, recipe.data.train_split)
    assert kind == "preference"
    ds = train_dataset(recipe, location)
    per_epoch = PAIRS // 2 // BATCH  # batches of one worker in one epoch
    out = _run_splits(ds, encoder, kind, per_epoch + 1)  # one batch into the second epoch
    first_epoch = {}
    for slot, got in out.items():
        positions = [p for _, p in got]
        assert positions == [BATCH * (i + 1) for i in range(per_epoch + 1)]
        rows = [h for batch, _ in got[:per_epoch] for h in _row_hashes(batch)]
        assert len(rows) == len(set(rows)) == PAIRS // 2
        first_epoch[slot] = set(rows)
    assert not first_epoch[0] & first_epoch[1]  # never duplicated across workers
    # Together the two workers saw exactly the shard set's samples (one pass over all of it).
    whole = shard_batches(
        ds.iterator(), record_kind=kind, kind="preference", encoder=encoder, batch_size=BATCH
    )
    everything = {h for _ in range(PAIRS // BATCH) for h in _row_hashes(next(whole)[0])}
    assert len(everything) == PAIRS
    assert first_epoch[0] | first_epoch[1] == everything
    # The next epoch starts over the same samples (which worker gets which may change: Ray
    # Data hands blocks to splits as they ask).
    for got in out.values():
        assert set(_row_hashes(got[per_epoch][0])) <= everything


def test_resume_position_skips_consumed_batches(setup):
    recipe, location, encoder = setup
    kind = record_kind(location, recipe.data.train_split)
    out = _run_splits(train_dataset(recipe, location), encoder, kind, 2, start=2 * BATCH)
    for got in out.values():
        assert [p for _, p in got] == [3 * BATCH, 4 * BATCH]
