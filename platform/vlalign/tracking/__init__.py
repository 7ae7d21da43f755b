"""MLflow: run logging (rank 0 only), data lineage, the model registry and safety-gated promotion.

- store: the tracking URI (embedded SQLite default or a server) and one-time store creation
- run_logger: RunLogger (params, metrics, recipe artifact, tags, dataset inputs, failures, resume)
- pyfunc_model: the policy as an MLflow pyfunc model ((image, prompt) -> text)
- registry: versions with lineage and scorecard tags, aliases (`candidate`, `champion`)
- promotion: gates over scorecard metrics, promote / rollback of `champion`
- comparison: a candidate's scorecard against the champion's, per split and category (pure)
- vs_champion: that comparison recorded on the version (tag, HTML + JSON artifacts)
- publish: the end-of-run sequence (log model, register, optional automatic promotion)
- scorecard_log: a scorecard logged to a run (eval/<name>/), its metrics as version tags
- model_fetch: MlflowFetch, how evaluation downloads `models:/...` / `runs:/...` / run ids

The scorecard's schema is `vlalign.scorecard` (evaluation writes it, tracking reads it); the
training loop logs through the RunLogger its launcher hands it (`TrainContext.tracker`).

Heavy imports (mlflow, torch) happen inside the modules, not here.
"""
