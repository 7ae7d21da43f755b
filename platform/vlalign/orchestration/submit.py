"""`vlalign submit`: run a recipe as a Ray job on a running cluster.

The recipe is loaded and validated here first (a misspelled key fails before anything is
uploaded). Then, by default, the fully resolved recipe (extends merged, overrides applied) is
written to a fresh folder that becomes the job's working_dir, and the job's entrypoint is
`vlalign run <name>.yaml`. With `working_dir`, that folder is uploaded instead, the recipe must
live inside it, and the entrypoint names the recipe by its relative path plus the overrides.

Inside the job, `vlalign run` finds the cluster through RAY_ADDRESS (set by Ray's job supervisor)
and runs the recipe's TorchTrainer there (`--no-ray`: in the job's own process).

Shell variables of the submitting machine do not reach a job: the runtime env's env_vars carry
them. They come from, last wins: a runtime env file (cluster/runtime_env.yaml), the variables of
PASSTHROUGH_ENV set here, and `--env KEY=VALUE`.
"""

from __future__ import annotations

import os
import re
import shlex
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from vlalign.config.loading import find_recipe, load_recipe, recipe_to_yaml
from vlalign.errors import VlalignError
from vlalign.orchestration import jobs

# Library settings that must reach the job's processes (names only: values come from here).
PASSTHROUGH_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_DISABLE_TELEMETRY",
    "DS_ACCELERATOR",
    "TORCH_EXTENSIONS_DIR",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TOKENIZERS_PARALLELISM",
    "OMP_NUM_THREADS",
)

# Never uploaded from a working_dir (on top of what its .gitignore excludes).
DEFAULT_EXCLUDES = [".venv/", "runs/", "mlruns/", ".git/", "__pycache__/", "*.pyc"]


@dataclass
class JobPlan:
    """What is sent to the cluster: the entrypoint command and the runtime env.

    `staged` is the temporary folder holding the resolved recipe (default mode); it is removed
    after the upload.
    """

    entrypoint: str
    runtime_env: dict[str, Any]
    recipe_name: str
    submission_id: str
    staged: tempfile.TemporaryDirectory | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Submitted:
    """A submitted job: its id, dashboard, and (when followed) its final status."""

    job_id: str
    dashboard: str
    status: str | None = None


def parse_env(items: list[str]) -> dict[str, str]:
    """`["A=1", "B=x"]` -> {"A": "1", "B": "x"}; a missing `=` is an error naming the item."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise VlalignError(f"--env {item!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


def load_runtime_env_file(path: str | Path) -> dict[str, Any]:
    """A runtime env YAML (cluster/runtime_env.yaml): a mapping whose env_vars are strings."""
    p = Path(path)
    if not p.is_file():
        raise VlalignError(f"runtime env file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise VlalignError(f"runtime env file {p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise VlalignError(f"runtime env file {p}: top level must be a mapping")
    env_vars = data.get("env_vars") or {}
    if not isinstance(env_vars, dict):
        raise VlalignError(f"runtime env file {p}: env_vars must be a mapping")
    for key, value in env_vars.items():
        if isinstance(value, (dict, list)) or value is None:
            raise VlalignError(f"runtime env file {p}: env_vars.{key} must be a string")
    data["env_vars"] = {str(k): str(v) for k, v in env_vars.items()}
    return data


def job_env_vars(
    file_env: dict[str, str], env: dict[str, str], environ: dict[str, str] | None = None
) -> dict[str, str]:
    """env_vars of the job: file < PASSTHROUGH_ENV from `environ` < explicit `env`."""
    environ = dict(os.environ) if environ is None else environ
    out = dict(file_env)
    out.update({k: environ[k] for k in PASSTHROUGH_ENV if environ.get(k)})
    out.update(env)
    return out


def _add_pip(runtime_env: dict[str, Any], packages: list[str]) -> None:
    """Append packages to the runtime env's pip field (a list or Ray's {packages: [...]} form);
    an empty pip field is dropped (it would build a pip env for nothing)."""
    pip = runtime_env.get("pip")
    if isinstance(pip, dict):
        pip = {**pip, "packages": [*pip.get("packages", []), *packages]}
        empty = not pip["packages"]
    else:
        pip = [*(pip or []), *packages]
        empty = not pip
    if empty:
        runtime_env.pop("pip", None)
    else:
        runtime_env["pip"] = pip


def _check_runtime_env(runtime_env: dict[str, Any], source: str | None) -> None:
    """Ray's own validation of the runtime env, as a user error naming the file."""
    from ray.runtime_env import RuntimeEnv

    try:
        RuntimeEnv(**runtime_env)
    except (TypeError, ValueError) as e:
        where = f" (from {source})" if source else ""
        raise VlalignError(f"invalid runtime env{where}: {e}") from None


