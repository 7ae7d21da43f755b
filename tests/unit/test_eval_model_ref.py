"""Resolving `--model` references to what is loaded (no weights needed: files only)."""

from __future__ import annotations

import json

import pytest

from vlalign.config.schema import ModelConfig, Recipe
from vlalign.errors import VlalignError
from vlalign.evaluation.model_ref import resolve_model_ref


def _adapter(d, base: str | None = None, **files):
    d.mkdir(parents=True, exist_ok=True)
    (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    (d / "adapter_model.safetensors").write_bytes(b"")
    for name, text in files.items():
        (d / name.replace("__", ".")).write_text(text)
    return d


def _full(d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (d / "model.safetensors").write_bytes(b"")
    return d


def test_builtin_takes_the_recipe_model_settings():
    r = Recipe(model=ModelConfig(name="tiny-qwen2-vl", seed=3, size="small", cache_dir="/c"))
    spec = resolve_model_ref("builtin:tiny-llava", r)
    assert spec.kind == "builtin" and spec.path is None
    assert (spec.base.name, spec.base.seed, spec.base.size, spec.base.cache_dir) == (
        "tiny-llava",
        3,
        "small",
        "/c",
    )
    with pytest.raises(VlalignError, match="no built-in 'tiny-x'"):
        resolve_model_ref("builtin:tiny-x")


def test_adapter_base_from_export_info_beats_the_rest(tmp_path):
    base = ModelConfig(name="tiny-idefics3", seed=7).model_dump(mode="json")
    d = _adapter(
        tmp_path / "export",
        base="/gone/tiny-llava-nano-px32-seed0-v1",
        vlalign_export__json=json.dumps({"kind": "adapter", "base_model": base}),
    )
    r = Recipe(model=ModelConfig(name="tiny-qwen2-vl", cache_dir="/cache"))
    spec = resolve_model_ref(str(d), r)
    assert spec.kind == "adapter" and spec.path == str(d)
    assert (spec.base.name, spec.base.seed) == ("tiny-idefics3", 7)
    assert spec.base.cache_dir == "/cache"  # where this machine keeps built-ins
    assert spec.value_head is None


def test_adapter_base_from_a_materialized_builtin_path(tmp_path):
    # the recorded path no longer exists, but its name says which built-in it was
    d = _adapter(tmp_path / "a", base="/elsewhere/tiny-qwen2-vl-small-px48-seed5-v1")
    spec = resolve_model_ref(str(d))
    assert (spec.base.name, spec.base.size, spec.base.image_size, spec.base.seed) == (
        "tiny-qwen2-vl",
        "small",
        48,
        5,
    )
    # an existing local base directory is loaded as it is
    local = _full(tmp_path / "base-model")
    spec = resolve_model_ref(str(_adapter(tmp_path / "b", base=str(local))))
    assert spec.base.name == str(local)


def test_adapter_base_when_nothing_local_names_it(tmp_path):
    d = _adapter(tmp_path / "a", base="some-org/hub-model")
    # the recipe's model wins over a recorded name that is not local (e.g. a local copy)
    assert resolve_model_ref(str(d), Recipe()).base.name == "tiny-llava"
    # without a recipe the recorded name is tried as a hub id
    assert resolve_model_ref(str(d)).base.name == "some-org/hub-model"
    nothing = _adapter(tmp_path / "b")
    assert resolve_model_ref(str(nothing), Recipe()).base.name == "tiny-llava"
    with pytest.raises(VlalignError, match="records no usable base model; pass --recipe"):
        resolve_model_ref(str(nothing))


def test_model_found_one_level_down_and_ambiguity(tmp_path):
    root = tmp_path / "download"
    _adapter(root / "artifacts" / "export", base="tiny-llava")
    (root / "MLmodel").write_text("flavors: {}")
    spec = resolve_model_ref(str(root))
    assert spec.path == str(root / "artifacts" / "export") and spec.base.name == "tiny-llava"
    _full(root / "artifacts" / "other")
    with pytest.raises(VlalignError, match="several models under .*export, artifacts/other"):
        resolve_model_ref(str(root))


def test_full_model_and_reward_head(tmp_path):
    d = _full(tmp_path / "m")
    (d / "vlalign_export.json").write_text(
        json.dumps({"kind": "full", "family": "llava", "base_model": {"name": "tiny-llava"}})
    )
    spec = resolve_model_ref(str(d))
    assert spec.kind == "full" and spec.base.name == str(d) and spec.base.family == "llava"
    assert spec.reference is not None and spec.reference.name == "tiny-llava"
    rm = _adapter(tmp_path / "rm", base="tiny-llava")
    (rm / "value_head.safetensors").write_bytes(b"")
    assert resolve_model_ref(str(rm)).value_head == str(rm / "value_head.safetensors")


def test_bad_references(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(VlalignError, match="a model is a directory"):
        resolve_model_ref(str(tmp_path / "file.txt"))
    with pytest.raises(VlalignError, match="no such directory, and not models:/"):
        resolve_model_ref("tiny-llama")
    with pytest.raises(VlalignError, match="holds no model"):
        resolve_model_ref(str(tmp_path))
    with pytest.raises(VlalignError, match="--model is required"):
        resolve_model_ref("")
