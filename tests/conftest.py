"""Shared fixtures: a session-wide cache of built-in tiny models, quiet and single-threaded torch."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

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


_RAY_WORD = re.compile(r"\bray\b|\bRay\b|vlalign demo|\"demo\"")


@functools.cache
def _uses_ray(path: str) -> bool:
    """A test module that starts (or may start) a Ray cluster: it names Ray, or runs the demo."""
    try:
        return bool(_RAY_WORD.search(Path(path).read_text(encoding="utf-8")))
    except OSError:
        return False


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """`make test` runs the suite in 2 pytest-xdist workers (`--dist loadgroup`); every module
    that may start a Ray cluster goes to one group, so two local Ray clusters never run at once
    (Ray Train's helpers attach to "the" local cluster and refuse when they find two).
    tryfirst: xdist's own hook reads the xdist_group marks to name each test's group, so they
    must be on the items before it runs (added after, they are ignored silently)."""
    for item in items:
        if _uses_ray(str(item.fspath)):
            item.add_marker(pytest.mark.xdist_group("ray"))


class _GroupCheck:
    """Fails the run when xdist did not group the marked tests (its hook renames each marked
    test `nodeid@group`; a pytest release that moves the node id breaks that silently, and two
    Ray clusters then run at once: pytest 9.2 did, so pyproject pins pytest<9.2)."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        if not (hasattr(config, "workerinput") and config.getvalue("loadgroup")):
            return
        lost = [
            i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid
        ]
        if lost:
            raise pytest.UsageError(
                f"pytest-xdist did not group {len(lost)} tests marked xdist_group (e.g. "
                f"{lost[0]}): this pytest/pytest-xdist pair breaks --dist loadgroup"
            )


def pytest_configure(config):
    config.pluginmanager.register(_GroupCheck(), "vlalign-xdist-group-check")
