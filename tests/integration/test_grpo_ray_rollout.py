"""GRPO with `method.rollout.placement: ray` through the real loop on the tiny LLaVA: rollout
actors on a local Ray cluster generate what the trainer's own policy would (same losses as
placement local), the weights reach them through the object store with a parity check logged
every step, and a rollout actor killed mid-run is restarted by Ray, reloads the latest weights
and regenerates the same samples (same losses)."""

from __future__ import annotations

import pytest

from vlalign.config import Recipe
from vlalign.methods.grpo import Grpo
from vlalign.training.loop import run_training

pytestmark = pytest.mark.slow

STEPS = 3


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    from data_pipeline.synth import synthesize

    out = tmp_path_factory.mktemp("grpo-ray-shards")
    synthesize(out, pairs=16, seed=5)
    return str(out)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory, shards, model_cache):
    """One local cluster for the module (the orchestration's, with the dashboard: Ray Train's
    placement-group cleaner asks the state API whether its controller is alive)."""
    from vlalign.orchestration.cluster import ray_cluster

    r = recipe(tmp_path_factory.mktemp("unused"), shards, model_cache, "unused", RAY)
    with ray_cluster(None, r):
        yield


def recipe(tmp_path, shards, model_cache, name, rollout) -> Recipe:
    return Recipe.model_validate(
        {
            "name": name,
            "model": {"name": "tiny-llava", "cache_dir": model_cache},
            "peft": {"r": 4, "alpha": 8, "modules_to_save": ["lm_head", "norm"]},
            "data": {"train": shards, "max_length": 96, "shuffle_buffer": 16},
            "method": {
                "name": "grpo",
                "num_generations": 4,
                "max_new_tokens": 6,
                "kl_coef": 0.05,
                "rollout": rollout,
            },
            "train": {
                "max_steps": STEPS,
                "micro_batch_size": 2,
                "lr": 1e-2,
                "schedule": "constant",
                "output_dir": str(tmp_path / name),
                "export": "none",
            },
            "tracking": {"enabled": False},
        }
    )


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, shards, model_cache):
    tmp = tmp_path_factory.mktemp("grpo-local")
    return run_training(recipe(tmp, shards, model_cache, "g-local", {"placement": "local"}))


RAY = {"placement": "ray", "num_workers": 2, "cpus_per_worker": 1}


def test_ray_rollout_equals_local(tmp_path, shards, model_cache, local_ray, local_run):
    """Two rollout actors (one prompt of the rank's two each): the same losses and rewards as
    the trainer's own engine; parity 0 (same weights, same CPU kernels) at every step's sync."""
    res = run_training(recipe(tmp_path, shards, model_cache, "g-ray", RAY))
    assert res.losses == pytest.approx(local_run.losses, abs=1e-5)
    assert [m.get("reward/mean") for m in res.metrics] == pytest.approx(
        [m.get("reward/mean") for m in local_run.metrics], abs=1e-6
    )
    for step, m in enumerate(res.metrics, start=1):
        assert m["sync/parity_ok"] == 1.0
        assert m["sync/parity_max_abs_diff"] <= 1e-4
        assert m["sync/version"] == step
    for key in ("response_length", "kl", "entropy", "clip_frac", "reward/std"):
        assert [m[key] for m in res.metrics] == pytest.approx(
            [m[key] for m in local_run.metrics], abs=1e-5
        ), key
    assert all("sync/version" not in m for m in local_run.metrics)
    assert len(set(local_run.losses)) > 1  # the policy moved: the actors had to follow it


def test_killed_rollout_actor_is_replaced(
    tmp_path, shards, model_cache, local_ray, local_run, monkeypatch
):
    """Actor 0 is killed (Ray restarts it) after step 1's sync: at step 2 a fresh process
    (new pid) reloads the latest weights before generating; the run equals the local one."""
    import ray

    seen: dict[int, tuple[int, int]] = {}
    original = Grpo.after_step

    def after_step(self, step: int) -> dict[str, float]:
        out = original(self, step)
        actor = self.backend.actors[0]
        seen[step] = ray.get(actor.state.remote())
        if step == 1:
            ray.kill(actor, no_restart=False)
        return out

    monkeypatch.setattr(Grpo, "after_step", after_step)
    res = run_training(recipe(tmp_path, shards, model_cache, "g-kill", RAY))
    assert len(res.losses) == STEPS
    assert res.losses == pytest.approx(local_run.losses, abs=1e-5)
    assert seen[1][1] == 1 and seen[2][1] == 2  # versions held after each step's sync
    assert seen[2][0] != seen[1][0]  # a new process replaced the killed actor
    assert all(m["sync/parity_ok"] == 1.0 for m in res.metrics)


def test_ray_rollout_under_ray_train(tmp_path, shards, model_cache, local_ray, local_run):
    """The same run in one Ray Train worker (orchestration.ray_train): the worker creates its
    rollout actor in the run's cluster; same losses as the in-process local run."""
    from vlalign.orchestration.ray_train import run_on_ray

    one = {**RAY, "num_workers": 1}
    r = recipe(tmp_path, shards, model_cache, "g-raytrain", one)
    r = r.model_copy(update={"resources": r.resources.model_copy(update={"num_workers": 1})})
    res = run_on_ray(r)
    assert res.losses == pytest.approx(local_run.losses, abs=1e-5)
    assert [m["sync/parity_ok"] for m in res.metrics] == [1.0] * STEPS
