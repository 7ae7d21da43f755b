"""The Ray Data path (`ray.data.read_webdataset`) on a local Ray cluster started by the test."""

from __future__ import annotations

import pytest
import torch
from data_support import encoder_for

from data_pipeline.ray_data import iter_ray_batches, iter_ray_samples, read_ray_dataset
from data_pipeline.reader import iter_samples
from data_pipeline.skips import SkipCounter
from data_pipeline.synth import synthesize


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_data_reads_what_webdataset_reads(ray_local, tmp_path, model_cache):
    out = tmp_path / "ds"
    synthesize(out, pairs=24, seed=2, eval_pairs=4, shard_samples=10)
    expected = {s["key"]: s for s in iter_samples(str(out), "train")}
    ds = read_ray_dataset(str(out), "train")
    got = {s["key"]: s for s in iter_ray_samples(ds, "preference", batch_size=7)}
    assert got.keys() == expected.keys()
    for k, s in got.items():
        e = expected[k]
        assert (s["shard"], s["prompt"], s["chosen"], s["meta"]) == (
            e["shard"],
            e["prompt"],
            e["chosen"],
            e["meta"],
        )
        assert s["images"][0].tobytes() == e["images"][0].tobytes()
    enc = encoder_for("tiny-llava", model_cache)
    skips = SkipCounter()
    batches = list(
        iter_ray_batches(
            ds, record_kind="preference", kind="preference", encoder=enc, batch_size=8, skips=skips
        )
    )
    assert sum(b["n_examples"] for b in batches) == 24 and skips.count == 0
    assert batches[0]["pixel_values"].shape == (8, 3, 32, 32)
    assert batches[0]["chosen_input_ids"].dtype == torch.long
