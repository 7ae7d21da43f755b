"""Which MLflow store the `vlalign` command uses, run as a user runs it: fresh processes, each
in a clean working directory.

One `vlalign run` (a tiny SFT, 2 steps, `--no-ray`) trains and registers a version with
MLFLOW_TRACKING_URI set and no `tracking.uri` in the recipe: the run and the version must land
in that store, not in ./mlruns. Other processes then evaluate `models:/NAME@candidate` from that
store three ways (the variable, `--tracking-uri`, and the embedded default of a project folder
whose ./mlruns is that store), and none may leave MLflow's default `mlflow.db` behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from eval_support import synth_eval

from vlalign.tracking.registry import aliases
from vlalign.tracking.store import client_for, resolve_store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
NAME = "store-policy"


def vlalign(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 600):
    """The `vlalign` console script in a fresh process, in `cwd`, with MLflow's variables unset
    unless `env` sets them."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    base["MLFLOW_DISABLE_TELEMETRY"] = "true"
    base["PYTHONPATH"] = os.pathsep.join([str(REPO / "platform"), str(REPO)])
    exe = Path(sys.executable).with_name("vlalign")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vlalign.cli"]
    return subprocess.run(
        [*cmd, *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def strays(folder: Path) -> list[str]:
    """MLflow stores a process must not create in its working directory."""
    return sorted(p.name for p in (folder / "mlflow.db", folder / "mlruns") if p.exists())


@pytest.fixture(scope="module")
def registered(tmp_path_factory, model_cache):
    """(store folder, store URI, eval data): a version of NAME registered by `vlalign run` with
    MLFLOW_TRACKING_URI pointing at <project>/mlruns/mlflow.db."""
    root = tmp_path_factory.mktemp("store-cli")
    project = root / "project"  # its ./mlruns is the store the variable names
    runner = root / "runner"  # a clean folder the run is started from
    project.mkdir()
    runner.mkdir()
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    recipe = runner / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "extends": "tiny/sft",
                "name": "store-sft",
                "model": {"cache_dir": model_cache},
                "data": {"synth_pairs": 32},
                "train": {"max_steps": 2, "checkpoint_every": 2},
                "tracking": {"registered_model": NAME, "experiment": "store-tests"},
            }
        )
    )
    run = vlalign(
        runner, "run", str(recipe), "--no-ray", "--no-eval", env={"MLFLOW_TRACKING_URI": uri}
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # the status line says which store, and why
    assert f"store-sft: MLflow store {uri} (MLFLOW_TRACKING_URI)" in run.stdout, run.stdout
    assert strays(runner) == [], "the run wrote a store into its working directory"
    data = synth_eval(root / "eval-data", eval_pairs=4)
    return project, uri, data


def test_run_lands_in_the_store_mlflow_tracking_uri_names(registered):
    project, uri, _ = registered
    store = resolve_store(uri)
    client = client_for(store)
    exp = client.get_experiment_by_name("store-tests")
    assert exp is not None, "no experiment in the store MLFLOW_TRACKING_URI names"
    runs = client.search_runs([exp.experiment_id])
    assert [r.data.tags.get("mlflow.runName") for r in runs] == ["store-sft"]
    assert aliases(store, NAME) == {"candidate": "1"}
    # `registry list` in a fresh process with the variable finds it too
    listed = vlalign(project.parent, "registry", "list", NAME, env={"MLFLOW_TRACKING_URI": uri})
    assert listed.returncode == 0, listed.stderr
    assert "candidate" in listed.stdout
    assert strays(project.parent) == []
    # MLFLOW_REGISTRY_URI moves the registry alone: names resolve there, runs stay elsewhere
    (project.parent / "other").mkdir(exist_ok=True)
    other = f"sqlite:///{project.parent / 'other' / 'mlflow.db'}"
    moved = vlalign(
        project.parent,
        "registry",
        "list",
        NAME,
        env={"MLFLOW_TRACKING_URI": other, "MLFLOW_REGISTRY_URI": uri},
    )
    assert moved.returncode == 0 and "candidate" in moved.stdout, moved.stderr
    empty = vlalign(project.parent, "registry", "list", NAME, env={"MLFLOW_REGISTRY_URI": other})
    assert empty.returncode == 2, empty.stderr
    assert f"no registered model {NAME!r} in {other}" in empty.stderr, empty.stderr


@pytest.mark.parametrize("how", ["variable", "flag", "embedded"])
def test_eval_of_a_registered_alias_from_a_fresh_process(registered, tmp_path, how):
    """The README's `vlalign eval --model models:/NAME@ALIAS`, in a new process."""
    project, uri, data = registered
    env, flags, cwd = {}, [], tmp_path / "clean"
    cwd.mkdir()
    if how == "variable":
        env = {"MLFLOW_TRACKING_URI": uri}
    elif how == "flag":
        flags = ["--tracking-uri", uri]
    else:  # the project folder: its ./mlruns is the embedded default store
        cwd = project
    out = tmp_path / "out"
    ev = vlalign(
        cwd,
        "eval",
        "--model",
        f"models:/{NAME}@candidate",
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-samples",
        "4",
        *flags,
        env=env,
    )
    assert ev.returncode == 0, ev.stdout[-2000:] + ev.stderr[-2000:]
    source = {"variable": "MLFLOW_TRACKING_URI", "flag": "tracking.uri", "embedded": "embedded"}
    assert f"MLflow store {uri} ({source[how]}" in ev.stdout, ev.stdout
    card = json.loads((out / "scorecard.json").read_text())
    assert card["model"] == f"models:/{NAME}@candidate" and card["metrics"]["n_total"] == 4
    assert not (cwd / "mlflow.db").exists(), "eval left MLflow's default mlflow.db behind"
    if how != "embedded":
        assert strays(cwd) == []


def test_an_unknown_alias_is_one_line_naming_the_store(registered, tmp_path):
    _, uri, data = registered
    ev = vlalign(
        tmp_path,
        "eval",
        "--model",
        f"models:/{NAME}@nope",
        "--data",
        str(data),
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert ev.returncode == 2, ev.stderr
    assert f"models:/{NAME}@nope: not found in MLflow ({uri})" in ev.stderr
    assert "Traceback" not in ev.stderr and strays(tmp_path) == []
