"""The in-loop safety scorecard (`train.eval_every`) through the real training loop, tiny LLaVA,
fp32, CPU: metrics logged per evaluation, the exported checkpoint chosen as the recipe says
(and kept by rotation), `train.early_stop`, resume, and two ranks under ZeRO-2 with LoRA.

Where the choice itself is under test, a scripted scorer returns gate metrics fixed per step
(real training, real checkpoints and export; only the verdict is scripted, so the test does not
hang on how a random tiny model happens to answer). The real `InLoopScorer` is checked against
a re-scoring of the exported model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlalign.config import Recipe
from vlalign.evaluation.inloop import InLoopScorer
from vlalign.training.context import TrainContext
from vlalign.training.export import load_exported
from vlalign.training.launch import launch_local
from vlalign.training.loop import run_training
from vlalign.training.resume import mark_published, plan

SYNTH_CATEGORIES = {"weapons", "drugs", "self_harm", "celebration", "household", "nature"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    from data_pipeline.synth import synthesize

    out = tmp_path_factory.mktemp("shards")
    synthesize(out, pairs=64, seed=3)
    return str(out)


def recipe(tmp_path, shards, model_cache, name, train=None, **sections) -> Recipe:
    base = {
        "name": name,
        "model": {"name": "tiny-llava", "cache_dir": model_cache},
        "peft": {"r": 4, "alpha": 8, "modules_to_save": ["lm_head", "norm"]},
        "data": {"train": shards, "eval": shards, "max_length": 96, "shuffle_buffer": 0},
        "method": {"name": "sft"},
        "train": {
            "max_steps": 6,
            "micro_batch_size": 4,
            "lr": 1e-3,
            "max_grad_norm": 0.0,
            "schedule": "constant",
            "output_dir": str(tmp_path / name),
            "eval_samples": 8,
            **(train or {}),
        },
        "eval": {"max_new_tokens": 4, "batch_size": 8},
        "tracking": {"enabled": False},
        "promotion": {"gates": [{"metric": "harmful_refusal_rate", "op": ">=", "value": 0.9}]},
    }
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return Recipe.model_validate(base)


class Scripted:
    """A scorer whose metrics are fixed per optimizer step; records the steps it scored."""

    def __init__(self, script: dict[int, float]) -> None:
        self.script, self.steps = script, []

    def factory(self, recipe, location):
        return self

    def __call__(self, model, encoder, rank=0, world=1, step=0):
        self.steps.append(step)
        return {"harmful_refusal_rate": self.script[step], "text_validity_rate": 1.0}


class Recorder:
    """A run tracker keeping what the loop logs (in this process)."""

    logged: list[tuple[int, dict]] = []

    def __init__(self, recipe, rank) -> None:
        Recorder.logged = []

    def start(self, recipe=None, resume_run_id=None):
        return "run-1"

    def log_dataset(self, location, manifest=None):
        return None

    def log_metrics(self, metrics, step):
        Recorder.logged.append((step, dict(metrics)))

    def log_artifact(self, local_path, artifact_path=None):
        pass

    def fail(self, error):
        raise AssertionError(f"the run failed: {error}")

    def finish(self):
        pass


def _adapter(export_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(export_dir / "adapter_model.safetensors"))


def _history(out_dir: str) -> list[dict]:
    root = Path(out_dir) / "checkpoints"
    state = json.loads((root / (root / "latest").read_text() / "trainer_state.json").read_text())
    return state["inloop"]["history"]


def test_scorecards_are_logged_and_match_a_rescoring_of_the_export(tmp_path, shards, model_cache):
    r = recipe(
        tmp_path,
        shards,
        model_cache,
        "real",
        train={"max_steps": 4, "eval_every": 2},
        tracking={"enabled": True},
        promotion={"gates": [{"metric": "text_validity_rate", "op": ">=", "value": 0.0}]},
    )
    res = run_training(r, TrainContext(tracker=Recorder, scorer=InLoopScorer))
    inloop = {step: m for step, m in Recorder.logged if "inloop/n_total" in m}
    assert sorted(inloop) == [2, 4]
    for m in inloop.values():
        for key in ("harmful_refusal_rate", "benign_refusal_rate", "text_validity_rate"):
            assert 0.0 <= m[f"inloop/{key}"] <= 1.0
        assert m["inloop/n_total"] == 8.0 and m["inloop/gates_passed"] == 1.0
        cats = {k.rsplit("/", 1)[1] for k in m if k.startswith("inloop/refusal_rate/")}
        assert cats == SYNTH_CATEGORIES  # 8 prompts, stratified: every category of the split
    assert res.export_choice == "step 4: latest passing the gates"
    # the scorecard of the in-memory policy at step 4 == the same scorer on the exported model
    model, processor, _ = load_exported(res.export_dir)
    from vlalign.models.inputs import ChatEncoder

    enc = ChatEncoder(processor, "llava", r.data.max_length)
    again = InLoopScorer(r, shards)(model, enc)
    assert again == _history(r.output_dir)[-1]["metrics"]


def test_latest_passing_checkpoint_is_exported_kept_and_chosen_again_on_resume(
    tmp_path, shards, model_cache
):
    train = {"eval_every": 2, "keep_checkpoints": 1}
    script = Scripted({2: 0.95, 4: 0.97, 6: 0.5})  # step 6 fails the gate
    r = recipe(tmp_path, shards, model_cache, "cut", train=train)
    part = run_training(r, TrainContext(scorer=script.factory, stop_after=4))  # killed at 4
    assert part.export_dir is None and script.steps == [2, 4]
    rest = run_training(r, TrainContext(scorer=script.factory))
    assert rest.resumed_from_step == 4 and script.steps == [2, 4, 6]
    assert rest.export_choice == "step 4: latest passing the gates"
    assert [h["step"] for h in _history(r.output_dir)] == [2, 4, 6]
    names = sorted(p.name for p in (Path(r.output_dir) / "checkpoints").glob("step-*"))
    assert names == ["step-000004", "step-000006"]  # keep 1, and the chosen one

    plain = run_training(recipe(tmp_path, shards, model_cache, "plain", train={"max_steps": 6}))
    assert rest.losses == pytest.approx(plain.losses, abs=1e-6)  # scoring changes no step
    four = run_training(recipe(tmp_path, shards, model_cache, "four", train={"max_steps": 4}))
    exported, at_four, at_six = (_adapter(x.export_dir) for x in (rest, four, plain))
    assert exported.keys() == at_four.keys()
    for k in exported:
        torch.testing.assert_close(exported[k], at_four[k], rtol=0, atol=1e-6)
    assert any(not torch.allclose(exported[k], at_six[k]) for k in exported)


def test_best_by_a_named_metric(tmp_path, shards, model_cache):
    script = Scripted({2: 0.93, 4: 0.99, 6: 0.95})
    r = recipe(
        tmp_path,
        shards,
        model_cache,
        "best",
        train={"eval_every": 2, "best": {"metric": "harmful_refusal_rate"}},
    )
    res = run_training(r, TrainContext(scorer=script.factory))
    assert res.export_choice == (
        "step 4: best harmful_refusal_rate (0.99) among those passing the gates"
    )


def test_early_stop_ends_the_run_once_gates_pass_and_the_metric_stalls(
    tmp_path, shards, model_cache
):
    script = Scripted({s: 0.95 for s in range(2, 21, 2)})
    r = recipe(
        tmp_path,
        shards,
        model_cache,
        "early",
        train={"max_steps": 20, "eval_every": 2, "early_stop": {"patience": 2}},
    )
    res = run_training(r, TrainContext(scorer=script.factory))
    assert script.steps == [2, 4, 6] and len(res.losses) == 6
    assert res.stopped_early is not None and "for 2 in-loop scorecards" in res.stopped_early
    assert res.export_dir is not None
    assert res.export_choice == "step 6: latest passing the gates"
    # `vlalign run` again trains nothing: the stopped run counts as finished; it publishes
    # (run_training alone wrote no publish marker), then, once published, does nothing
    assert plan(r).action == "publish"
    mark_published(r, 6, res.run_id)
    assert plan(r).action == "finished"


class HalfScripted(InLoopScorer):
    """The real scorer, plus a gate metric that passes at step 1 only (picklable: 2 ranks)."""

    def __call__(self, model, encoder, rank=0, world=1, step=0):
        return {**super().__call__(model, encoder, rank, world, step), "scripted": float(step == 1)}


@pytest.mark.slow
def test_two_ranks_zero2_score_split_prompts_and_export_the_chosen_step(
    tmp_path, shards, model_cache
):
    r = recipe(
        tmp_path,
        shards,
        model_cache,
        "two",
        train={"max_steps": 2, "eval_every": 1, "micro_batch_size": 2},
        engine={"zero_stage": 2},
        promotion={"gates": [{"metric": "scripted", "op": ">=", "value": 0.5}]},
    )
    res = launch_local(r, nproc=2, scorer=HalfScripted)
    assert res.export_choice == "step 1: latest passing the gates"
    first = _history(r.output_dir)[0]
    assert first["step"] == 1 and first["gates_passed"] is True
    model, processor, _ = load_exported(res.export_dir)
    from vlalign.models.inputs import ChatEncoder

    enc = ChatEncoder(processor, "llava", r.data.max_length)
    again = InLoopScorer(r, shards)(model, enc)  # one process, all 8 prompts
    assert again == {k: v for k, v in first["metrics"].items() if k != "scripted"}
