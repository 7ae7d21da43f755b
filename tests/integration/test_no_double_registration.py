"""An MLflow run is registered at most once: publishing the same run again (a re-run, a retried
finish) returns its existing version and logs and registers nothing new."""

from __future__ import annotations

import mlflow
import pytest
from tracking_support import make_export, make_recipe, scorecard

from vlalign.pipeline import publish_export
from vlalign.tracking.publish import publish_run
from vlalign.tracking.run_logger import RunLogger

pytestmark = pytest.mark.slow


def test_same_run_is_not_registered_twice(tmp_path, monkeypatch, model_cache):
    monkeypatch.chdir(tmp_path)  # the embedded store lands in ./mlruns
    recipe = make_recipe(None, model_cache, registered_model="once")
    export = make_export(tmp_path / "export", recipe)
    logger = RunLogger(recipe)
    with logger.run() as run_id:
        first = publish_run(logger, recipe, export.dir, scorecard())
    assert first.version == "1" and not first.already_registered

    again = publish_export(recipe, run_id, export.dir, scorecard())
    assert again.version == "1" and again.already_registered
    client = mlflow.MlflowClient(logger.store.uri, logger.store.uri)
    versions = client.search_model_versions("name='once'")
    assert [str(v.version) for v in versions] == ["1"]
    logged = client.search_logged_models(experiment_ids=[client.get_run(run_id).info.experiment_id])
    assert len(logged) == 1  # the model was not logged a second time either

    # another run of the same recipe is a new version, as before
    logger2 = RunLogger(recipe)
    with logger2.run():
        second = publish_run(logger2, recipe, export.dir, scorecard())
    assert second.version == "2" and not second.already_registered
