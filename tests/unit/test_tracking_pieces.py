"""Tracking building blocks without a store: URIs, params, scorecards, git, requests, exports."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from vlalign import scorecard as sc
from vlalign.config.schema import Recipe
from vlalign.errors import DataError, VlalignError
from vlalign.tracking.commands import ui_command
from vlalign.tracking.pyfunc_model import decode_image, export_kind
from vlalign.tracking.run_logger import (
    flatten,
    git_commit,
    manifest_digest,
    recipe_digest,
    recipe_params,
    short_digest,
)
from vlalign.tracking.scorecard_log import metrics_from_tags, metrics_to_tags
from vlalign.tracking.store import embedded_store, resolve_store


def test_embedded_default_is_sqlite_under_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    s = resolve_store(None)
    assert s.uri == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert s.artifact_root == (tmp_path.resolve() / "mlruns" / "artifacts").as_uri()
    assert s.is_sqlite and not s.is_server
    assert embedded_store(tmp_path) == s


def test_relative_sqlite_and_server_uris(tmp_path):
    s = resolve_store("sqlite:///db/x.db", base_dir=tmp_path)
    assert s.uri == f"sqlite:///{tmp_path.resolve()}/db/x.db"
    assert s.artifact_root == (tmp_path.resolve() / "db" / "artifacts").as_uri()
    srv = resolve_store("http://127.0.0.1:5000/")
    assert srv.uri == "http://127.0.0.1:5000" and srv.artifact_root is None and srv.is_server


def test_mlflow_variables_are_honored_where_the_recipe_is_silent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env/mlflow.db")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    env = resolve_store(None)
    assert env.uri == f"sqlite:///{tmp_path.resolve()}/env/mlflow.db"
    assert env.registry == env.uri and env.registry_uri is None
    assert "MLFLOW_TRACKING_URI" in env.describe() and env.uri in env.describe()
    # the recipe (or --tracking-uri) wins over the variable
    explicit = resolve_store("sqlite:///recipe.db")
    assert explicit.uri == f"sqlite:///{tmp_path.resolve()}/recipe.db"
    assert "(tracking.uri)" in explicit.describe()
    # the registry variable moves the registry only; the recipe has no registry key
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://127.0.0.1:5001")
    both = resolve_store(None)
    assert both.uri == env.uri and both.registry == "http://127.0.0.1:5001"
    assert resolve_store("sqlite:///recipe.db").registry == "http://127.0.0.1:5001"
    assert "registry http://127.0.0.1:5001 (MLFLOW_REGISTRY_URI)" in both.describe()
    # neither set: the embedded default, said so
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI")
    assert resolve_store(None) == embedded_store(tmp_path)
    assert "(embedded default)" in resolve_store(None).describe()
    # a bad variable is named in the error
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/mlruns")
    with pytest.raises(VlalignError, match="MLFLOW_TRACKING_URI: 'file:///tmp/mlruns'"):
        resolve_store(None)


@pytest.mark.parametrize("uri", ["mlruns", "file:///tmp/mlruns", "ftp://x"])
def test_unsupported_stores_are_errors(uri):
    with pytest.raises(VlalignError, match="tracking.uri"):
        resolve_store(uri)


def test_ui_binds_loopback_with_the_store(tmp_path):
    cmd = ui_command(embedded_store(tmp_path), 5123)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--port") + 1] == "5123"
    assert cmd[cmd.index("--backend-store-uri") + 1].endswith("/mlruns/mlflow.db")


def test_params_are_the_flattened_resolved_recipe():
    r = Recipe(name="x")
    p = recipe_params(r)
    assert p["train.lr"] == str(r.train.lr) and p["peft.r"] == "8" and p["name"] == "x"
    assert p["peft.target_modules"].startswith('["q_proj"')
    assert p["engine.overrides"] == "{}" and p["data.train"] == "null"
    assert "extends" not in p
    assert flatten({"a": {"b": {"c": 1}}, "d": [1, 2]}) == {"a.b.c": "1", "d": "[1, 2]"}


def test_a_mapping_whose_keys_mlflow_refuses_is_one_json_param():
    """`category/*` (a max_regression key) is not a valid MLflow param name: the mapping is
    logged whole as JSON; a mapping of valid names is still flattened."""
    from mlflow.utils.validation import _validate_param_name

    r = Recipe(name="x")
    r.promotion.max_regression = {"category/*": 0.02, "harmful_refusal_rate": 0.01}
    p = recipe_params(r)
    assert p["promotion.max_regression"] == '{"category/*": 0.02, "harmful_refusal_rate": 0.01}'
    for name in p:
        _validate_param_name(name)
    assert flatten({"m": {"a//b": 1}}) == {"m": '{"a//b": 1}'}
    assert flatten({"m": {"s/harmful_refusal_rate": 1}}) == {"m.s/harmful_refusal_rate": "1"}


def test_recipe_digest_changes_with_the_recipe():
    a, b = Recipe(name="x"), Recipe(name="x")
    assert recipe_digest(a) == recipe_digest(b) and len(recipe_digest(a)) == 64
    b.train.lr = 5e-4
    assert recipe_digest(a) != recipe_digest(b)


def test_manifest_digest_and_its_mlflow_form():
    d = "sha256:" + "ab" * 32
    assert manifest_digest({"dataset_digest": d}, "m.json") == d
    assert short_digest(d) == "ab" * 16 and len(short_digest(d)) <= 36
    with pytest.raises(DataError, match=r"m.json: no dataset digest"):
        manifest_digest({"splits": {}}, "m.json")


def test_git_commit_of_a_checkout(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    assert git_commit(tmp_path) is None
    git("init", "-q")
    (tmp_path / "f").write_text("1")
    git("add", "f")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True
    ).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "f").write_text("2")
    assert git_commit(tmp_path) == head + "+dirty"


def test_scorecard_contract_is_checked(tmp_path):
    good = {"schema": sc.SCHEMA, "name": "final", "metrics": {"harmful_refusal_rate": 0.9}}
    assert sc.load_scorecard(good)["name"] == "final"
    (tmp_path / "scorecard.json").write_text("{not json")
    with pytest.raises(VlalignError, match=r"scorecard .*scorecard.json: not valid JSON"):
        sc.load_scorecard(tmp_path)
    with pytest.raises(VlalignError, match="key 'schema'"):
        sc.load_scorecard({**good, "schema": "other/1"})
    with pytest.raises(VlalignError, match=r"metrics.harmful_refusal_rate is 'high'"):
        sc.load_scorecard({**good, "metrics": {"harmful_refusal_rate": "high"}})
    tags = metrics_to_tags(sc.headline({"metrics": {"harmful_refusal_rate": 0.9, "x": 1}}))
    assert tags == {"scorecard.harmful_refusal_rate": "0.9"}
    assert metrics_from_tags({**tags, "scorecard_name": "final", "other": "1"}) == {
        "harmful_refusal_rate": 0.9
    }


def test_request_images_decode_or_fail_naming_the_row():
    from tracking_support import png_bytes

    png = png_bytes((1, 2, 3), size=8)
    assert decode_image(png, 0).getpixel((0, 0)) == (1, 2, 3)
    assert decode_image(base64.b64encode(png).decode(), 0).size == (8, 8)
    assert decode_image(None, 0) is None
    with pytest.raises(VlalignError, match="request row 3: image is not valid base64"):
        decode_image("not base64!", 3)
    with pytest.raises(VlalignError, match="request row 1: image bytes are not a readable image"):
        decode_image(b"plain bytes", 1)


def test_export_kind(tmp_path):
    with pytest.raises(VlalignError, match="not an exported model"):
        export_kind(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert export_kind(tmp_path) == "merged"
    (tmp_path / "adapter_config.json").write_text("{}")
    assert export_kind(Path(tmp_path)) == "adapter"
