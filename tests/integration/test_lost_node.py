"""Lost-node drill on a real multi-node Ray cluster on this machine.

A head node and a worker node are separate Ray nodes (`ray.cluster_utils.Cluster`, loopback),
each with one CPU, so the two training workers (one CPU each) run on different nodes.
Checkpoints go to storage both nodes share (`resources.storage_path`). At step 3, after the
step-2 checkpoint was reported, both workers pause and the test removes the worker node (its
raylet and every process on it die at once: a lost machine) and adds a replacement node. Ray
Train restarts the worker group (FailureConfig(max_failures=1)) on the head and the
replacement, from the checkpoint in shared storage, and the run's losses equal those of an
uninterrupted run on the same cluster.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from vlalign.config.loading import load_recipe

pytestmark = pytest.mark.slow

MAX_STEPS = 5
CHECKPOINT_EVERY = 2
PAUSE_AT_STEP = 3


class PauseForNodeLoss:
    """on_step hook: record each worker's node, and on the first attempt pause every worker at
    `step` (after writing a marker) so the test can remove a node under a known state."""

    def __init__(self, step: int, out: Path) -> None:
        self.step = step
        self.out = out

    def __call__(self, step: int, metrics: dict) -> None:
        import ray
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        node = ray.get_runtime_context().get_node_id()
        attempt = "after" if (self.out / "paused").exists() else "before"
        (self.out / f"node-{attempt}-rank{rank}-step{step}").write_text(node)
        if step == self.step and attempt == "before":
            (self.out / f"paused-rank{rank}").write_text(node)
            if rank == 0:
                time.sleep(1.0)
                (self.out / "paused").write_text("")
            time.sleep(120.0)  # the worker on the lost node dies here; rank 0 fails with it


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    from data_pipeline.synth import synthesize

    out = tmp_path_factory.mktemp("node-shards")
    synthesize(out, pairs=48, seed=0)
    return str(out)


def _recipe(shards: str, model_cache: str, out: Path, storage: Path):
    return load_recipe(
        "tiny/dpo",
        [
            f"data.train={shards}",
            f"model.cache_dir={model_cache}",
            f"train.output_dir={out}",
            f"resources.storage_path={storage}",
            f"train.max_steps={MAX_STEPS}",
            f"train.checkpoint_every={CHECKPOINT_EVERY}",
            "train.micro_batch_size=4",
            "train.warmup_steps=2",
            "train.max_grad_norm=0.0",
            "engine.precision=fp32",
            "engine.zero_stage=2",
            "tracking.enabled=false",
            "resources.num_workers=2",
            "resources.cpus_per_worker=1",
            "resources.max_failures=1",
        ],
    )


@pytest.fixture(scope="module")
def cluster():
    from vlalign.orchestration.cluster import use_local_only_mode

    use_local_only_mode()  # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: every node on 127.0.0.1
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 1})
    node = c.add_node(num_cpus=1, resources={"worker_node": 1})
    c.wait_for_nodes()
    try:
        yield c, node
    finally:
        ray.shutdown()
        c.shutdown()


def _nodes(out: Path, attempt: str, step: int) -> dict[int, str]:
    """rank -> Ray node id of each worker at `step` of an attempt ("before" / "after")."""
    return {
        int(p.name.split("rank")[1].split("-")[0]): p.read_text()
        for p in out.glob(f"node-{attempt}-rank*-step{step}")
    }


def test_lost_worker_node_resumes_from_shared_checkpoint(cluster, shards, model_cache, tmp_path):
    import ray.cloudpickle

    from vlalign.orchestration.ray_train import run_on_ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    c, worker_node = cluster
    storage = tmp_path / "shared-storage"
    plain = run_on_ray(_recipe(shards, model_cache, tmp_path / "plain", storage / "plain"))
    assert len(plain.losses) == MAX_STEPS

    marks = tmp_path / "marks"
    marks.mkdir()
    recipe = _recipe(shards, model_cache, tmp_path / "drill", storage / "drill")
    box: dict = {}

    def fit() -> None:
        try:
            box["result"] = run_on_ray(recipe, on_step=PauseForNodeLoss(PAUSE_AT_STEP, marks))
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=fit, daemon=True)
    t.start()
    deadline = time.monotonic() + 600
    while not (marks / "paused").exists():
        assert t.is_alive(), box.get("error")
        assert time.monotonic() < deadline, "the run never reached the pause"
        time.sleep(0.5)
    before = _nodes(marks, "before", 1)
    assert len(set(before.values())) == 2, before  # the two workers ran on two nodes
    assert worker_node.node_id in before.values()
    time.sleep(3.0)  # let Ray Train's controller collect the step-2 checkpoint report
    c.remove_node(worker_node, allow_graceful=False)  # the machine is gone
    c.add_node(num_cpus=1, resources={"worker_node": 1})  # and a replacement joins
    t.join(timeout=600)
    assert not t.is_alive(), "the run did not finish after the node loss"
    if "error" in box:
        raise box["error"]
    result = box["result"]

    after = _nodes(marks, "after", PAUSE_AT_STEP)  # the restart begins again at step 3
    assert worker_node.node_id not in after.values() and len(set(after.values())) == 2, after
    assert result.resumed_from_step == CHECKPOINT_EVERY  # from the shared-storage checkpoint
    assert Path(result.checkpoint_dir).is_relative_to(storage)
    assert len(result.losses) == MAX_STEPS
    assert result.losses == plain.losses  # bitwise: same batches, same arithmetic
    state = json.loads((Path(result.checkpoint_dir) / "trainer_state.json").read_text())
    assert state["step"] == MAX_STEPS and os.path.isdir(tmp_path / "drill" / "export")
