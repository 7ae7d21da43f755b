"""Evaluating registered / logged models from MLflow, and logging the scorecard to a run.

The store is a SQLite MLflow store in the test's folder (created here, nothing else running).
The model is logged and registered by the tracking area's own code, as a training run does.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from eval_support import make_adapter_export, small_recipe, synth_eval

from vlalign.errors import VlalignError
from vlalign.evaluation import evaluate, read_scorecard
from vlalign.tracking.model_fetch import MlflowFetch
from vlalign.tracking.registry import register_version
from vlalign.tracking.run_logger import RunLogger
from vlalign.tracking.scorecard_log import log_scorecard

pytestmark = pytest.mark.slow
NAME = "eval-policy"


@pytest.fixture(scope="module")
def logged(tmp_path_factory, model_cache):
    """(recipe, data, export dir, run id) with the export logged as the run's model and
    registered as version 1 of NAME (alias candidate)."""
    tmp_path = tmp_path_factory.mktemp("eval-mlflow")
    before = mlflow.get_tracking_uri()
    recipe = small_recipe(model_cache)
    recipe.tracking.uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    recipe.tracking.experiment = "eval-tests"
    data = synth_eval(tmp_path / "synth", eval_pairs=8)
    export = make_adapter_export(tmp_path / "export", recipe)
    logger = RunLogger(recipe)
    with logger.run() as run_id:
        info = logger.log_model(export, recipe)
    register_version(logger.store, NAME, info.model_uri, recipe, run_id=run_id)
    yield recipe, data, export, run_id
    mlflow.set_tracking_uri(before)


def test_registered_alias_and_run_id_evaluate_like_the_local_export(tmp_path, logged):
    recipe, data, export, run_id = logged
    fetch = MlflowFetch(recipe.tracking.uri)
    local = evaluate(str(export), str(data), recipe, tmp_path / "local")
    by_alias = evaluate(
        f"models:/{NAME}@candidate", str(data), recipe, tmp_path / "alias", fetch=fetch
    )
    log_scorecard(by_alias, run_id, "safety", tracking_uri=recipe.tracking.uri)
    by_run = evaluate(run_id, str(data), recipe, tmp_path / "run", fetch=fetch)
    strip = lambda card: {k: v for k, v in card.to_dict().items() if k != "model"}  # noqa: E731
    assert strip(by_alias) == strip(local) == strip(by_run)
    assert (
        by_alias.model == f"models:/{NAME}@candidate"
        and by_alias.settings["model_kind"] == "adapter"
    )
    assert "implicit_reward_accuracy" in local.metrics  # the adapter's base was found: pairs scored

    # the scorecard is in the run: JSON, chart, page and metrics under eval/safety/
    client = mlflow.MlflowClient(tracking_uri=recipe.tracking.uri)
    files = {f.path for f in client.list_artifacts(run_id, "eval/safety")}
    assert files == {
        "eval/safety/scorecard.json",
        "eval/safety/refusal_by_category.png",
        "eval/safety/scorecard.html",
    }
    got = client.download_artifacts(run_id, "eval/safety/scorecard.json", str(tmp_path / "dl"))
    assert read_scorecard(got).to_dict() == by_alias.to_dict()
    metrics = client.get_run(run_id).data.metrics
    for k, v in by_alias.metrics.items():
        assert metrics[f"eval/safety/{k}"] == pytest.approx(v)
    for cat, row in by_alias.per_category.items():
        assert metrics[f"eval/safety/refusal_rate/{cat}"] == pytest.approx(row["refusal_rate"])


def test_log_scorecard_accepts_the_json_dict(tmp_path, logged):
    """What the tracking area passes: the scorecard as a dict read from JSON."""
    recipe, data, export, run_id = logged
    card = evaluate(str(export), str(data), recipe, tmp_path / "out", name="base")
    as_json = json.loads((tmp_path / "out/scorecard.json").read_text())
    log_scorecard(as_json, run_id, "second", tracking_uri=recipe.tracking.uri)
    client = mlflow.MlflowClient(tracking_uri=recipe.tracking.uri)
    metrics = client.get_run(run_id).data.metrics
    assert metrics["eval/second/harmful_refusal_rate"] == card.metrics["harmful_refusal_rate"]
    assert metrics["eval/second/n_total"] == 8


def test_unknown_registered_model_is_a_clear_error(tmp_path, logged):
    recipe, data, _, _ = logged
    fetch = MlflowFetch(recipe.tracking.uri)
    with pytest.raises(VlalignError, match=r"models:/nope@champion: not found in MLflow"):
        evaluate("models:/nope@champion", str(data), recipe, tmp_path / "x", fetch=fetch)
    with pytest.raises(VlalignError, match="not found in MLflow"):
        evaluate("0" * 32, str(data), recipe, tmp_path / "y", fetch=fetch)
    # without a fetch (evaluation alone never imports MLflow) the reference is refused, named
    with pytest.raises(VlalignError, match=r"models:/nope@champion: an MLflow model"):
        evaluate("models:/nope@champion", str(data), recipe, tmp_path / "z")


def test_worker_downloads_again_when_the_driver_copy_is_not_there(tmp_path, logged):
    """A Ray worker on another node does not see the driver's download: it fetches its own."""
    import shutil

    from vlalign.evaluation.model_ref import resolve_model_ref
    from vlalign.evaluation.worker import EvalJob, _local_spec
    from vlalign.models.generation import GenerationSettings

    recipe, data, _, _ = logged
    ref = f"models:/{NAME}@candidate"
    fetch = MlflowFetch(recipe.tracking.uri)
    spec = resolve_model_ref(ref, recipe, fetch, tmp_path / "driver")
    job = EvalJob(spec, str(data), "eval", GenerationSettings(), fetch=fetch)
    assert _local_spec(job) is spec  # files present: used as they are
    shutil.rmtree(tmp_path / "driver")
    local = _local_spec(job)
    assert local.path != spec.path and Path(local.path, "adapter_config.json").is_file()
    assert local.base == spec.base and local.kind == "adapter"
    spec.ref = spec.path = "/nowhere/model"  # a local path the worker's machine lacks
    with pytest.raises(VlalignError, match="does not exist on this worker"):
        _local_spec(job)
