"""Fetching a model from MLflow for evaluation: `models:/NAME@ALIAS`, `runs:/RUN_ID/PATH`, a run id.

    evaluate(ref, data, recipe, fetch=MlflowFetch(resolve_store(uri).uri))

Evaluation resolves every other kind of model reference itself and never imports MLflow; it
calls the fetch it is given (picklable, so a Ray worker on another node fetches its own copy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlalign.errors import VlalignError


def _models_uri_location(ref: str, client) -> str:
    """The artifact location a `models:/NAME@ALIAS[/PATH]`, `models:/NAME/VERSION[/PATH]` or
    `models:/MODEL_ID` URI names, resolved with `client` (bound to the configured store).

    MLflow's own resolution of models:/ URIs reads the process-wide registry URI (default
    ./mlflow.db, created on the spot), not the store given to download_artifacts."""
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    base, path = ModelsArtifactRepository.split_models_uri(ref)
    found = get_model_name_and_version(client, base)
    if len(found) == 1:
        location = client.get_logged_model(found[0]).artifact_location
    else:
        location = client.get_model_version_download_uri(*found)
    return f"{location.rstrip('/')}/{path}" if path else location


@dataclass(frozen=True)
class MlflowFetch:
    """Download an MLflow model reference into a folder (`vlalign.evaluation.model_ref.Fetch`).

    tracking_uri: the store holding the model; registry_uri: the registry, when another store
    (default: the tracking store); None: MLflow's default.
    A run id fetches the model that run logged (its logged model), else the run's artifacts.
    """

    tracking_uri: str | None = None
    registry_uri: str | None = None  # MLFLOW_REGISTRY_URI's store, when not the tracking one

    def __call__(self, ref: str, dst: Path) -> Path:
        """Download `ref` into `dst`, resolving names in this store, never in MLflow's
        process-wide default (which would read, and create, ./mlflow.db)."""
        import mlflow

        registry_uri = self.registry_uri or self.tracking_uri
        client = mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=registry_uri)

        def fetch(uri: str) -> Path:
            return Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=uri,
                    dst_path=str(dst),
                    tracking_uri=self.tracking_uri,
                    registry_uri=registry_uri,
                )
            )

        try:
            if ref.startswith("models:/"):
                return fetch(_models_uri_location(ref, client))
            if ref.startswith("runs:/"):
                return fetch(ref)
            run = client.get_run(ref)
            models = client.search_logged_models(
                experiment_ids=[run.info.experiment_id],
                filter_string=f"source_run_id = '{ref}'",
            )
            if models:
                return fetch(models[0].artifact_location)
            return Path(
                mlflow.artifacts.download_artifacts(
                    run_id=ref, artifact_path="", dst_path=str(dst), tracking_uri=self.tracking_uri
                )
            )
        except mlflow.exceptions.MlflowException as e:
            where = (
                self.tracking_uri
                if registry_uri == self.tracking_uri
                else f"{self.tracking_uri}, {registry_uri}"
            )
            raise VlalignError(f"--model {ref}: not found in MLflow ({where}): {e}") from None
