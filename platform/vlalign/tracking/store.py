"""Where runs and models are stored: the tracking URI and the one-time creation of the store.

The store is, in this order: a recipe's `tracking.uri` (or `--tracking-uri`), else the
MLFLOW_TRACKING_URI environment variable (as every MLflow user expects; KubeRay manifests and
runtime envs set it), else the embedded default: a local SQLite store `<cwd>/mlruns/mlflow.db`
with artifacts under `<cwd>/mlruns/artifacts`. The model registry is MLFLOW_REGISTRY_URI when
set (the recipe has no registry key), else the tracking store. Several processes creating a NEW SQLite store at once race in its alembic
migration, so the driver calls `prepare_store()` once before any worker starts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from vlalign.errors import VlalignError

# MLflow 3 sends usage telemetry unless told not to; this platform never phones home.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

EMBEDDED_DIR = "mlruns"
EMBEDDED_DB = "mlflow.db"
EMBEDDED_ARTIFACTS = "artifacts"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
REGISTRY_ENV = "MLFLOW_REGISTRY_URI"
SOURCE_EMBEDDED = "embedded default"


@dataclass(frozen=True)
class Store:
    """A resolved MLflow store.

    uri: tracking URI. artifact_root: where new experiments keep artifacts (a file:// URI for the
    embedded store; None when a tracking server decides). registry_uri: the model registry when
    it is not the tracking store (MLFLOW_REGISTRY_URI). source: where the URI came from (shown
    on status lines; not part of equality).
    """

    uri: str
    artifact_root: str | None
    registry_uri: str | None = None
    source: str = field(default=SOURCE_EMBEDDED, compare=False)

    @property
    def registry(self) -> str:
        """The model registry URI (the tracking store unless MLFLOW_REGISTRY_URI names another)."""
        return self.registry_uri or self.uri

    def describe(self) -> str:
        """One line for status output: the store, where it came from, and a separate registry."""
        text = f"MLflow store {self.uri} ({self.source})"
        if self.registry_uri and self.registry_uri != self.uri:
            text += f", registry {self.registry_uri} ({REGISTRY_ENV})"
        return text

    @property
    def is_sqlite(self) -> bool:
        return self.uri.startswith("sqlite:")

    @property
    def is_server(self) -> bool:
        return self.uri.startswith(("http://", "https://"))

    @property
    def sqlite_path(self) -> Path | None:
        """The database file of a SQLite store."""
        if not self.is_sqlite:
            return None
        return Path(self.uri.removeprefix("sqlite:///"))


def embedded_store(base_dir: str | Path | None = None) -> Store:
    """The embedded default under `base_dir` (default: the current directory)."""
    root = (Path(base_dir) if base_dir else Path.cwd()).resolve() / EMBEDDED_DIR
    return Store(
        uri=f"sqlite:///{root / EMBEDDED_DB}",
        artifact_root=(root / EMBEDDED_ARTIFACTS).as_uri(),
    )


def _absolute(uri: str, base: Path, where: str) -> tuple[str, str | None]:
    """(absolute URI, artifact root) of a store URI; VlalignError naming `where` when unusable.

    Relative SQLite paths (`sqlite:///mlruns/x.db`) are made absolute against `base`."""
    if uri.startswith(("http://", "https://", "databricks")):
        return uri.rstrip("/"), None
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        path = path if path.is_absolute() else base / path
        return f"sqlite:///{path}", (path.parent / EMBEDDED_ARTIFACTS).as_uri()
    if uri.startswith(("postgresql", "mysql", "mssql")):
        return uri, None
    if uri.startswith("file:") or "://" not in uri:
        raise VlalignError(
            f"{where}: {uri!r}: file stores are not supported (the model registry needs a "
            "database); use sqlite:///PATH/mlflow.db, a tracking server http://HOST:PORT, or "
            "leave it unset for the embedded default"
        )
    raise VlalignError(f"{where}: {uri!r}: unsupported scheme (use sqlite:///, http(s)://)")


def resolve_store(uri: str | None = None, base_dir: str | Path | None = None) -> Store:
    """A tracking URI (from a recipe or `--tracking-uri`) -> Store.

    None: MLFLOW_TRACKING_URI when set, else the embedded default. The registry is
    MLFLOW_REGISTRY_URI when set, else the tracking store. Relative SQLite paths are made
    absolute against `base_dir` (default: the current directory), so that every process (and
    the UI) sees the same store.
    """
    base = (Path(base_dir) if base_dir else Path.cwd()).resolve()
    registry_env = os.environ.get(REGISTRY_ENV) or None
    registry = _absolute(registry_env, base, REGISTRY_ENV)[0] if registry_env else None
    if uri:
        source = "tracking.uri"
    elif os.environ.get(TRACKING_ENV):
        uri, source = os.environ[TRACKING_ENV], TRACKING_ENV
    else:
        store = embedded_store(base)
        return Store(store.uri, store.artifact_root, registry)
    absolute, artifact_root = _absolute(uri, base, source)
    if registry == absolute:
        registry = None
    return Store(uri=absolute, artifact_root=artifact_root, registry_uri=registry, source=source)


def prepare_store(store: Store) -> None:
    """Create the store if it does not exist yet (run ONCE in the driver, before workers).

    For SQLite this creates the folder and runs MLflow's schema migration; for a server it
    checks that the server answers. Raises VlalignError when the store cannot be reached.
    """
    from mlflow import MlflowClient

    if store.is_sqlite:
        store.sqlite_path.parent.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
    try:
        MlflowClient(tracking_uri=store.uri, registry_uri=store.registry).search_experiments(
            max_results=1
        )
    except Exception as e:
        raise VlalignError(f"{store.source}: cannot open MLflow store {store.uri}: {e}") from None
    if store.registry_uri and store.registry_uri != store.uri:
        reg = Store(store.registry_uri, None)
        if reg.is_sqlite:
            reg.sqlite_path.parent.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        try:
            MlflowClient(tracking_uri=store.uri, registry_uri=reg.uri).search_registered_models(
                max_results=1
            )
        except Exception as e:
            raise VlalignError(
                f"{REGISTRY_ENV}: cannot open MLflow registry {reg.uri}: {e}"
            ) from None


def experiment_id(store: Store, name: str) -> str:
    """Id of experiment `name`, created (with the store's artifact root) when missing."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store.uri, registry_uri=store.registry)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise VlalignError(
                f"tracking.experiment: {name!r} is deleted in {store.uri}; restore it or pick "
                "another name"
            )
        return exp.experiment_id
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"
    location = f"{store.artifact_root}/{folder}" if store.artifact_root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def activate(store: Store) -> None:
    """Point MLflow's process-wide URIs (its fluent API) at the store, leaving the MLFLOW_*
    environment variables as they were: mlflow.set_tracking_uri / set_registry_uri also write
    them, after which this process (and everything it starts) would take this store for the
    user's choice when it resolves a recipe that is silent (resolve_store)."""
    import mlflow

    saved = {k: os.environ.get(k) for k in (TRACKING_ENV, REGISTRY_ENV)}
    try:
        mlflow.set_tracking_uri(store.uri)
        mlflow.set_registry_uri(store.registry)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def client_for(store: Store):
    """An MlflowClient bound to the store (tracking and registry)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store.uri, registry_uri=store.registry)


def pin_store(recipe, base_dir: str | Path | None = None):
    """Driver side, before workers start: create the recipe's store once and return a copy of
    the recipe whose tracking.uri is absolute, so that workers (whose cwd differs, e.g. under
    Ray) log to the same store. A recipe with tracking disabled is returned unchanged."""
    if not recipe.tracking.enabled:
        return recipe
    store = resolve_store(recipe.tracking.uri, base_dir)
    prepare_store(store)
    pinned = recipe.model_copy(deep=True)
    pinned.tracking.uri = store.uri
    return pinned
