"""Shared fixtures: a session-wide cache of built-in tiny models, quiet and single-threaded torch."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> str:
    """A directory where built-in tiny models are materialized once per test session."""
    return str(tmp_path_factory.mktemp("model-cache"))


@pytest.fixture(autouse=True)
def _no_mlflow_uri_variables():
    """Each test starts without MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI (vlalign honors them
    where a recipe is silent): neither a developer's shell nor a test that called
    mlflow.set_tracking_uri (which also writes the variable) decides another test's store."""
    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
