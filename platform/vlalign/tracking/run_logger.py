"""`RunLogger`: what the training loop logs to MLflow, from rank 0 only.

One run per recipe execution: experiment and run name from the recipe; params are the flattened
resolved recipe (`train.lr`, `peft.r`, ...); the resolved recipe YAML is the artifact
`recipe.yaml`; per-step metrics; library versions, git commit and hardware as tags; the shard
set's manifest digest and location as the run's input (`mlflow.log_input`), so every model traces
back to its exact shards. A run that raises ends FAILED with the error as a tag and `error.txt`;
given the run id stored in a training checkpoint, `start()` continues the same run.

Usage (rank 0; other ranks get a disabled logger whose methods do nothing):

    logger = RunLogger(recipe, rank=rank)
    with logger.run(recipe, resume_run_id=ckpt.get("mlflow_run_id")):
        logger.log_dataset(shard_dir)            # digest + location from its manifest.json
        logger.log_metrics({"loss": 1.2}, step=1)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
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
from vlalign.scorecard import load_scorecard
from vlalign.tracking.scorecard_log import log_scorecard
from vlalign.tracking.store import (
    Store,
    activate,
    experiment_id,
    prepare_store,
    resolve_store,
)

RECIPE_ARTIFACT = "recipe.yaml"
TAG_RECIPE_DIGEST = "vlalign.recipe_digest"
TAG_RECIPE_NAME = "vlalign.recipe"
TAG_DATA_DIGEST = "vlalign.data_digest"
TAG_DATA_SOURCE = "vlalign.data_source"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_ERROR = "vlalign.error"
TAG_PREVIOUS_ERROR = "vlalign.previous_error"
TAG_RESUMES = "vlalign.resumes"
TAG_CHANGED = "vlalign.resume_changed_params"
MANIFEST = "manifest.json"
# Keys a manifest may hold its dataset digest under (the data pipeline writes the first).
DIGEST_KEYS = ("dataset_digest", "digest")
LIBRARIES = ("torch", "transformers", "peft", "deepspeed", "ray", "mlflow", "webdataset", "vlalign")
_MAX_TAG = 5000


_PARAM_NAME = re.compile(r"[/\w.\- :]*")  # what MLflow accepts in a param name (POSIX)


def _param_name_ok(name: str) -> bool:
    """True when MLflow takes `name` as a param name: its characters, and no path that
    normalizes to another name ('a//b', 'a/./b', 'a/')."""
    return bool(_PARAM_NAME.fullmatch(name)) and posixpath.normpath(name) == name


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {'a.b.c': str(value)}; lists and None become JSON text, and so does a
    mapping whose keys MLflow would refuse in a param name (`promotion.max_regression` keys such
    as `category/*`: one param holding the JSON mapping)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not all(_param_name_ok(f"{name}.{k}") for k in value):
            out[name] = json.dumps(value, sort_keys=True)
        elif isinstance(value, dict) and value:
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
    """HEAD commit ('+dirty' when tracked files changed) of the git checkout holding `path`.

    Default: the checkout vlalign's own code runs from (the code that trained), else the cwd.
    None when neither is a git checkout.
    """
    import vlalign

    candidates = [path] if path is not None else [Path(vlalign.__file__).parent, Path.cwd()]
    for cwd in candidates:
        try:
            head = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
            )
            if head.returncode != 0:
                continue
            status = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        dirty = status.returncode == 0 and bool(status.stdout.strip())
        return head.stdout.strip() + ("+dirty" if dirty else "")
    return None


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


def read_manifest(location: str | Path) -> tuple[dict[str, Any], str]:
    """(manifest dict, where) of a shard set directory or URL prefix (or its manifest.json).

    Read and verified by the data pipeline's loader (digests recomputed from the shard list).
    """
    from data_pipeline.manifest import load_manifest

    location = str(location)
    if location.endswith(MANIFEST):
        location = location[: -len(MANIFEST)].rstrip("/") or "."
    return load_manifest(location).model_dump(), f"{location}/{MANIFEST}"


def manifest_digest(manifest: dict[str, Any], where: str) -> str:
    """The dataset digest a manifest declares (DataError naming the file when it has none)."""
    for key in DIGEST_KEYS:
        value = manifest.get(key)
        if isinstance(value, str) and value:
            return value
    raise DataError(f"{where}: no dataset digest (expected key {' or '.join(DIGEST_KEYS)!r})")


def short_digest(digest: str) -> str:
    """'sha256:0123...' -> its first 32 hex digits (MLflow's dataset digest field holds 36)."""
    return digest.split(":")[-1][:32]


class RunLogger:
    """Logs one MLflow run. Disabled (every method a no-op) on ranks other than 0.

    `RunLogger(recipe, rank=rank)` uses the recipe's store (`tracking.uri`, default embedded) and
    is enabled when `tracking.enabled` and rank == 0; `RunLogger(store)` targets a given store.
    Several processes must not create a new SQLite store at once: in multi-process runs the
    driver calls `vlalign.tracking.store.prepare_store` before workers start.
    """

    def __init__(
        self,
        target: Recipe | Store,
        rank: int = 0,
        enabled: bool | None = None,
        base_dir: str | Path | None = None,
    ) -> None:
        if isinstance(target, Recipe):
            self.recipe: Recipe | None = target
            self.store = resolve_store(target.tracking.uri, base_dir)
            default = target.tracking.enabled
        else:
            self.recipe, self.store, default = None, target, True
        self.enabled = (default if enabled is None else enabled) and rank == 0
        self.run_id: str | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, recipe: Recipe | None = None, resume_run_id: str | None = None) -> str | None:
        """Start (or resume, given the run id from a checkpoint) the run; returns its id."""
        if not self.enabled:
            return None
        import mlflow

        recipe = self._recipe(recipe)
        prepare_store(self.store)
        activate(self.store)
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

    def _recipe(self, recipe: Recipe | None) -> Recipe:
        recipe = recipe or self.recipe
        if recipe is None:
            raise VlalignError("RunLogger: no recipe (pass it to RunLogger(...) or start(...))")
        self.recipe = recipe
        return recipe

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
        error = previous.data.tags.get(TAG_ERROR)
        if error is not None:  # the crash that was resumed from stays on record, as history
            tags[TAG_PREVIOUS_ERROR] = error
            client.delete_tag(run_id, TAG_ERROR)
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

    def finish(self) -> None:
        """End the run as FINISHED."""
        self.end("FINISHED")

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
    def run(
        self, recipe: Recipe | None = None, resume_run_id: str | None = None
    ) -> Iterator[str | None]:
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
        location: str | Path,
        manifest: dict[str, Any] | Any | None = None,
        context: str = "training",
        split: str | None = None,
    ) -> str | None:
        """Log a shard set as the run's input (mlflow.log_input); returns its digest.

        location: the shard directory or URL prefix (the dataset's source; a path to a
        manifest.json also works). manifest: its manifest (dict or the data pipeline's Manifest
        model); read from `location`/manifest.json when None. The digest is the manifest's
        dataset digest, so the run traces back to its exact shards.
        """
        if not self.enabled or self.run_id is None:
            return None
        import mlflow
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.exceptions import MlflowException

        location = str(location)
        if location.endswith(MANIFEST):
            location = location[: -len(MANIFEST)].rstrip("/") or "."
        if manifest is None:
            data, where = read_manifest(location)
        else:
            data = manifest.model_dump() if hasattr(manifest, "model_dump") else dict(manifest)
            where = f"manifest of {location}"
        digest = manifest_digest(data, where)
        if "://" not in location:
            location = str(Path(location).resolve())
        try:
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": same class
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(location)
        except MlflowException as e:
            raise VlalignError(
                f"log_dataset: unsupported shard location {location!r}: {e}"
            ) from None
        name = Path(location.rstrip("/")).name or "shards"
        # MLflow keeps at most 36 characters of a dataset digest: log the hex prefix there and
        # the full digest as an input tag and a run tag.
        ds = MetaDataset(source=source, name=name, digest=short_digest(digest))
        tags = {"dataset_digest": digest}
        if data.get("source"):
            tags["origin"] = str(data["source"])
        if split:
            tags["split"] = split
        self._activate()
        mlflow.log_input(ds, context=context, tags=tags)
        if context == "training":
            self._set_tags({TAG_DATA_DIGEST: digest, TAG_DATA_SOURCE: location})
        return digest

    def log_scorecard(self, card: str | Path | dict[str, Any]) -> dict[str, Any] | None:
        """Log a scorecard under eval/<name>/ (scorecard.json, chart, page; metrics eval/<name>/<m>).

        Uses vlalign.tracking.scorecard_log, the one writer of that layout. Returns the
        validated scorecard dict.
        """
        if not self.enabled or self.run_id is None:
            return None
        card = load_scorecard(card)
        log_scorecard(card, self.run_id, card["name"])
        return card

    def log_model(self, export_dir: str | Path, recipe: Recipe | None = None, name: str = "model"):
        """The exported policy (adapter or merged model + processor + recipe) as a pyfunc model.

        Returns MLflow's ModelInfo (model_uri `models:/m-...`), or None when disabled.
        """
        if not self.enabled or self.run_id is None:
            return None
        from vlalign.tracking.pyfunc_model import log_policy_model

        self._activate()
        return log_policy_model(export_dir, self._recipe(recipe), name=name)

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
