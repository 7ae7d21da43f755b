"""The source root `platform/` must not shadow the standard library's `platform` module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stdlib_platform_reachable_from_repo_root():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import platform; print(platform.system()); print(platform.__file__)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    system, path = out.stdout.split()
    assert system  # e.g. Linux
    assert not path.startswith(str(ROOT / "platform")), path


def test_platform_has_no_init():
    assert not (ROOT / "platform" / "__init__.py").exists()
    assert (ROOT / "platform" / "vlalign" / "__init__.py").exists()


def test_top_level_layout():
    for name in (
        "pyproject.toml",
        "README.md",
        "Makefile",
        "platform",
        "data_pipeline",
        "recipes",
        "cluster",
        "bench",
        "tests",
        ".ci/run",
    ):
        assert (ROOT / name).exists(), name
