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
