"""MLflow: run logging (rank 0 only), data lineage, the model registry and safety-gated promotion.

- store: the tracking URI (embedded SQLite default or a server) and one-time store creation
- run_logger: RunLogger (params, metrics, recipe artifact, tags, dataset inputs, failures, resume)
- pyfunc_model: the policy as an MLflow pyfunc model ((image, prompt) -> text)
- registry: versions with lineage and scorecard tags, aliases (`candidate`, `champion`)
- promotion: gates over scorecard metrics, promote / rollback of `champion`
- publish: the end-of-run sequence (log model, register, optional automatic promotion)

Heavy imports (mlflow, torch) happen inside the modules, not here.
"""
