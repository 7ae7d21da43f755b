"""Model registry: register a logged policy as a new version, tag it, list versions with aliases.

A version carries the tags that make it traceable and comparable: recipe_digest, data_digest,
base_model, method, git_commit and the safety scorecard's headline metrics (`scorecard.<m>`).
New versions get the alias `candidate`; `champion` is moved only by promotion. Aliases only,
never MLflow stages. (On SQLite, search_model_versions returns empty aliases, so aliases are
read from the registered model.)
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vlalign.config import Recipe
from vlalign.errors import VlalignError
from vlalign.scorecard import headline, load_scorecard
from vlalign.tracking import description as desc
from vlalign.tracking.run_logger import (
    RECIPE_ARTIFACT,
    TAG_DATA_DIGEST,
    TAG_GIT_COMMIT,
    base_model_spec,
    recipe_digest,
)
from vlalign.tracking.scorecard_log import artifact_path, metrics_from_tags, metrics_to_tags
from vlalign.tracking.store import Store, activate, client_for

CANDIDATE = "candidate"
CHAMPION = "champion"
TAG_SCORECARD_NAME = "scorecard_name"
TAG_PROMOTION = "promotion"


@dataclass
class VersionInfo:
    """One registered version as `registry list` shows it."""

    version: str
    aliases: list[str]
    run_id: str | None
    created: datetime
    tags: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def promotion(self) -> str:
        return self.tags.get(TAG_PROMOTION, "-")


def version_tags(
    recipe: Recipe,
    card: dict[str, Any] | None,
    data_digest: str | None,
    git_commit: str | None,
) -> dict[str, str]:
    """The tags a new version carries (missing values are written as 'unknown')."""
    tags = {
        "recipe_digest": recipe_digest(recipe),
        "data_digest": data_digest or "unknown",
        "base_model": base_model_spec(recipe),
        "method": f"{recipe.method.name}/{recipe.method.loss}",
        "git_commit": git_commit or "unknown",
    }
    if card is not None:
        tags[TAG_SCORECARD_NAME] = card["name"]
        tags.update(metrics_to_tags(headline(card)))
    return tags


def register_version(
    store: Store,
    name: str,
    model_uri: str,
    recipe: Recipe,
    run_id: str | None = None,
    scorecard: str | Path | dict[str, Any] | None = None,
    data_digest: str | None = None,
    git_commit: str | None = None,
):
    """Register `model_uri` (models:/m-... from log_model) as a new version of `name`.

    data_digest and git_commit default to the run's tags. The version gets the alias
    `candidate`. Returns MLflow's ModelVersion.
    """
    import mlflow

    client = client_for(store)
    card = load_scorecard(scorecard) if scorecard is not None else None
    if run_id is not None and (data_digest is None or git_commit is None):
        run_tags = client.get_run(run_id).data.tags
        data_digest = data_digest or run_tags.get(TAG_DATA_DIGEST)
        git_commit = git_commit or run_tags.get(TAG_GIT_COMMIT)
    if data_digest is None and card is not None:
        data_digest = card.get("data_digest")
    tags = version_tags(recipe, card, data_digest, git_commit)
    activate(store)
    mv = mlflow.register_model(model_uri, name, tags=tags)
    client.set_registered_model_alias(name, CANDIDATE, mv.version)
    metrics = {k: float(v) for k, v in card["metrics"].items()} if card else {}
    describe_version(store, name, mv.version, desc.VERDICT_CANDIDATE, metrics=metrics)
    return client.get_model_version(name, mv.version)


def describe_version(
    store: Store,
    name: str,
    version: str | int,
    verdict: str,
    gates: list[desc.GateRow] | tuple = (),
    champion: str | None = None,
    metrics: dict[str, float] | None = None,
    vs_champion: desc.VsChampion | None = None,
) -> str:
    """Write the version's description (verdict, gates, the comparison with the champion,
    headline scorecard, a link to the HTML scorecard; see vlalign.tracking.description) and
    return it. metrics default: the version's logged scorecard (scorecard_metrics)."""
    client = client_for(store)
    mv = client.get_model_version(name, str(version))
    if metrics is None:
        metrics = scorecard_metrics(store, mv)
    experiment = None
    if mv.run_id:
        try:
            experiment = client.get_run(mv.run_id).info.experiment_id
        except Exception:  # the run was deleted: no link
            experiment = None
    card_name = mv.tags.get(TAG_SCORECARD_NAME)
    details = {
        k: mv.tags[k]
        for k in ("method", "base_model", "recipe_digest", "data_digest", "git_commit")
        if k in mv.tags
    }
    if mv.run_id:
        details["run"] = mv.run_id
    if vs_champion is not None and vs_champion.artifact:
        link = desc.artifact_link(experiment, mv.run_id, vs_champion.artifact)
        vs_champion = replace(vs_champion, link=link)
    text = desc.render(
        verdict=verdict,
        metrics=metrics,
        scorecard_name=card_name,
        gates=gates,
        champion=champion,
        link=desc.scorecard_link(experiment, mv.run_id, card_name),
        details=details,
        vs_champion=vs_champion,
    )
    client.update_model_version(name, str(version), description=text)
    return text


