"""The Ray Train shell's pure parts: which cluster, how big, where checkpoints go, the trainer.

Runs with Ray installed but no cluster started (TorchTrainer is only constructed).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vlalign.config.loading import load_recipe
from vlalign.errors import VlalignError
from vlalign.orchestration import cluster, ray_train


def _recipe(*overrides: str):
    return load_recipe("tiny/dpo", list(overrides))


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:6379", True),
        ("localhost:6379", True),
        ("ray://127.0.0.1:10001", True),
        ("127.0.1.1:6379", True),
        ("10.0.0.5:6379", False),
        ("head.example.com:6379", False),
        ("auto", False),
    ],
)
def test_is_loopback(address, loopback):
    assert cluster.is_loopback(address) is loopback


def test_address_order_argument_env_recipe(monkeypatch):
    recipe = _recipe("resources.address=10.0.0.9:6379")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster.resolve_address(None, _recipe()) is None  # -> a local cluster
    assert cluster.resolve_address(None, recipe) == "10.0.0.9:6379"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:7000")  # set by Ray inside a job
    assert cluster.resolve_address(None, recipe) == "127.0.0.1:7000"
    assert cluster.resolve_address("10.1.1.1:6379", recipe) == "10.1.1.1:6379"


def test_local_cluster_leaves_cpus_for_ray_data(monkeypatch):
    monkeypatch.setattr(cluster.os, "cpu_count", lambda: 2)
    two = _recipe("resources.num_workers=2", "resources.cpus_per_worker=1")
    assert cluster.local_cpus(two) == 4  # 2 workers x 1 CPU + 2 free for read tasks
    big = _recipe("resources.num_workers=4", "resources.cpus_per_worker=1.5")
    assert cluster.local_cpus(big) == 8
    monkeypatch.setattr(cluster.os, "cpu_count", lambda: 32)
    assert cluster.local_cpus(two) == 32


def test_storage_defaults_to_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = _recipe("train.output_dir=runs/{name}")
    assert ray_train.storage_path(r) == str(tmp_path / "runs" / "tiny-dpo")  # absolute
    assert ray_train.run_name(r) == "ray"
    shared = _recipe("resources.storage_path=s3://bucket/vlalign")
    assert ray_train.storage_path(shared) == "s3://bucket/vlalign"
    assert ray_train.run_name(shared) == "tiny-dpo"


def test_trainer_from_recipe_resources(tmp_path, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    r = _recipe(
        f"train.output_dir={tmp_path}/run",
        "resources.num_workers=3",
        "resources.cpus_per_worker=2",
        "resources.gpus_per_worker=1",
        "resources.max_failures=2",
    )
    trainer = ray_train.build_trainer(r, worker_env={"EXTRA": "1"})
    sc = trainer.scaling_config
    assert sc.num_workers == 3 and sc.use_gpu
    assert sc.resources_per_worker == {"CPU": 2.0, "GPU": 1.0}
    rc = trainer.run_config
    assert rc.failure_config.max_failures == 2
    assert rc.storage_path == str(tmp_path / "run") and rc.name == "ray"
    env = rc.worker_runtime_env["env_vars"]
    assert env["DS_ACCELERATOR"] == "cpu" and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["EXTRA"] == "1"
    assert trainer.train_loop_config["recipe"]["name"] == "tiny-dpo"
    cpu = ray_train.build_trainer(_recipe(f"train.output_dir={tmp_path}/cpu"))
    assert not cpu.scaling_config.use_gpu
    assert cpu.scaling_config.resources_per_worker == {"CPU": 1.0}


def test_result_needs_a_checkpoint():
    class NoCheckpoint:
        checkpoint = None
        metrics = None

    with pytest.raises(VlalignError, match="without a checkpoint"):
        ray_train._result_from(NoCheckpoint(), _recipe())


def test_trainer_state_missing_is_an_error(tmp_path: Path):
    with pytest.raises(VlalignError, match="no trainer_state.json"):
        ray_train._trainer_state(tmp_path)


def test_result_rebuilt_from_the_persisted_checkpoint(tmp_path: Path):
    import json

    from ray.train import Checkpoint

    state = {"step": 3, "losses": [3.0, 2.5, 2.25], "metrics": [{}, {}, {}], "run_id": "abc"}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))

    class Fit:
        checkpoint = Checkpoint.from_directory(str(tmp_path))
        metrics = {"step": 3, "resumed_from_step": 2}

    r = _recipe(f"train.output_dir={tmp_path}/out", "train.max_steps=3")
    result = ray_train._result_from(Fit(), r)
    assert result.losses == [3.0, 2.5, 2.25] and result.run_id == "abc"
    assert result.resumed_from_step == 2
    assert result.checkpoint_dir == tmp_path
    assert result.export_dir is None  # nothing exported under the output dir


def test_local_cluster_counts_rollout_actors(monkeypatch):
    """placement ray: 2 ranks x 2 actors x 1.5 CPUs = 6 more logical CPUs (2 + 2 + 6 = 10)."""
    monkeypatch.setattr(cluster.os, "cpu_count", lambda: 2)
    r = load_recipe(
        "tiny/grpo",
        [
            "resources.num_workers=2",
            "resources.cpus_per_worker=1",
            "method.rollout.placement=ray",
            "method.rollout.num_workers=2",
            "method.rollout.cpus_per_worker=1.5",
        ],
    )
    assert cluster.local_cpus(r) == 10
