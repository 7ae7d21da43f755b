"""The `vlalign` console script: help, version, validate/ls/cp and error handling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlalign import __version__
from vlalign.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "vlalign"
    return subprocess.run([str(exe), *args], capture_output=True, text=True)


def test_console_script_help_and_version():
    out = run_cli("--help")
    assert out.returncode == 0
    for cmd in ("validate", "ls", "cp"):
        assert cmd in out.stdout
    out = run_cli("--version")
    assert out.stdout.strip() == f"vlalign {__version__}"


def test_ls_lists_one_recipe_per_method(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "tiny/sft" in out and "tiny/dpo" in out and "tiny/reward" in out


def test_validate_ok_and_error_without_traceback(tmp_path):
    assert run_cli("validate", "tiny/dpo").returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"lrr": 1}}))
    out = run_cli("validate", str(bad))
    assert out.returncode == 2
    assert "train.lrr: unknown key (did you mean 'train.lr'?)" in out.stderr
    assert "Traceback" not in out.stderr
    out = run_cli("--debug", "validate", str(bad))
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_cp_copies_and_keeps_extends_resolvable(tmp_path, capsys):
    assert main(["cp", "tiny/dpo", str(tmp_path)]) == 0
    copied = tmp_path / "dpo.yaml"
    assert yaml.safe_load(copied.read_text())["extends"] == "tiny/base"
    assert main(["validate", str(copied)]) == 0
    assert main(["cp", "tiny/dpo", str(tmp_path)]) == 2  # exists, no --force
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("ref", ["tiny/dpoo", "nothing.yaml"])
def test_unknown_recipe_reference(ref, capsys):
    assert main(["validate", ref]) == 2
    assert "no such recipe" in capsys.readouterr().err
