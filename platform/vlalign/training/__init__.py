"""The training core: DeepSpeed engine setup, the loop, checkpoints + resume, export. Knows nothing of Ray."""
