"""Lost or mislabelled work, through the `vlalign run` command (fresh processes, tiny model):

- re-running a finished run trains nothing and rewrites nothing (no export, no checkpoint);
- another recipe into the same output directory is refused (the checkpoint's recipe digest);
- a run resumed after an interruption says so, with the step; a corrupt newest checkpoint is
  named and the previous good one loaded, and the final losses equal the uninterrupted run's;
- a corrupt only checkpoint is a one-line error naming the file;
- `--restart` sets the old run aside (nothing deleted) and trains anew.

One uninterrupted run (3 steps, a checkpoint after each) is made once; every case works on a
copy of its output directory. Cases are listed in BAD_INPUT_CASES.md.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_bad_input import assert_clear_error, run_vlalign

pytestmark = pytest.mark.slow

STEPS = 3


def _args(shards: Path, out: Path, model_cache: str, recipe: str = "tiny/sft") -> list[str]:
    return [
        "run", recipe, "--no-ray", "--no-eval",
        f"data.train={shards}", f"train.output_dir={out}", f"model.cache_dir={model_cache}",
        f"train.max_steps={STEPS}", "train.checkpoint_every=1", "train.keep_checkpoints=3",
        "train.micro_batch_size=4", "train.warmup_steps=1", "tracking.enabled=false",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory, model_cache):
    """(shards, output dir of a finished 3-step run, its final trainer state)."""
    from data_pipeline.synth import synthesize

    base = tmp_path_factory.mktemp("lost-work")
    shards = base / "shards"
    synthesize(shards, pairs=32, seed=0, eval_pairs=4)
    out = base / "run"
    proc = run_vlalign(_args(shards, out, model_cache), base, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"done: tiny-sft: {STEPS} steps this run" in proc.stdout
    state = json.loads((out / "checkpoints" / "step-000003" / "trainer_state.json").read_text())
    assert len(state["losses"]) == STEPS and state["recipe_digest"].startswith("sha256:")
    return shards, out, state


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def _interrupt_after(out: Path, step: int) -> None:
    """Leave `out` as a run killed after checkpoint `step`: later checkpoints and the export
    gone, `latest` naming step `step`."""
    root = out / "checkpoints"
    for p in root.glob("step-*"):
        if int(p.name.split("-")[1]) > step:
            shutil.rmtree(p)
    shutil.rmtree(out / "export", ignore_errors=True)
    (root / "latest").write_text(f"step-{step:06d}")


def _corrupt(checkpoint: Path) -> Path:
    """Overwrite the model-states file of a checkpoint with garbage; returns it."""
    files = sorted(checkpoint.rglob("*model_states.pt"))
    assert files, list(checkpoint.rglob("*"))
    files[0].write_bytes(b"not a pickle" * 100)
    return files[0]


def test_rerun_of_a_finished_run_trains_and_rewrites_nothing(finished, tmp_path, model_cache):
    shards, src, _ = finished
    out = _copy(src, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    proc = run_vlalign(_args(shards, out, model_cache), tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "holds a finished run of this recipe (step 3 of 3)" in proc.stdout
    assert "--restart" in proc.stdout and "done:" not in proc.stdout
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before  # no export, scorecard or checkpoint rewritten


def test_another_recipe_is_refused(finished, tmp_path, model_cache):
    shards, src, _ = finished
    out = _copy(src, tmp_path)
    proc = run_vlalign(_args(shards, out, model_cache, "tiny/dpo"), tmp_path, timeout=300)
    assert_clear_error(proc, "step-000003 was written by a different recipe (sft", "--restart")
    # a changed training field is another recipe too (here the learning rate)
    proc = run_vlalign([*_args(shards, out, model_cache), "train.lr=0.5"], tmp_path, timeout=300)
    assert_clear_error(proc, "was written by a different recipe")
    assert not (out / "checkpoints" / "step-000004").exists()


def test_corrupt_newest_checkpoint_falls_back_and_matches(finished, tmp_path, model_cache):
    shards, src, state = finished
    out = _copy(src, tmp_path)
    _interrupt_after(out, 2)
    bad = _corrupt(out / "checkpoints" / "step-000002")
    proc = run_vlalign(_args(shards, out, model_cache), tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in proc.stdout and "from checkpoint step-000002 (step 2 of 3)" in proc.stdout
    assert str(bad) in proc.stderr and "Traceback" not in proc.stderr  # the file is named
    assert "2 steps this run (step 3 of 3)" in proc.stdout  # it went back to step 1
    final = json.loads((out / "checkpoints" / "step-000003" / "trainer_state.json").read_text())
    assert final["losses"] == pytest.approx(state["losses"], abs=1e-6, rel=0)
    assert (out / "export").is_dir()


def test_corrupt_only_checkpoint_is_named(finished, tmp_path, model_cache):
    shards, src, _ = finished
    out = _copy(src, tmp_path)
    _interrupt_after(out, 1)
    shutil.rmtree(out / "checkpoints" / "step-000002", ignore_errors=True)
    bad = _corrupt(out / "checkpoints" / "step-000001")
    proc = run_vlalign(_args(shards, out, model_cache), tmp_path, timeout=900)
    assert_clear_error(proc, "no checkpoint under", str(bad))


def test_restart_sets_the_old_run_aside(finished, tmp_path, model_cache):
    shards, src, state = finished
    out = _copy(src, tmp_path)
    proc = run_vlalign([*_args(shards, out, model_cache), "--restart"], tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the previous run is set aside in" in proc.stdout
    assert f"{STEPS} steps this run" in proc.stdout
    (aside,) = out.glob("previous-*")
    old = json.loads((aside / "checkpoints" / "step-000003" / "trainer_state.json").read_text())
    assert old == state  # the old run is kept whole
    new = json.loads((out / "checkpoints" / "step-000003" / "trainer_state.json").read_text())
    assert new["losses"] == pytest.approx(state["losses"], abs=1e-6, rel=0)
