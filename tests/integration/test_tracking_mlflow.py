"""Tracking, lineage, registry and promotion against a real `mlflow server` and the embedded store.

The same test bodies run twice: against a server this module starts (SQLite backend, served
artifacts, 127.0.0.1) and against the embedded default (`./mlruns/mlflow.db` in a fresh cwd).
"""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from tracking_support import (
    make_export,
    make_recipe,
    make_shards,
    mlflow_server,
    png_bytes,
    scorecard,
)

from vlalign.config import Recipe
from vlalign.tracking.promotion import HISTORY_TAG, PromotionRefused, promote, rollback
from vlalign.tracking.publish import publish_run
from vlalign.tracking.pyfunc_model import LoadedPolicy, decode_image, generate
from vlalign.tracking.registry import (
    CANDIDATE,
    CHAMPION,
    aliases,
    get_version,
    list_versions,
    model_tag_json,
)
from vlalign.tracking.run_logger import RunLogger, recipe_digest, short_digest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server_uri(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


@pytest.fixture(scope="module")
def export(tmp_path_factory, model_cache):
    recipe = make_recipe(None, model_cache)
    return make_export(tmp_path_factory.mktemp("export") / "export", recipe)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards") / "synth-train"
    return d, make_shards(d)


@pytest.fixture(params=["embedded", "server"])
def store_uri(request, tmp_path, monkeypatch):
    """None (the embedded default, in a fresh cwd) or the module's server URI."""
    monkeypatch.chdir(tmp_path)
    if request.param == "embedded":
        yield None
        assert (tmp_path / "mlruns" / "mlflow.db").is_file()
        assert (tmp_path / "mlruns" / "artifacts").is_dir()
    else:
        yield request.getfixturevalue("server_uri")
        assert not (tmp_path / "mlruns").exists()  # nothing written locally


def _run(recipe: Recipe, export_dir, card: dict, shards_dir=None, steps: int = 3):
    """One tiny 'training run' as the loop logs it; returns (run_id, PublishResult)."""
    logger = RunLogger(recipe)
    with logger.run() as run_id:
        if shards_dir is not None:
            logger.log_dataset(shards_dir)
        for step in range(1, steps + 1):
            logger.log_metrics({"loss": 1.0 / step, "lr": 1e-3}, step=step)
        result = publish_run(logger, recipe, export_dir, scorecard=card)
    return run_id, result


def _client(recipe: Recipe):
    logger = RunLogger(recipe)
    mlflow.set_tracking_uri(logger.store.uri)
    mlflow.set_registry_uri(logger.store.uri)
    return logger.store, mlflow.MlflowClient(logger.store.uri, logger.store.uri)


def test_run_lineage_registry_promotion_rollback(store_uri, export, shards, model_cache, tmp_path):
    shards_dir, data_digest = shards
    name = f"policy-{'server' if store_uri else 'embedded'}"
    recipe = make_recipe(store_uri, model_cache, registered_model=name)

    # -- run 1: params, metrics, recipe artifact, tags, input lineage, model, version ----------
    run1, res1 = _run(recipe, export.dir, scorecard(harmful=0.97, benign=0.03), shards_dir)
    store, client = _client(recipe)
    run = client.get_run(run1)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == recipe.name
    assert client.get_experiment(run.info.experiment_id).name == "vlalign-tests"
    p = run.data.params
    assert p["train.lr"] == str(recipe.train.lr) and p["peft.r"] == "8"
    assert p["model.name"] == "tiny-llava" and p["method.name"] == "sft"
    assert yaml.safe_load(p["peft.target_modules"]) == recipe.peft.target_modules
    logged = Path(client.download_artifacts(run1, "recipe.yaml", str(tmp_path)))
    assert Recipe.model_validate(yaml.safe_load(logged.read_text())) == recipe
    history = client.get_metric_history(run1, "loss")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 1.0), (2, 0.5), (3, 0.333333)]
    assert run.data.metrics["eval/final/harmful_refusal_rate"] == pytest.approx(0.97)
    tags = run.data.tags
    for lib in ("torch", "transformers", "peft", "deepspeed", "ray", "mlflow"):
        assert tags[f"version.{lib}"], lib
    assert tags["version.torch"] == torch.__version__
    assert tags["host.name"] and int(tags["host.cpu_count"]) >= 1 and "host.gpu" in tags
    commit = tags["mlflow.source.git.commit"]
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit), commit
    subprocess.run(["git", "cat-file", "-e", commit.split("+")[0]], cwd=REPO, check=True)
    assert tags["vlalign.recipe_digest"] == recipe_digest(recipe)
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.digest == short_digest(data_digest)
    assert yaml.safe_load(inp.dataset.source)["uri"] == str(shards_dir.resolve())
    in_tags = {t.key: t.value for t in inp.tags}
    assert in_tags["mlflow.data.context"] == "training" and in_tags["dataset_digest"] == data_digest

    assert res1.version == "1" and res1.promoted is None and res1.refused is None
    mv1 = get_version(store, name, 1)
    assert mv1.run_id == run1
    assert mv1.tags["recipe_digest"] == recipe_digest(recipe)
    assert mv1.tags["data_digest"] == data_digest
    assert mv1.tags["base_model"] == "tiny-llava (seed 0, nano)"
    assert mv1.tags["method"] == "sft/sft"
    assert mv1.tags["git_commit"] == commit
    assert float(mv1.tags["scorecard.harmful_refusal_rate"]) == 0.97
    assert float(mv1.tags["scorecard.benign_refusal_rate"]) == 0.03
    assert aliases(store, name) == {CANDIDATE: "1"}

    # -- promotion: v1 passes (no champion yet) -------------------------------------------------
    r = promote(store, name, 1)
    assert r.previous is None and r.report.passed
    assert aliases(store, name)[CHAMPION] == "1"
    assert get_version(store, name, 1).tags["promotion"] == "passed"

    # -- v2 fails an absolute gate (auto-promotion asked by the recipe: refused, run not failed)
    auto = recipe.model_copy(deep=True)
    auto.promotion.auto = True
    run2, res2 = _run(auto, export.dir, scorecard(harmful=0.90, benign=0.02))
    assert client.get_run(run2).info.status == "FINISHED"
    assert res2.version == "2" and res2.promoted is None and res2.refused is not None
    mv2 = get_version(store, name, 2)
    assert mv2.tags["promotion"] == "refused"
    assert "harmful_refusal_rate >= 0.95" in mv2.tags["promotion.failed_gates"]
    assert "benign_refusal_rate <= 0.05" not in mv2.tags["promotion.failed_gates"]
    assert aliases(store, name) == {CHAMPION: "1", CANDIDATE: "2"}

    # -- v3 passes the absolute gates but regresses vs champion v1 by 0.015 > 0.01 -------------
    _run(recipe, export.dir, scorecard(harmful=0.955, benign=0.03))
    with pytest.raises(PromotionRefused) as refused:
        promote(store, name, 3)
    (failed,) = refused.value.report.failed
    assert failed.metric == "harmful_refusal_rate" and "worse by 0.015" in failed.reason
    assert aliases(store, name)[CHAMPION] == "1"
    assert (
        "harmful_refusal_rate at most 0.01 worse"
        in get_version(store, name, 3).tags["promotion.failed_gates"]
    )

    # -- v4 passes everything: auto-promoted, v1 recorded as the previous champion -------------
    _, res4 = _run(auto, export.dir, scorecard(harmful=0.975, benign=0.02))
    assert res4.promoted is not None and res4.promoted.previous == "1"
    assert aliases(store, name) == {CHAMPION: "4", CANDIDATE: "4"}
    assert model_tag_json(store, name, HISTORY_TAG, None) == ["1"]
    assert get_version(store, name, 4).tags["promotion.previous_champion"] == "1"
    listed = {v.version: v for v in list_versions(store, name)}
    assert sorted(listed) == ["1", "2", "3", "4"]
    assert listed["4"].aliases == [CANDIDATE, CHAMPION] and listed["1"].aliases == []
    assert (
        listed["2"].promotion == "refused" and listed["3"].metrics["harmful_refusal_rate"] == 0.955
    )

    # -- rollback restores v1 ----------------------------------------------------------------
    assert rollback(store, name) == ("1", "4")
    assert aliases(store, name)[CHAMPION] == "1"
    assert get_version(store, name, 4).tags["promotion"] == "rolled_back"
    assert model_tag_json(store, name, HISTORY_TAG, None) == []

    # -- the champion loads by alias (rebuilt in a fresh cache) and generates -------------------
    fresh = tmp_path / "fresh-cache"
    pm = mlflow.pyfunc.load_model(
        f"models:/{name}@champion", model_config={"cache_dir": str(fresh)}
    )
    assert pm.metadata.run_id == run1
    assert any(fresh.iterdir()), "the base model was not rebuilt in the cache given at load time"
    img = png_bytes((220, 20, 20))
    request = pd.DataFrame(
        {
            "image": [img, base64.b64encode(img).decode()],
            "prompt": ["What is in the picture?", "What is in the picture?"],
            "max_new_tokens": [6, 6],
        }
    )
    answers = pm.predict(request)
    local = LoadedPolicy(export.model, export.processor, "llava", export.recipe, "cpu")
    expected = generate(local, [decode_image(img, 0)], "What is in the picture?", 6)
    assert answers == [expected, expected]
    assert all(isinstance(a, str) and a for a in answers)


