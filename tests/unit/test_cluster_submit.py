"""`vlalign submit` / `vlalign jobs` without a cluster: the job plan, token discovery, errors.

The real submission to a real head is tests/e2e/test_submit_ray_job.py.
"""

from __future__ import annotations

import shlex
import socket
from pathlib import Path

import pytest
import yaml

from vlalign.cli import build_parser, main
from vlalign.errors import RecipeError, VlalignError
from vlalign.orchestration import auth, jobs
from vlalign.orchestration.submit import (
    PASSTHROUGH_ENV,
    job_env_vars,
    load_runtime_env_file,
    parse_env,
    plan_job,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_ray_env(monkeypatch, tmp_path):
    """No token or address from the machine running the tests."""
    for var in (
        "RAY_AUTH_TOKEN",
        "RAY_AUTH_TOKEN_PATH",
        "RAY_AUTH_MODE",
        "RAY_ADDRESS",
        "RAY_API_SERVER_ADDRESS",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(auth, "DEFAULT_TOKEN_PATH", tmp_path / "no-such-token")
    return tmp_path


# --- job plan ---------------------------------------------------------------------------------


def test_default_plan_uploads_the_resolved_recipe(no_ray_env):
    plan = plan_job("tiny/dpo", ["train.max_steps=3", "train.lr=3e-5"], environ={})
    argv = shlex.split(plan.entrypoint)
    assert argv == ["vlalign", "run", "tiny-dpo.yaml"]
    staged = Path(plan.runtime_env["working_dir"])
    assert sorted(p.name for p in staged.iterdir()) == ["tiny-dpo.yaml"]
    resolved = yaml.safe_load((staged / "tiny-dpo.yaml").read_text())
    assert "extends" not in resolved  # nothing relative left to find on the cluster
    assert resolved["train"]["max_steps"] == 3 and resolved["train"]["lr"] == 3e-5
    assert resolved["method"]["name"] == "dpo"  # merged from the extends chain
    assert plan.submission_id.startswith("vlalign-tiny-dpo-")
    plan.staged.cleanup()


def test_working_dir_plan_names_the_recipe_relative_and_keeps_overrides(no_ray_env):
    plan = plan_job(
        str(ROOT / "recipes/tiny/sft.yaml"),
        ["train.max_steps=2", "name=my run"],
        working_dir=str(ROOT),
        no_ray=True,
        environ={},
    )
    assert shlex.split(plan.entrypoint) == [
        "vlalign",
        "run",
        "recipes/tiny/sft.yaml",
        "train.max_steps=2",
        "name=my run",
        "--no-ray",
    ]
    assert plan.runtime_env["working_dir"] == str(ROOT)
    assert ".venv/" in plan.runtime_env["excludes"]
    assert plan.staged is None


def test_recipe_outside_working_dir_is_refused(no_ray_env, tmp_path):
    with pytest.raises(VlalignError, match="not inside --working-dir"):
        plan_job("tiny/sft", working_dir=str(tmp_path), environ={})


def test_schema_errors_stop_before_any_upload(no_ray_env):
    with pytest.raises(RecipeError, match="train.max_stepz"):
        plan_job("tiny/dpo", ["train.max_stepz=3"], environ={})


def test_env_vars_precedence_file_then_passthrough_then_explicit():
    environ = {"MLFLOW_TRACKING_URI": "http://here:5000", "DS_ACCELERATOR": "cpu", "SECRET": "x"}
    out = job_env_vars(
        {"MLFLOW_TRACKING_URI": "http://file:5000", "NCCL_DEBUG": "WARN"},
        {"DS_ACCELERATOR": "cuda"},
        environ,
    )
    assert out == {
        "MLFLOW_TRACKING_URI": "http://here:5000",
        "NCCL_DEBUG": "WARN",
        "DS_ACCELERATOR": "cuda",
    }
    assert "SECRET" not in PASSTHROUGH_ENV


def test_plan_with_runtime_env_file_and_pip(no_ray_env):
    plan = plan_job(
        "tiny/sft",
        runtime_env_file=str(ROOT / "cluster/runtime_env.yaml"),
        env={"EXTRA": "1"},
        pip=["num2words"],
        environ={"TORCH_EXTENSIONS_DIR": "/cache/ext"},
    )
    env = plan.runtime_env["env_vars"]
    assert env["EXTRA"] == "1" and env["DS_ACCELERATOR"] == "cuda"
    assert env["TORCH_EXTENSIONS_DIR"] == "/cache/ext"  # passthrough beats the file
    assert plan.runtime_env["pip"]["packages"] == ["num2words"]
    assert plan.runtime_env["config"]["setup_timeout_seconds"] == 1800
    plan.staged.cleanup()


def test_parse_env_and_bad_runtime_env_files(tmp_path):
    assert parse_env(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(VlalignError, match="'NOVALUE'"):
        parse_env(["NOVALUE"])
    bad = tmp_path / "env.yaml"
    bad.write_text("env_vars:\n  A: [1, 2]\n")
    with pytest.raises(VlalignError, match=r"env\.yaml: env_vars\.A must be a string"):
        load_runtime_env_file(bad)
    bad.write_text("- not a mapping\n")
    with pytest.raises(VlalignError, match="top level must be a mapping"):
        load_runtime_env_file(bad)
    with pytest.raises(VlalignError, match="does not exist"):
        load_runtime_env_file(tmp_path / "missing.yaml")
    bad.write_text("env_vars: {A: '1'}\nexcludes: runs\n")
    with pytest.raises(VlalignError, match=r"invalid runtime env \(from .*env\.yaml\)"):
        plan_job("tiny/sft", runtime_env_file=str(bad), environ={})


# --- token discovery ------------------------------------------------------------------------


def test_token_sources_in_rays_order(no_ray_env, monkeypatch):
    home_token = no_ray_env / "auth_token"
    home_token.write_text("home-token\n")
    monkeypatch.setattr(auth, "DEFAULT_TOKEN_PATH", home_token)
    assert auth.auth_headers() == {"Authorization": "Bearer home-token"}
    path_token = no_ray_env / "custom"
    path_token.write_text("path-token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path_token))
    assert auth.find_token() == ("path-token", str(path_token))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert auth.auth_headers() == {"Authorization": "Bearer env-token"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth.auth_headers() == {}


def test_token_mode_without_token_is_a_clear_error(no_ray_env, monkeypatch):
    assert auth.auth_headers() == {}  # no token, no mode: a cluster without auth
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    with pytest.raises(VlalignError, match="no Ray auth token found"):
        auth.auth_headers()


# --- addresses and connection errors --------------------------------------------------------


def test_resolve_address(no_ray_env, monkeypatch):
    assert jobs.resolve_address("127.0.0.1:8265") == "http://127.0.0.1:8265"
    assert jobs.resolve_address("https://head:443") == "https://head:443"
    with pytest.raises(VlalignError, match="no Ray dashboard address"):
        jobs.resolve_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address is not a dashboard
    with pytest.raises(VlalignError):
        jobs.resolve_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert jobs.resolve_address(None) == "http://head:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://api:8265")
    assert jobs.resolve_address(None) == "http://api:8265"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_dashboard_is_one_line_error(no_ray_env, capsys):
    port = _closed_port()
    rc = main(["jobs", "list", "--address", f"http://127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"cannot reach the Ray dashboard at http://127.0.0.1:{port}" in err
    assert "Traceback" not in err


def test_cli_wiring():
    parser = build_parser()
    a = parser.parse_args(
        [
            "submit",
            "tiny/dpo",
            "train.max_steps=2",
            "--address",
            "http://h:8265",
            "--follow",
            "--env",
            "A=1",
            "--env",
            "B=2",
            "--pip",
            "x",
            "--no-ray",
        ]
    )
    assert a.overrides == ["train.max_steps=2"] and a.follow and a.no_ray
    assert a.env == ["A=1", "B=2"] and a.pip == ["x"]
    assert parser.parse_args(["jobs", "logs", "ID", "--follow"]).follow
    assert parser.parse_args(["jobs", "stop", "ID"]).job_id == "ID"
    with pytest.raises(SystemExit):
        parser.parse_args(["jobs"])  # an action is required


class _AgentLater:
    """A JobSubmissionClient stand-in whose dashboard has no job agent for `busy` calls."""

    def __init__(self, busy: int, error: str = jobs.NO_AGENT + ", please try again later.."):
        self.busy, self.error, self.calls = busy, error, []

    def submit_job(self, **job):
        self.calls.append(job)
        if len(self.calls) <= self.busy:
            raise RuntimeError(f"Request failed with status code 500: {self.error}")
        return job["submission_id"]


def test_submit_waits_for_a_starting_clusters_job_agent(monkeypatch, capsys):
    monkeypatch.setattr(jobs.time, "sleep", lambda s: None)
    client = _AgentLater(busy=2)
    job_id = jobs.submit_with_agent_wait(client, submission_id="vlalign-x-1", entrypoint="e")
    assert job_id == "vlalign-x-1" and len(client.calls) == 3
    assert capsys.readouterr().err.count("job agent is not up yet") == 1  # said once


def test_submit_gives_up_after_the_wait_and_passes_other_errors_at_once(monkeypatch):
    monkeypatch.setattr(jobs.time, "sleep", lambda s: None)
    forever = _AgentLater(busy=10**9)
    with pytest.raises(RuntimeError, match=jobs.NO_AGENT):
        jobs.submit_with_agent_wait(forever, wait_s=0.0, submission_id="s", entrypoint="e")
    assert len(forever.calls) == 1
    other = _AgentLater(busy=1, error="runtime_env is invalid")
    with pytest.raises(RuntimeError, match="runtime_env is invalid"):
        jobs.submit_with_agent_wait(other, submission_id="s", entrypoint="e")
    assert len(other.calls) == 1
