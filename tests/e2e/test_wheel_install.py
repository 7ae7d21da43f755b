"""A non-editable install serves the shipped recipes and DeepSpeed templates itself.

Build a wheel from a copy of the checkout, install it (no dependencies) into a new venv whose
only other packages are this environment's (a .pth line pointing at its site-packages, so
nothing is downloaded), then, from a directory outside the checkout with PYTHONPATH unset:
`vlalign ls`, `vlalign validate tiny/dpo` and a 2-step `vlalign run tiny/sft --no-ray`. The
installed package, not the checkout, must be what runs and what holds the files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# What a source distribution of vlalign holds (the top-level layout of the design card).
SOURCES = ("pyproject.toml", "README.md", "platform", "data_pipeline", "recipes", "cluster")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (
        f"{' '.join(map(str, cmd))}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _copy_sources(src: Path) -> Path:
    src.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    return src


def _wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(venv dir, environment for commands run in it) with the wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_sources(tmp / "src")
    env = _clean_env()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", ".", "-w", str(tmp)], src, env)
    (wheel,) = tmp.glob("vlalign-*.whl")
    names = _wheel_names(wheel)
    assert "vlalign/_shipped/recipes/tiny/dpo.yaml" in names
    assert "vlalign/_shipped/deepspeed/zero2.json" in names

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    py = venv / "bin" / "python"
    site = _run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env
    )
    shared = Path(
        sysconfig.get_paths()["purelib"]
    ).resolve()  # torch, transformers, ... (no vlalign)
    Path(site.stdout.strip(), "_shared_site_packages.pth").write_text(f"{shared}\n")
    _run([*pip, "--python", str(py), "install", "--no-deps", "-q", str(wheel)], tmp, env)
    env["DS_ACCELERATOR"] = "cpu"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return venv, env


def test_installed_package_is_the_one_that_runs(installed, tmp_path):
    venv, env = installed
    code = (
        "import sys, vlalign, data_pipeline, vlalign._shipped as s; "
        "print(vlalign.__file__); print(data_pipeline.__file__); "
        "print(s.recipes_dir()); print(s.deepspeed_dir()); print('\\n'.join(sys.path))"
    )
    out = _run([str(venv / "bin" / "python"), "-c", code], tmp_path, env).stdout.splitlines()
    venv_dir = str(venv.resolve())
    for path in out[:4]:  # the code and both shipped folders are the venv's own
        assert Path(path).resolve().is_relative_to(venv_dir), path
    checkout = {ROOT.resolve(), (ROOT / "platform").resolve()}
    assert not checkout & {Path(p).resolve() for p in out[4:] if p}, out[4:]


def test_ls_validate_and_a_tiny_run_from_outside_the_checkout(installed, tmp_path, model_cache):
    venv, env = installed
    exe = str(venv / "bin" / "vlalign")
    assert not tmp_path.resolve().is_relative_to(ROOT)

    listing = _run([exe, "ls"], tmp_path, env).stdout
    assert "tiny/dpo " in listing and "llava-1.5-7b/dpo-lora" in listing

    checked = _run([exe, "validate", "tiny/dpo"], tmp_path, env).stdout
    assert checked.startswith("ok: tiny/dpo")

    run = _run(
        [
            exe,
            "run",
            "tiny/sft",
            "--no-ray",
            "--no-eval",
            "train.max_steps=2",
            "tracking.enabled=false",
            "data.synth_pairs=64",
            f"model.cache_dir={model_cache}",
        ],
        tmp_path,
        env,
        timeout=900,
    ).stdout
    assert "done: tiny-sft: 2 steps this run" in run
    export = tmp_path / "runs" / "tiny-sft" / "export"
    assert (export / "adapter_config.json").is_file() and (export / "recipe.yaml").is_file()


def test_a_wheel_built_from_the_sdist_has_them_too(tmp_path):
    """`python -m build` makes the sdist first, then the wheel from it: both carry the files."""
    src = _copy_sources(tmp_path / "src")
    build = "from setuptools import build_meta as b; import sys; print(b.{}(sys.argv[1]))"
    env = _clean_env()
    sdist = _run([sys.executable, "-c", build.format("build_sdist"), str(tmp_path)], src, env)
    archive = tmp_path / sdist.stdout.strip().splitlines()[-1]
    shutil.unpack_archive(archive, tmp_path / "unpacked")
    (tree,) = (tmp_path / "unpacked").iterdir()
    assert (tree / "recipes" / "tiny" / "dpo.yaml").is_file()
    wheel = _run([sys.executable, "-c", build.format("build_wheel"), str(tmp_path)], tree, env)
    names = _wheel_names(tmp_path / wheel.stdout.strip().splitlines()[-1])
    shipped = {n for n in names if n.startswith("vlalign/_shipped/")}
    recipes = {str(p.relative_to(ROOT)) for p in (ROOT / "recipes").rglob("*.yaml")}
    templates = {p.name for p in (ROOT / "cluster" / "deepspeed").glob("*.json")}
    assert shipped >= {f"vlalign/_shipped/{r}" for r in recipes}
    assert shipped >= {f"vlalign/_shipped/deepspeed/{t}" for t in templates}
