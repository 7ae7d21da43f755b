"""Fetching a model from MLflow for evaluation: `models:/NAME@ALIAS`, `runs:/RUN_ID/PATH`, a run id.

    evaluate(ref, data, recipe, fetch=MlflowFetch(resolve_store(uri).uri))

Evaluation resolves every other kind of model reference itself and never imports MLflow; it
calls the fetch it is given (picklable, so a Ray worker on another node fetches its own copy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlalign.errors import VlalignError


@dataclass(frozen=True)
class MlflowFetch:
    """Download an MLflow model reference into a folder (`vlalign.evaluation.model_ref.Fetch`).

    tracking_uri: the store (also the registry) holding the model; None: MLflow's default.
    A run id fetches the model that run logged (its logged model), else the run's artifacts.
    """

    tracking_uri: str | None = None

    def __call__(self, ref: str, dst: Path) -> Path:
        import mlflow

        try:
            if ref.startswith(("models:/", "runs:/")):
                return Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=ref,
                        dst_path=str(dst),
                        tracking_uri=self.tracking_uri,
                        registry_uri=self.tracking_uri,
                    )
                )
            client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
            run = client.get_run(ref)
            models = client.search_logged_models(
                experiment_ids=[run.info.experiment_id],
                filter_string=f"source_run_id = '{ref}'",
            )
            if models:
                uri = f"models:/{models[0].model_id}"
                return Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=uri,
                        dst_path=str(dst),
                        tracking_uri=self.tracking_uri,
                        registry_uri=self.tracking_uri,
                    )
                )
            return Path(
                mlflow.artifacts.download_artifacts(
                    run_id=ref, artifact_path="", dst_path=str(dst), tracking_uri=self.tracking_uri
                )
            )
        except mlflow.exceptions.MlflowException as e:
            raise VlalignError(
                f"--model {ref}: not found in MLflow ({self.tracking_uri}): {e}"
            ) from None
