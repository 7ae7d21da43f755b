"""MLflow "model from code" entry: MLflow copies this file into the logged model and runs it at
load time to obtain the pyfunc (no pickled object is stored). The class lives in pyfunc_model."""

import mlflow

from vlalign.tracking.pyfunc_model import VLMPolicy

mlflow.models.set_model(VLMPolicy())
