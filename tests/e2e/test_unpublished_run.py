"""A run whose training finished but whose publish step (evaluation, MLflow logging,
registration) crashed, through the `vlalign run` command (fresh processes, clean working
directories, a tiny model, an MLflow SQLite store of the test's own):

1. the first run trains to the end, then its evaluation fails (the recipe names an eval split
   the shard set does not have): exit 2, one line saying training finished and that running
   the same command again publishes it; nothing registered, no publish marker;
2. the same command with the split fixed (evaluation settings are not part of the recipe
   digest: it is the same run) says the run was not published, evaluates and registers it
   without training (no checkpoint file rewritten), and writes `published.json`;
3. again: a finished, published run, nothing to do;
4. a crash after registration but before the marker (the marker deleted): the re-run
   publishes again without a second version of the MLflow run (`version_of_run`) and says so.

Cases are listed in BAD_INPUT_CASES.md (`unpublished-run`, `unpublished-run-registered`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_bad_input import assert_clear_error, run_vlalign

pytestmark = pytest.mark.slow

STEPS = 3
MODEL = "tiny-sft-unpublished"


def _args(shards: Path, out: Path, store: Path, model_cache: str) -> list[str]:
    return [
        "run", "tiny/sft", "--no-ray",
        f"data.train={shards}", f"eval.data={shards}", "eval.max_samples=4",
        "eval.max_new_tokens=4", f"train.output_dir={out}", f"model.cache_dir={model_cache}",
        f"train.max_steps={STEPS}", "train.checkpoint_every=1", "train.micro_batch_size=4",
        "train.warmup_steps=1", f"tracking.uri=sqlite:///{store}/mlflow.db",
        f"tracking.registered_model={MODEL}",
    ]  # fmt: skip


def _versions(store: Path) -> list[tuple[str, str]]:
    """(version, MLflow run id) of every version of MODEL in the store."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{store}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return sorted(
        (str(v.version), v.run_id) for v in client.search_model_versions(f"name='{MODEL}'")
    )


def _files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_a_crashed_publish_is_finished_by_the_next_run(tmp_path, model_cache):
    from data_pipeline.synth import synthesize

    shards = tmp_path / "shards"
    synthesize(shards, pairs=32, seed=0, eval_pairs=4)
    out, store = tmp_path / "run", tmp_path / "store"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = _args(shards, out, store, model_cache)

    # 1. Training finishes; the evaluation fails (a split the shard set does not have).
    first = run_vlalign([*args, "eval.splits=[held-out]"], cwd, timeout=900)
    text = assert_clear_error(
        first,
        f"training finished (step {STEPS} of {STEPS}, checkpoint {out}/checkpoints/step-00000",
        "no split 'held-out'",
        "run the same command again: it evaluates and publishes the run without training",
    )
    assert len(text.strip().splitlines()) == 1, text
    final = out / "checkpoints" / f"step-{STEPS:06d}" / "trainer_state.json"
    run_id = json.loads(final.read_text())["run_id"]
    assert run_id and not (out / "published.json").exists() and _versions(store) == []
    trained = _files(out / "checkpoints")

    # 2. Fixed: the same run is published now, without training.
    second = run_vlalign(args, cwd, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (
        f"holds a finished run of this recipe (step {STEPS} of {STEPS}, MLflow run {run_id}) "
        "whose evaluation and publishing did not complete: doing them now, without training"
    ) in second.stdout
    assert f"done: tiny-sft: 0 steps this run (step {STEPS} of {STEPS})" in second.stdout
    assert "published now" in second.stdout and f"{MODEL} v1: alias candidate" in second.stdout
    assert _files(out / "checkpoints") == trained  # nothing retrained or rewritten
    assert _versions(store) == [("1", run_id)]
    marker = json.loads((out / "published.json").read_text())
    assert marker["step"] == STEPS and marker["run_id"] == run_id and marker["version"] == "1"
    assert marker["evaluated"] and (out / "eval" / "final" / "scorecard.json").is_file()

    # 3. A finished, published run: nothing to do.
    third = run_vlalign(args, cwd, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert (
        "holds a finished run of this recipe" in third.stdout and "nothing to train" in third.stdout
    )
    assert "done:" not in third.stdout and _versions(store) == [("1", run_id)]

    # 4. Registered, then the driver died before the marker: no second version.
    (out / "published.json").unlink()
    fourth = run_vlalign(args, cwd, timeout=900)
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert "doing them now, without training" in fourth.stdout
    assert f"{MODEL} v1: registered before from this MLflow run (no second version)" in (
        fourth.stdout
    )
    assert _versions(store) == [("1", run_id)]
    assert json.loads((out / "published.json").read_text())["version"] == "1"
