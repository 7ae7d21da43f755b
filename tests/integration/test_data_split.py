"""Training streams with real DataLoader worker processes: 2 ranks x 2 workers see every sample
exactly once per epoch, and a restart from `position` continues with exactly the same batches."""

from __future__ import annotations

import pytest
from data_support import encoder_for

from data_pipeline.reader import TrainLoader
from data_pipeline.synth import synthesize
from vlalign.errors import DataError


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    synthesize(root / "many", pairs=90, seed=4, eval_pairs=2, shard_samples=13)  # 7 shards
    synthesize(root / "one", pairs=42, seed=4, eval_pairs=2)  # 1 shard: split by sample
    return root


@pytest.fixture(scope="module")
def enc(model_cache):
    return encoder_for("tiny-llava", model_cache)


def _loader(location, enc, **kw) -> TrainLoader:
    args = dict(kind="preference", encoder=enc, batch_size=4, world_size=2, num_workers=2, seed=3)
    return TrainLoader(str(location), "train", **{**args, **kw})


@pytest.mark.parametrize("name,total", [("many", 90), ("one", 42)])
def test_two_ranks_two_workers_see_each_sample_once(shards, enc, name, total):
    keys = []
    for rank in (0, 1):
        loader = _loader(shards / name, enc, rank=rank, loop=False)
        for batch in loader:
            keys += batch["keys"]
            assert batch["chosen_input_ids"].shape[0] == len(batch["keys"]) <= 4
        assert loader.skips.count == 0
    assert len(keys) == total and len(set(keys)) == total


@pytest.mark.parametrize("loop", [False, True])
def test_resume_from_position_gives_the_same_batches(shards, enc, loop):
    n = 30 if loop else None  # looping runs past the epoch (90 samples / 2 ranks / 4 = ~12)
    full = []
    for i, batch in enumerate(_loader(shards / "many", enc, rank=1, loop=loop)):
        full.append(batch["keys"])
        if n is not None and i + 1 == n:
            break
    for k in (1, 5, len(full) - 2):  # restarts at odd and even points, after a worker ran dry
        loader = _loader(shards / "many", enc, rank=1, loop=loop, start_sample=4 * k)
        rest = []
        for batch in loader:
            rest.append(batch["keys"])
            if len(rest) == len(full) - k:
                break
        assert rest == full[k:], f"restart after {k} batches"
        assert loader.position == 4 * len(full)
    with pytest.raises(DataError, match="multiple of the batch size"):
        _loader(shards / "many", enc, rank=1, start_sample=6)
