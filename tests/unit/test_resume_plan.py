"""The resume decision without training: the recipe digest and `plan` over checkpoint folders."""

from __future__ import annotations

import json

import pytest

from vlalign.config.loading import load_recipe
from vlalign.errors import VlalignError
from vlalign.training.resume import (
    PUBLISHED,
    finished_result,
    mark_published,
    plan,
    recipe_digest,
    set_aside,
)


def _recipe(tmp_path, *extra: str):
    return load_recipe("tiny/sft", [f"train.output_dir={tmp_path}/run", *extra])


def test_digest_ignores_bookkeeping_but_not_training(tmp_path):
    base = recipe_digest(_recipe(tmp_path))
    for same in ("train.log_every=7", "train.checkpoint_every=3", "tracking.enabled=false",
                 "eval.max_new_tokens=3", "resources.max_failures=2", "name=other"):  # fmt: skip
        assert recipe_digest(_recipe(tmp_path, same)) == base, same
    for other in ("train.lr=0.5", "train.max_steps=7", "peft.r=4", "resources.num_workers=2",
                  "engine.zero_stage=2", "model.seed=3"):  # fmt: skip
        assert recipe_digest(_recipe(tmp_path, other)) != base, other
    assert recipe_digest(load_recipe("tiny/dpo", [f"train.output_dir={tmp_path}/run"])) != base


def _checkpoint(root, step: int, digest: str, run_id: str | None = "r1") -> None:
    d = root / f"step-{step:06d}"
    d.mkdir(parents=True)
    state = {"step": step, "recipe_digest": digest, "method": "sft", "run_id": run_id}
    (d / "trainer_state.json").write_text(json.dumps(state))
    (root / "latest").write_text(d.name)


def test_plan_fresh_resume_finished_and_foreign(tmp_path):
    r = _recipe(tmp_path, "train.max_steps=4")
    assert plan(r).action == "fresh"
    root = tmp_path / "run" / "checkpoints"
    _checkpoint(root, 2, recipe_digest(r))
    p = plan(r)
    assert p.action == "resume" and p.step == 2
    assert "from checkpoint step-000002 (step 2 of 4), MLflow run r1" in p.message
    _checkpoint(root, 4, recipe_digest(r))
    p = plan(r)  # trained to the end, never published (no marker): publish, do not train
    assert p.action == "publish" and p.step == 4 and p.checkpoint == root / "step-000004"
    assert "evaluation and publishing did not complete: doing them now" in p.message
    mark_published(r, 4, "another-run")  # a marker of another MLflow run does not count
    assert plan(r).action == "publish"
    mark_published(r, 4, "r1", version="1")
    p = plan(r)
    assert p.action == "finished" and "nothing to train" in p.message
    with pytest.raises(VlalignError, match="written by a different recipe"):
        plan(_recipe(tmp_path, "train.max_steps=4", "train.lr=0.3"))
    moved = set_aside(r)
    assert moved is not None and (moved / "checkpoints" / "step-000004").is_dir()
    assert (moved / PUBLISHED).is_file() and not (tmp_path / "run" / PUBLISHED).exists()
    assert plan(r).action == "fresh"


def test_finished_result_reads_the_final_checkpoint_and_needs_the_export(tmp_path):
    r = _recipe(tmp_path, "train.max_steps=2")
    root = tmp_path / "run" / "checkpoints"
    _checkpoint(root, 2, recipe_digest(r))
    with pytest.raises(VlalignError, match="export .* is missing or incomplete"):
        finished_result(r, root / "step-000002")
    export = tmp_path / "run" / "export"
    export.mkdir()
    (export / "vlalign_export.json").write_text("{}")
    res = finished_result(r, root / "step-000002")
    assert res.export_dir == export and res.run_id == "r1" and res.resumed_from_step == 2


def test_plan_skips_an_unreadable_state_for_an_older_one(tmp_path):
    r = _recipe(tmp_path, "train.max_steps=4")
    root = tmp_path / "run" / "checkpoints"
    _checkpoint(root, 1, recipe_digest(r))
    _checkpoint(root, 2, recipe_digest(r))
    (root / "step-000002" / "trainer_state.json").write_text("{not json")
    p = plan(r)
    assert p.action == "resume" and p.step == 1