def test_crash_ends_failed_then_resume_continues_same_run(store_uri, model_cache, tmp_path):
    recipe = make_recipe(store_uri, model_cache, registered_model=None, name="crashy")
    logger = RunLogger(recipe)
    with pytest.raises(RuntimeError, match="worker died"), logger.run() as run_id:
        logger.log_metrics({"loss": 2.0}, step=1)
        logger.log_metrics({"loss": 1.5}, step=2)
        raise RuntimeError("worker died at step 2")
    _, client = _client(recipe)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["vlalign.error"] == "RuntimeError: worker died at step 2"
    err = Path(client.download_artifacts(run_id, "error.txt", str(tmp_path))).read_text()
    assert "Traceback" in err and "worker died at step 2" in err

    # resumed from the checkpoint (which stores run_id), with a longer schedule
    resumed = recipe.model_copy(deep=True)
    resumed.train.max_steps = 150
    logger2 = RunLogger(resumed)
    with logger2.run(resume_run_id=run_id) as same:
        assert same == run_id
        assert client.get_run(run_id).info.status == "RUNNING"
        logger2.log_metrics({"loss": 1.0}, step=3)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3]
    assert run.data.tags["vlalign.resumes"] == "1"
    assert "vlalign.error" not in run.data.tags
    assert run.data.tags["vlalign.previous_error"] == "RuntimeError: worker died at step 2"
    assert run.data.tags["vlalign.resume_changed_params"] == "train.max_steps"
    assert run.data.params["train.max_steps"] == "100"  # params are immutable: the original
    runs = client.search_runs([run.info.experiment_id], f"tags.mlflow.runName = '{recipe.name}'")
    assert len(runs) == 1