def plan_job(
    recipe_ref: str,
    overrides: list[str] | None = None,
    *,
    working_dir: str | None = None,
    runtime_env_file: str | None = None,
    env: dict[str, str] | None = None,
    pip: list[str] | None = None,
    no_ray: bool = False,
    command: str = "vlalign",
    environ: dict[str, str] | None = None,
) -> JobPlan:
    """Validate the recipe and build the job's entrypoint and runtime env (nothing is sent)."""
    overrides = list(overrides or [])
    recipe = load_recipe(recipe_ref, overrides)  # schema errors stop here, before any upload
    base = load_runtime_env_file(runtime_env_file) if runtime_env_file else {}
    runtime_env: dict[str, Any] = {k: v for k, v in base.items() if k != "env_vars"}
    runtime_env["env_vars"] = job_env_vars(base.get("env_vars", {}), env or {}, environ)
    _add_pip(runtime_env, pip or [])
    runtime_env.setdefault("excludes", DEFAULT_EXCLUDES)

    staged = None
    if working_dir is None:
        staged = tempfile.TemporaryDirectory(prefix="vlalign-job-")
        recipe_file = re.sub(r"[^\w.-]", "_", recipe.name) + ".yaml"
        (Path(staged.name) / recipe_file).write_text(recipe_to_yaml(recipe), encoding="utf-8")
        runtime_env["working_dir"] = staged.name
        args = [recipe_file]
    else:
        wd = Path(working_dir).resolve()
        if not wd.is_dir():
            raise VlalignError(f"--working-dir {working_dir}: not a directory")
        recipe_path = find_recipe(recipe_ref).resolve()
        try:
            rel = recipe_path.relative_to(wd)
        except ValueError:
            raise VlalignError(
                f"recipe {recipe_path} is not inside --working-dir {wd}: the job could not read it"
            ) from None
        runtime_env["working_dir"] = str(wd)
        args = [str(rel), *overrides]
    _check_runtime_env(runtime_env, runtime_env_file)
    entry = [*shlex.split(command), "run", *args]
    if no_ray:
        entry.append("--no-ray")
    submission_id = f"vlalign-{recipe.name}-{uuid.uuid4().hex[:8]}"
    return JobPlan(
        entrypoint=shlex.join(entry),
        runtime_env=runtime_env,
        recipe_name=recipe.name,
        submission_id=submission_id,
        staged=staged,
    )


def submit(
    recipe_ref: str,
    address: str | None,
    overrides: list[str] | None = None,
    *,
    follow: bool = False,
    working_dir: str | None = None,
    runtime_env_file: str | None = None,
    env: dict[str, str] | None = None,
    pip: list[str] | None = None,
    no_ray: bool = False,
    command: str = "vlalign",
    out: TextIO | None = None,
    follow_timeout_s: float | None = None,
) -> Submitted:
    """Submit a recipe as a Ray job; with `follow`, stream its logs until it ends."""
    plan = plan_job(
        recipe_ref,
        overrides,
        working_dir=working_dir,
        runtime_env_file=runtime_env_file,
        env=env,
        pip=pip,
        no_ray=no_ray,
        command=command,
    )
    client = jobs.connect(address)
    try:
        with jobs.ray_errors(client.get_address()):
            job_id = jobs.submit_with_agent_wait(
                client,
                entrypoint=plan.entrypoint,
                runtime_env=plan.runtime_env,
                submission_id=plan.submission_id,
                metadata={"vlalign_recipe": plan.recipe_name},
            )
    finally:
        if plan.staged is not None:
            plan.staged.cleanup()
    dashboard = client.get_address()
    if not follow:
        return Submitted(job_id, dashboard)
    status = jobs.follow(client, job_id, out=out, timeout_s=follow_timeout_s)
    return Submitted(job_id, dashboard, status)