def _require_model(client, store: Store, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        raise VlalignError(f"no registered model {name!r} in {store.registry}") from None


def get_version(store: Store, name: str, version: str | int):
    """ModelVersion `version` of `name`, or VlalignError naming both."""
    from mlflow.exceptions import MlflowException

    client = client_for(store)
    _require_model(client, store, name)
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise VlalignError(f"model {name!r} has no version {version} in {store.registry}") from None


def aliases(store: Store, name: str) -> dict[str, str]:
    """alias -> version for a registered model."""
    client = client_for(store)
    return {k: str(v) for k, v in _require_model(client, store, name).aliases.items()}


def version_by_alias(store: Store, name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client_for(store).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


@contextlib.contextmanager
def _quiet_download() -> Iterator[None]:
    """No MLflow progress bar while fetching a few small files (scorecard, recipe)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _download(store: Store, run_id: str, path: str, dst: str) -> str:
    with _quiet_download():
        return client_for(store).download_artifacts(run_id, path, dst)


def version_scorecard(store: Store, mv) -> dict[str, Any] | None:
    """A version's whole scorecard (its run's eval/<name>/scorecard.json), or None when the
    version has no run or scorecard name, or the artifact cannot be read."""
    name = mv.tags.get(TAG_SCORECARD_NAME)
    if not (mv.run_id and name):
        return None
    with tempfile.TemporaryDirectory(prefix="vlalign-scorecard-") as tmp:
        try:
            path = _download(store, mv.run_id, artifact_path(name), tmp)
        except Exception:  # artifact store unreachable or file absent: the caller falls back
            return None
        return load_scorecard(path) if path else None


def scorecard_metrics(store: Store, mv, card: dict[str, Any] | None = None) -> dict[str, float]:
    """A version's scorecard metrics: its run's eval/<name>/scorecard.json (or `card`, that
    file already read), else its tags."""
    card = card if card is not None else version_scorecard(store, mv)
    if card is not None:
        return {k: float(v) for k, v in card["metrics"].items()}
    return metrics_from_tags(mv.tags)


def run_recipe(store: Store, run_id: str) -> Recipe:
    """The resolved recipe a run logged as recipe.yaml."""
    import yaml
    from pydantic import ValidationError

    with tempfile.TemporaryDirectory(prefix="vlalign-recipe-") as tmp:
        try:
            path = _download(store, run_id, RECIPE_ARTIFACT, tmp)
        except Exception as e:
            raise VlalignError(f"run {run_id} has no {RECIPE_ARTIFACT} artifact: {e}") from None
        text = Path(path).read_text()
    try:
        return Recipe.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as e:
        raise VlalignError(f"run {run_id}: {RECIPE_ARTIFACT} is not a valid recipe: {e}") from None


def list_versions(store: Store, name: str) -> list[VersionInfo]:
    """Every version of `name` (newest first) with its aliases, tags and scorecard metrics."""
    client = client_for(store)
    model = _require_model(client, store, name)
    by_version: dict[str, list[str]] = {}
    for alias, v in model.aliases.items():
        by_version.setdefault(str(v), []).append(alias)
    out = []
    for mv in client.search_model_versions(f"name='{name}'"):
        out.append(
            VersionInfo(
                version=str(mv.version),
                aliases=sorted(by_version.get(str(mv.version), [])),
                run_id=mv.run_id,
                created=datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=timezone.utc),
                tags=dict(mv.tags),
                metrics=metrics_from_tags(mv.tags),
            )
        )
    return sorted(out, key=lambda v: int(v.version), reverse=True)


def model_tag_json(store: Store, name: str, key: str, default: Any) -> Any:
    """A registered-model tag holding JSON (default when absent)."""
    model = _require_model(client_for(store), store, name)
    raw = model.tags.get(key)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise VlalignError(f"model {name!r}: tag {key!r} is not valid JSON: {raw!r}") from None
