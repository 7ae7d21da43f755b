"""One install script for every machine: `make setup`, CI and the cluster image all run
cluster/install.sh, and the KubeRay / launcher files name the image its Dockerfile builds.

Docker has no engine here, so the image is checked by what its Dockerfile runs: the script's
exact command line from the Dockerfile is run with --dry-run, as are the Makefile's, and the
steps each would take are compared. The script itself runs (dry) in a fresh process.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "cluster" / "install.sh"
DOCKERFILE = ROOT / "cluster" / "docker" / "Dockerfile"


def dry_run(*args: str, path_prepend: Path | None = None, **env: str) -> list[str]:
    """The steps the script would take (its '+ ' lines) and its other lines, run for real with
    --dry-run in a fresh bash."""
    full = {**os.environ, **env}
    if path_prepend is not None:
        full["PATH"] = f"{path_prepend}{os.pathsep}{full['PATH']}"
    p = subprocess.run(
        ["bash", str(SCRIPT), *args, "--dry-run"],
        capture_output=True,
        text=True,
        env=full,
        timeout=60,
        cwd="/",
    )
    assert p.returncode == 0, p.stderr
    return (p.stdout + p.stderr).splitlines()


def make_dry(target: str) -> list[str]:
    """The commands `make TARGET` would run (all of them, as on a machine with no .venv)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    p = subprocess.run(
        ["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def script_args(line: str) -> list[str]:
    """The arguments a command line passes to cluster/install.sh."""
    words = shlex.split(line)
    i = next(i for i, w in enumerate(words) if w.endswith("cluster/install.sh"))
    return words[i + 1 :]


def dockerfile_run() -> str:
    """The Dockerfile's RUN instruction that calls the install script (continuations joined)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    runs = [ln for ln in text.splitlines() if ln.startswith("RUN ") and "install.sh" in ln]
    assert len(runs) == 1, runs
    return runs[0].removeprefix("RUN ").split("&&")[0]


def test_make_setup_and_the_image_run_the_same_script():
    setup = [ln for ln in make_dry("setup") if "cluster/install.sh" in ln]
    assert len(setup) == 2, setup  # the install, then the browser check
    assert script_args(setup[0]) == ["--venv", ".venv", "--torch", "auto", "--extras", "dev,bench"]
    assert script_args(setup[1]) == ["--only-browser"]
    # make test needs the browser too, even where .venv already exists
    assert any("--only-browser" in ln for ln in make_dry("test"))
    docker = DOCKERFILE.read_text()
    assert re.search(r"^COPY cluster cluster$", docker, flags=re.M)
    assert script_args(dockerfile_run()) == ["--system", "--torch", "cuda", "--no-browser"]
    # CI relies on make setup and installs nothing of its own
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make setup" in ci and "apt-get" not in ci


def test_steps_without_a_gpu_put_the_cpu_torch_first(tmp_path):
    lines = dry_run("--venv", str(tmp_path / "v"), "--extras", "dev,bench", PATH=os.environ["PATH"])
    steps = [ln[2:] for ln in lines if ln.startswith("+ ")]
    py = f"{tmp_path / 'v'}/bin/python"
    has_gpu = shutil.which("nvidia-smi") is not None
    spec = "torch" if has_gpu else "torch==2.13.0"
    assert steps[:4] == [
        f"python3 -m venv {tmp_path / 'v'}",
        f"{py} -m pip install -q --upgrade pip",
        f"{py} -m pip install -q {spec}",
        f"{py} -m pip install -q -e {ROOT}[dev,bench]",
    ]
    assert not (tmp_path / "v").exists(), "--dry-run created the venv"


def test_a_gpu_machine_gets_the_cuda_build(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
    smi.chmod(0o755)
    lines = dry_run("--venv", str(tmp_path / "v"), path_prepend=fake)
    assert "torch: cuda build (torch)" in lines
    assert f"+ {tmp_path / 'v'}/bin/python -m pip install -q torch" in lines
    # and forcing cpu there wins
    forced = dry_run("--venv", str(tmp_path / "v"), "--torch", "cpu", path_prepend=fake)
    assert "torch: cpu build (torch==2.13.0)" in forced


def test_the_image_gets_cuda_torch_vlalign_and_no_browser():
    lines = dry_run(*script_args(dockerfile_run()), VLALIGN_BROWSERS="no-such-browser")
    steps = [ln[2:] for ln in lines if ln.startswith("+ ")]
    assert steps == [
        "python3 -m pip install -q --upgrade pip",
        "python3 -m pip install -q torch",
        f"python3 -m pip install -q -e {ROOT}",
    ]
    assert not any("chromium" in ln for ln in lines)


def test_a_missing_browser_is_installed_from_debian_where_possible(tmp_path):
    lines = dry_run(
        "--venv", str(tmp_path / "v"), "--extras", "dev", VLALIGN_BROWSERS="no-such-browser"
    )
    can_apt = os.geteuid() == 0 and shutil.which("apt-get") is not None
    if can_apt:
        assert "+ apt-get update -qq" in lines
        assert "+ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium" in lines
    else:
        assert any("chromium is missing and apt-get cannot run here" in ln for ln in lines)
    # only the dev extra needs it; a found browser is just reported
    assert not any("chromium" in ln for ln in dry_run("--venv", str(tmp_path / "v")))
    found = dry_run("--only-browser", VLALIGN_BROWSERS="bash")
    assert found == [f"chromium: found {shutil.which('bash')}"]


def test_bad_arguments_exit_2():
    for args in (["--venv", "x", "--system"], [], ["--system", "--torch", "rocm"], ["--nope"]):
        p = subprocess.run(["bash", str(SCRIPT), *args, "--dry-run"], capture_output=True)
        assert p.returncode == 2, args


def test_cluster_files_name_the_image_the_dockerfile_builds():
    makefile = (ROOT / "Makefile").read_text()
    image = re.search(r"^IMAGE \?= (\S+)$", makefile, flags=re.M).group(1)
    build = [ln for ln in make_dry("image") if ln.startswith("docker build")]
    assert build == [f"docker build -f cluster/docker/Dockerfile -t {image} ."]
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"$', pyproject, flags=re.M).group(1)
    assert image.endswith(f":{version}-cuda"), (image, version)

    def images(node) -> list[str]:
        if isinstance(node, dict):
            found = [v for k, v in node.items() if k == "image" and isinstance(v, str)]
            return found + [i for v in node.values() for i in images(v)]
        if isinstance(node, list):
            return [i for v in node for i in images(v)]
        return []

    files = sorted((ROOT / "cluster").glob("kuberay/*.yaml")) + sorted(
        (ROOT / "cluster").glob("launcher/*.yaml")
    )
    named = {f.name: images(yaml.safe_load(f.read_text())) for f in files}
    assert all(named.values()), named
    assert {i for found in named.values() for i in found} == {image}, named
    readme = (ROOT / "cluster" / "README.md").read_text()
    assert f"docker build -f cluster/docker/Dockerfile -t {image} ." in readme
    assert f"-t {image} ." in DOCKERFILE.read_text()
