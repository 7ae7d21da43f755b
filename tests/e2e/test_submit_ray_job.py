"""A real Ray head (cluster/local/start-head.sh), a recipe submitted with `vlalign submit
--follow` to SUCCEEDED, `vlalign jobs list/logs`, token auth refusing a wrong token, and
cluster/local/stop-head.sh stopping that head (and only it).

The head gets its own ports, temp dir and token file, so other Ray clusters on the machine
(other tests, other users) are neither joined nor stopped. The job runs `vlalign run` on Ray
inside the cluster: its driver joins the head through RAY_ADDRESS and trains one Ray Train
worker for two steps. ~1 minute on 2 cores.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
VLALIGN = VENV_BIN / "vlalign"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _non_loopback_ipv4() -> str | None:
    import psutil

    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


def _accepts(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


@pytest.fixture(scope="module")
def head():
    """A Ray head on free loopback ports with a private temp dir and token; stopped after."""
    temp_dir = Path(tempfile.mkdtemp(prefix="vlr-", dir="/tmp"))  # short: Ray socket paths
    gcs_port, dash_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `vlalign` for the job
        "RAY_AUTH_TOKEN_PATH": str(temp_dir / "token"),
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(var, None)
    start = subprocess.run(
        [
            str(ROOT / "cluster/local/start-head.sh"),
            "--port",
            str(gcs_port),
            "--dashboard-port",
            str(dash_port),
            "--temp-dir",
            str(temp_dir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert start.returncode == 0, start.stdout + start.stderr
    info = {
        "dashboard": f"http://127.0.0.1:{dash_port}",
        "gcs_port": gcs_port,
        "dash_port": dash_port,
        "temp_dir": temp_dir,
        "env": env,
        "start_output": start.stdout,
    }
    try:
        yield info
    finally:
        stop = subprocess.run(
            [str(ROOT / "cluster/local/stop-head.sh"), "--temp-dir", str(temp_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        info["stop"] = stop
        shutil.rmtree(temp_dir, ignore_errors=True)


def _vlalign(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VLALIGN), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_head_is_loopback_only_with_token_auth(head):
    out = head["start_output"]
    assert f"http://127.0.0.1:{head['dash_port']}" in out and "auth: token" in out
    assert (head["temp_dir"] / "token").stat().st_mode & 0o077 == 0  # token readable by owner only
    assert _accepts("127.0.0.1", head["gcs_port"]) and _accepts("127.0.0.1", head["dash_port"])
    other = _non_loopback_ipv4()
    if other is not None:  # a machine with no other interface has nothing more to check
        assert not _accepts(other, head["gcs_port"]), f"GCS reachable on {other}"
        assert not _accepts(other, head["dash_port"]), f"dashboard reachable on {other}"
    # A wrong token is refused with a one-line error, not a traceback.
    bad = _vlalign(
        ["jobs", "list", "--address", head["dashboard"]],
        {**head["env"], "RAY_AUTH_TOKEN": "not-the-token"},
        timeout=120,
    )
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "refused the request" in bad.stderr and "Traceback" not in bad.stderr


def test_submit_follow_list_logs(head, tmp_path, model_cache):
    from data_pipeline.synth import synthesize

    shards = tmp_path / "shards"
    synthesize(shards, pairs=16, seed=0)
    out_dir = tmp_path / "run"
    t0 = time.monotonic()
    sub = _vlalign(
        [
            "submit",
            "tiny/sft",
            "--address",
            head["dashboard"],
            "--follow",
            f"data.train={shards}",
            f"model.cache_dir={model_cache}",
            f"train.output_dir={out_dir}",
            "train.max_steps=2",
            "train.micro_batch_size=4",
            "tracking.enabled=false",
            "resources.num_workers=1",
        ],
        head["env"],
    )
    elapsed = time.monotonic() - t0
    text = sub.stdout + sub.stderr
    assert sub.returncode == 0, text[-4000:]
    m = re.search(r"submitted job (vlalign-tiny-sft-[0-9a-f]{8})", sub.stdout)
    assert m, sub.stdout[-2000:]
    job_id = m.group(1)
    assert f"job {job_id} SUCCEEDED" in sub.stdout
    # The followed log is the job's: the run trained on Ray inside the cluster.
    assert "1 Ray Train workers on the Ray cluster at 127.0.0.1:" in sub.stdout
    assert "done: tiny-sft: 2 steps this run" in sub.stdout
    assert (out_dir / "checkpoints" / "step-000002" / "trainer_state.json").is_file()
    assert (out_dir / "ray" / "step-000002" / "trainer_state.json").is_file()  # Ray storage
    assert (out_dir / "export" / "adapter_model.safetensors").is_file()
    print(f"submit -> SUCCEEDED in {elapsed:.1f} s")

    listed = _vlalign(["jobs", "list", "--address", head["dashboard"]], head["env"], timeout=120)
    assert listed.returncode == 0, listed.stderr
    row = next(ln for ln in listed.stdout.splitlines() if ln.startswith(job_id))
    assert "SUCCEEDED" in row and "vlalign run tiny-sft.yaml" in row

    logs = _vlalign(["jobs", "logs", job_id, "--address", head["dashboard"]], head["env"], 120)
    assert logs.returncode == 0 and "done: tiny-sft: 2 steps this run" in logs.stdout

    stop = _vlalign(["jobs", "stop", job_id, "--address", head["dashboard"]], head["env"], 120)
    assert stop.returncode == 0 and "was not running" in stop.stdout


def test_stop_head_closes_the_heads_ports(head):
    """Runs last in the module: stop the head here and check its ports closed."""
    subprocess.run(
        [str(ROOT / "cluster/local/stop-head.sh"), "--temp-dir", str(head["temp_dir"])],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (
        _accepts("127.0.0.1", head["gcs_port"]) or _accepts("127.0.0.1", head["dash_port"])
    ):
        time.sleep(0.5)
    assert not _accepts("127.0.0.1", head["gcs_port"])
    assert not _accepts("127.0.0.1", head["dash_port"])
    assert not (head["temp_dir"] / "vlalign-head.env").exists()
