"""The demo builds DeepSpeed's CPU comm op itself, behind a status line, only when the machine's
extension cache lacks it; with the op cached, or on GPU workers, it says nothing and builds nothing."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from vlalign import demo
from vlalign.config import load_recipe
from vlalign.training import ds_ops

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny" / "demo.yaml"


@pytest.fixture
def recipe():
    return load_recipe(RECIPE)


def _run(monkeypatch, recipe, built: bool) -> tuple[str, list[int]]:
    calls: list[int] = []
    monkeypatch.setattr(ds_ops, "cpu_comm_op_built", lambda: built)
    monkeypatch.setattr(ds_ops, "build_cpu_comm_op", lambda: calls.append(1) or 42.4)
    term = io.StringIO()
    demo._prebuild_deepspeed_ops(recipe, demo._Status(term))
    return term.getvalue(), calls


def test_missing_op_is_built_behind_a_status_line(monkeypatch, recipe):
    shown, calls = _run(monkeypatch, recipe, built=False)
    assert calls == [1]
    lines = shown.splitlines()
    assert len(lines) == 2, shown
    assert "first run on this machine: compiling DeepSpeed's CPU communication op" in lines[0]
    assert str(ds_ops.op_cache_dir()) in lines[0]
    assert lines[1].endswith("deepspeed CPU communication op built in 42 s"), lines[1]


def test_cached_op_is_neither_built_nor_announced(monkeypatch, recipe):
    shown, calls = _run(monkeypatch, recipe, built=True)
    assert (shown, calls) == ("", [])


def test_gpu_workers_skip_the_cpu_op(monkeypatch, recipe):
    gpu = recipe.model_copy(
        update={"resources": recipe.resources.model_copy(update={"gpus_per_worker": 1})}
    )
    shown, calls = _run(monkeypatch, gpu, built=False)
    assert (shown, calls) == ("", [])