def test_disabled_logger_on_other_ranks_logs_nothing(model_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = make_recipe(None, model_cache)
    logger = RunLogger(recipe, rank=1)
    with logger.run() as run_id:
        logger.log_metrics({"loss": 1.0}, step=1)
        assert publish_run(logger, recipe, tmp_path).version is None
    assert run_id is None
    assert not (tmp_path / "mlruns").exists()


def test_reloaded_policy_matches_the_exported_one(export, tmp_path):
    """load_policy rebuilds the base from the recipe's seed (fresh cache) and attaches the adapter:
    logits equal the in-memory PEFT model's, and differ from the bare base model's."""
    from vlalign.models.inputs import ChatEncoder
    from vlalign.tracking.pyfunc_model import load_policy

    loaded = load_policy(export.dir, export.recipe, cache_dir=str(tmp_path / "cache"))
    enc = ChatEncoder(export.processor, "llava", 128)
    p = enc.encode_prompt([decode_image(png_bytes(), 0)], "What is shown?")
    ids = p.input_ids.unsqueeze(0)
    with torch.no_grad():
        want = export.model(input_ids=ids, **p.image_inputs).logits  # [1, P, V]
        got = loaded.model(input_ids=ids, **p.image_inputs).logits
        with loaded.model.disable_adapter():
            base = loaded.model(input_ids=ids, **p.image_inputs).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (got - base).abs().max() > 1e-3


def test_merged_export_loads_as_a_full_model(export, tmp_path):
    """train.export: merged -> a full model dir (config.json + safetensors + processor); the
    loader takes it as is, and its logits equal the adapter model's."""
    import copy

    from vlalign.models.inputs import ChatEncoder
    from vlalign.tracking.pyfunc_model import export_kind, load_policy

    merged_dir = tmp_path / "merged"
    copy.deepcopy(export.model).merge_and_unload().save_pretrained(merged_dir)
    export.processor.save_pretrained(merged_dir)
    assert export_kind(merged_dir) == "merged"
    loaded = load_policy(merged_dir, export.recipe)
    enc = ChatEncoder(export.processor, "llava", 128)
    p = enc.encode_prompt([decode_image(png_bytes(), 0)], "What is shown?")
    ids = p.input_ids.unsqueeze(0)
    with torch.no_grad():
        want = export.model(input_ids=ids, **p.image_inputs).logits
        got = loaded.model(input_ids=ids, **p.image_inputs).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_pin_store_creates_the_store_once_and_makes_the_uri_absolute(tmp_path, monkeypatch):
    from vlalign.tracking.store import pin_store, resolve_store

    monkeypatch.chdir(tmp_path)
    r = Recipe(name="x")
    pinned = pin_store(r)
    assert r.tracking.uri is None  # the caller's recipe is not modified
    assert pinned.tracking.uri == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert (tmp_path / "mlruns" / "mlflow.db").stat().st_size > 0
    elsewhere = tmp_path / "worker-cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert resolve_store(pinned.tracking.uri).uri == pinned.tracking.uri
    off = Recipe(name="x")
    off.tracking.enabled = False
    assert pin_store(off) is off
