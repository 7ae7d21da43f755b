"""`RunLogger`: what the training loop logs to MLflow, from rank 0 only.

One run per recipe execution: experiment and run name from the recipe; params are the flattened
resolved recipe (`train.lr`, `peft.r`, ...); the resolved recipe YAML is the artifact
`recipe.yaml`; per-step metrics; library versions, git commit and hardware as tags; the shard
set's manifest digest and location as the run's input (`mlflow.log_input`), so every model traces
back to its exact shards. A run that raises ends FAILED with the error as a tag and `error.txt`;
given the run id stored in a training checkpoint, `start()` continues the same run.

Usage (rank 0; other ranks get a disabled logger whose methods do nothing):

    logger = RunLogger.for_recipe(recipe, rank=rank)
    with logger.run(recipe, resume_run_id=ckpt.get("mlflow_run_id")):
        logger.log_dataset(recipe.data.train, context="training")
        logger.log_metrics({"loss": 1.2}, step=1)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import traceback
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from vlalign.config import Recipe, recipe_to_yaml
from vlalign.errors import DataError, VlalignError
from vlalign.tracking import scorecard as sc
from vlalign.tracking.store import Store, experiment_id, prepare_store, resolve_store

RECIPE_ARTIFACT = "recipe.yaml"
TAG_RECIPE_DIGEST = "vlalign.recipe_digest"
TAG_RECIPE_NAME = "vlalign.recipe"
TAG_DATA_DIGEST = "vlalign.data_digest"
TAG_DATA_SOURCE = "vlalign.data_source"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_ERROR = "vlalign.error"
TAG_RESUMES = "vlalign.resumes"
TAG_CHANGED = "vlalign.resume_changed_params"
MANIFEST = "manifest.json"
# Keys a manifest may hold its dataset digest under (the data pipeline writes the first).
DIGEST_KEYS = ("dataset_digest", "digest")
LIBRARIES = ("torch", "transformers", "peft", "deepspeed", "ray", "mlflow", "webdataset", "vlalign")
_MAX_TAG = 5000


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {'a.b.c': str(value)}; lists and None become JSON text."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (dict, list, tuple)) or value is None:
            out[name] = json.dumps(value)
        else:
            out[name] = str(value)
    return out


def recipe_params(recipe: Recipe) -> dict[str, str]:
    """The flattened resolved recipe: {'train.lr': '0.001', 'peft.r': '8', ...}."""
    data = recipe.model_dump(mode="json")
    data.pop("extends", None)
    return flatten(data)


def recipe_digest(recipe: Recipe) -> str:
    """sha256 of the resolved recipe YAML: the recipe's identity in tags and lineage."""
    return hashlib.sha256(recipe_to_yaml(recipe).encode()).hexdigest()


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a run depends on (missing ones are skipped)."""
    out = {}
    for lib in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[lib] = metadata.version(lib)
    return out


def git_commit(path: str | Path | None = None) -> str | None:
    """HEAD commit of the git repository holding `path` (default: cwd), '+dirty' if modified."""
    cwd = str(path or Path.cwd())
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = head.stdout.strip()
    return commit + ("+dirty" if status.returncode == 0 and status.stdout.strip() else "")


def hardware() -> dict[str, str]:
    """Host name, CPU model and count, memory, and GPUs (names) of this machine."""
    out = {"host.name": socket.gethostname(), "host.cpu_count": str(os.cpu_count() or 0)}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                out["host.cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        out["host.memory_gib"] = f"{mem / 2**30:.1f}"
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        names = [torch.cuda.get_device_name(i) for i in range(n)]
    except Exception:  # a broken CUDA setup must not stop a run from being logged
        names = []
    out["host.gpu_count"] = str(len(names))
    out["host.gpu"] = ", ".join(names) if names else "none"
    return out


def read_manifest(location: str | Path | dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(manifest, where) from a shard directory, a manifest.json path, or a manifest dict."""
    if isinstance(location, dict):
        return location, "<manifest dict>"
    path = Path(location)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: no {MANIFEST} (is {location} a shard set directory?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: top level must be an object")
    return manifest, str(path)


def manifest_digest(manifest: dict[str, Any], where: str) -> str:
    """The dataset digest a manifest declares (DataError naming the file when it has none)."""
    for key in DIGEST_KEYS:
        value = manifest.get(key)
        if isinstance(value, str) and value:
            return value
    raise DataError(f"{where}: no dataset digest (expected key {' or '.join(DIGEST_KEYS)!r})")


class RunLogger:
    """Logs one MLflow run. Disabled (every method a no-op) on ranks other than 0.

    The store must exist before workers start: the driver calls
    `vlalign.tracking.store.prepare_store` (for_recipe does it when it is the only process).
    """

    def __init__(self, store: Store, enabled: bool = True) -> None:
        self.store = store
        self.enabled = enabled
        self.run_id: str | None = None

    @classmethod
    def for_recipe(
        cls, recipe: Recipe, rank: int = 0, base_dir: str | Path | None = None
    ) -> RunLogger:
        """A logger for `recipe`'s store: enabled on rank 0 when recipe.tracking.enabled."""
        store = resolve_store(recipe.tracking.uri, base_dir)
        return cls(store, enabled=recipe.tracking.enabled and rank == 0)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, recipe: Recipe, resume_run_id: str | None = None) -> str | None:
        """Start (or resume, given the run id from a checkpoint) the run; returns its id."""
        if not self.enabled:
            return None
        import mlflow

        prepare_store(self.store)
        mlflow.set_tracking_uri(self.store.uri)
        mlflow.set_registry_uri(self.store.uri)
        if resume_run_id:
            return self._resume(recipe, resume_run_id)
        exp_id = experiment_id(self.store, recipe.tracking.experiment)
        run = mlflow.start_run(
            experiment_id=exp_id, run_name=recipe.tracking.run_name or recipe.name
        )
        self.run_id = run.info.run_id
        mlflow.log_params(recipe_params(recipe), run_id=self.run_id)
        mlflow.log_text(recipe_to_yaml(recipe), RECIPE_ARTIFACT, run_id=self.run_id)
        self._set_tags(self._run_tags(recipe))
        return self.run_id

    def _resume(self, recipe: Recipe, run_id: str) -> str:
        import mlflow
        from mlflow.exceptions import MlflowException

        client = mlflow.MlflowClient()
        try:
            previous = client.get_run(run_id)
        except MlflowException:
            raise VlalignError(
                f"cannot resume MLflow run {run_id}: not found in {self.store.uri}"
            ) from None
        mlflow.start_run(run_id=run_id)
        self.run_id = run_id
        logged = previous.data.params
        params = recipe_params(recipe)
        missing = {k: v for k, v in params.items() if k not in logged}
        if missing:
            mlflow.log_params(missing, run_id=run_id)
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        resumes = int(previous.data.tags.get(TAG_RESUMES, "0")) + 1
        tags = {TAG_RESUMES: str(resumes)}
        if changed:  # params are immutable in MLflow: record what the resumed recipe changed
            tags[TAG_CHANGED] = ",".join(changed)[:_MAX_TAG]
        self._set_tags(tags)
        return run_id

    def end(self, status: str = "FINISHED") -> None:
        """End the run with an MLflow status (FINISHED, FAILED, KILLED)."""
        if not self.enabled or self.run_id is None:
            return
        import mlflow

        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            mlflow.end_run(status=status)
        else:
            mlflow.MlflowClient().set_terminated(self.run_id, status=status)

    def fail(self, error: BaseException) -> None:
        """Record `error` (tag vlalign.error + error.txt with the traceback) and end FAILED."""
        if not self.enabled or self.run_id is None:
            return
        import mlflow

        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        with contextlib.suppress(Exception):  # recording must not hide the original error
            self._set_tags({TAG_ERROR: f"{type(error).__name__}: {error}"[:_MAX_TAG]})
            mlflow.log_text(text, "error.txt", run_id=self.run_id)
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        self.end(status)

    @contextlib.contextmanager
    def run(self, recipe: Recipe, resume_run_id: str | None = None) -> Iterator[str | None]:
        """Context manager: start/resume; FINISHED on success, FAILED (error recorded) on raise."""
        run_id = self.start(recipe, resume_run_id)
        try:
            yield run_id
        except BaseException as e:
            self.fail(e)
            raise
        self.end("FINISHED")

    # -- logging ---------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Per-step scalar metrics (non-numbers are rejected by MLflow)."""
        if not self.enabled or self.run_id is None or not metrics:
            return
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, run_id=self.run_id)

    def log_dataset(
        self,
        manifest: str | Path | dict[str, Any],
        context: str = "training",
        source: str | None = None,
        split: str | None = None,
    ) -> str | None:
        """Log a shard set as the run's input; returns its digest.

        `manifest`: the shard directory (holding manifest.json), the manifest file, or its dict
        (then `source` is required). The digest is the manifest's dataset digest; the source is
        the shard location (directory or URL prefix).
        """
        if not self.enabled or self.run_id is None:
            return None
        import mlflow
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        data, where = read_manifest(manifest)
        digest = manifest_digest(data, where)
        if source is None:
            if isinstance(manifest, dict):
                raise VlalignError("log_dataset: a manifest dict needs source= (shard location)")
            path = Path(manifest)
            source = str((path if path.is_dir() else path.parent).resolve())
        name = str(data.get("name") or Path(source.rstrip("/")).name or "shards")
        from mlflow.exceptions import MlflowException

        try:
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": same class
                warnings.simplefilter("ignore", UserWarning)
                resolved = resolve_dataset_source(source)
        except MlflowException as e:
            raise VlalignError(f"log_dataset: unsupported shard location {source!r}: {e}") from None
        ds = MetaDataset(source=resolved, name=name, digest=digest)
        tags = {"split": split} if split else None
        self._activate()
        mlflow.log_input(ds, context=context, tags=tags)
        if context == "training":
            self._set_tags({TAG_DATA_DIGEST: digest, TAG_DATA_SOURCE: source})
        return digest

    def log_scorecard(self, card: str | Path | dict[str, Any]) -> dict[str, Any] | None:
        """Log a scorecard as eval/<name>/scorecard.json and its metrics as eval/<name>/<m>."""
        if not self.enabled or self.run_id is None:
            return None
        import mlflow

        card = sc.load_scorecard(card)
        mlflow.log_dict(card, sc.artifact_path(card["name"]), run_id=self.run_id)
        metrics = {
            f"eval/{card['name']}/{k}": float(v)
            for k, v in card["metrics"].items()
            if isinstance(v, (int, float))
        }
        if metrics:
            mlflow.log_metrics(metrics, run_id=self.run_id)
        return card

    def log_model(self, export_dir: str | Path, recipe: Recipe, name: str = "model"):
        """The exported policy (adapter or merged model + processor + recipe) as a pyfunc model.

        Returns MLflow's ModelInfo (model_uri `models:/m-...`), or None when disabled.
        """
        if not self.enabled or self.run_id is None:
            return None
        from vlalign.tracking.pyfunc_model import log_policy_model

        self._activate()
        return log_policy_model(export_dir, recipe, name=name)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """A file or directory as a run artifact."""
        if not self.enabled or self.run_id is None:
            return
        import mlflow

        p = Path(local_path)
        if p.is_dir():
            mlflow.log_artifacts(str(p), artifact_path=artifact_path, run_id=self.run_id)
        else:
            mlflow.log_artifact(str(p), artifact_path=artifact_path, run_id=self.run_id)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Run tags (values cut at MLflow's limit)."""
        if self.enabled and self.run_id is not None:
            self._set_tags(tags)

    # -- helpers ---------------------------------------------------------------------------
    def _activate(self) -> None:
        """Make this run the fluent active run of the current thread (for log_input/log_model)."""
        import mlflow

        active = mlflow.active_run()
        if active is None or active.info.run_id != self.run_id:
            mlflow.start_run(run_id=self.run_id)

    def _set_tags(self, tags: dict[str, str]) -> None:
        import mlflow
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)[:_MAX_TAG]) for k, v in tags.items()]
        mlflow.MlflowClient().log_batch(self.run_id, tags=batch)

    def _run_tags(self, recipe: Recipe) -> dict[str, str]:
        tags = {f"version.{k}": v for k, v in library_versions().items()}
        tags.update(hardware())
        tags[TAG_RECIPE_DIGEST] = recipe_digest(recipe)
        tags[TAG_RECIPE_NAME] = recipe.name
        tags["vlalign.method"] = f"{recipe.method.name}/{recipe.method.loss}"
        tags["vlalign.base_model"] = base_model_spec(recipe)
        commit = git_commit()
        if commit:
            tags[TAG_GIT_COMMIT] = commit
        return tags


def base_model_spec(recipe: Recipe) -> str:
    """The base model as one string: `tiny-llava (seed 0, nano)` or the path/hub id@revision."""
    m = recipe.model
    from vlalign.config.schema import BUILTIN_MODELS

    if m.name in BUILTIN_MODELS:
        return f"{m.name} (seed {m.seed}, {m.size})"
    return f"{m.name}@{m.revision}" if m.revision else m.name
