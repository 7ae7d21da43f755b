"""Ray orchestration: a thin shell around the training loop.

- `ray_train.run_on_ray(recipe, address)`: the loop in N Ray Train workers (TorchTrainer), with
  checkpoints reported to Ray Train and restarts from the latest one.
- `submit.submit(...)`: a recipe as a Ray job on a running cluster (JobSubmissionClient).
- `jobs`: list / logs / stop of those jobs.
- `cluster`: start or join the Ray cluster a run uses.
"""
