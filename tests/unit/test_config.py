"""Recipe schema, loading, `extends`, overrides and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vlalign.config import Recipe, load_recipe
from vlalign.config.checks import check_recipe
from vlalign.config.loading import RECIPES_DIR, shipped_recipes
from vlalign.errors import RecipeError


def write(p: Path, data: dict) -> Path:
    p.write_text(yaml.safe_dump(data))
    return p


def test_every_field_has_a_description_and_default():
    def walk(model, path):
        for name, f in model.model_fields.items():
            assert f.description, f"{path}{name} has no description"
            ann = f.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann, f"{path}{name}.")
            elif name not in ("metric", "op", "value"):  # Gate's fields are required by design
                assert not f.is_required(), f"{path}{name} has no default"

    walk(Recipe, "")


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_validates(name):
    recipe = load_recipe(name)
    assert check_recipe(recipe) == [], name


def test_shipped_recipes_cover_every_method():
    methods = {load_recipe(p).method.name for p in shipped_recipes().values()}
    assert {"sft", "dpo", "reward"} <= methods


def test_unknown_key_names_file_path_and_suggestion(tmp_path):
    f = write(tmp_path / "r.yaml", {"train": {"lrate": 0.1}, "methd": {}})
    with pytest.raises(RecipeError) as e:
        load_recipe(f)
    msg = str(e.value)
    assert str(f) in msg
    assert "train.lrate: unknown key (did you mean 'train.lr'?)" in msg
    assert "methd: unknown key (did you mean 'method'?)" in msg


def test_wrong_type_and_range_are_reported_together(tmp_path):
    f = write(
        tmp_path / "r.yaml", {"train": {"max_steps": "many", "lr": -1}, "peft": {"dropout": 2}}
    )
    with pytest.raises(RecipeError) as e:
        load_recipe(f)
    keys = {p.split(":")[0] for p in e.value.problems}
    assert keys == {"train.max_steps", "train.lr", "peft.dropout"}


def test_loss_must_belong_to_method(tmp_path):
    f = write(tmp_path / "r.yaml", {"method": {"name": "sft", "loss": "ipo"}})
    with pytest.raises(RecipeError, match="does not belong to method"):
        load_recipe(f)


def test_default_loss_per_method(tmp_path):
    assert (
        load_recipe(write(tmp_path / "a.yaml", {"method": {"name": "dpo"}})).method.loss
        == "sigmoid"
    )
    assert (
        load_recipe(write(tmp_path / "b.yaml", {"method": {"name": "reward"}})).method.loss
        == "bradley_terry"
    )


def test_overrides_are_coerced_by_the_schema(tmp_path):
    f = write(tmp_path / "r.yaml", {})
    r = load_recipe(
        f,
        [
            "train.lr=3e-5",
            "train.max_steps=7",
            "peft.modules_to_save=[lm_head]",
            "engine.overrides.gradient_clipping=0.5",
        ],
    )
    assert r.train.lr == pytest.approx(3e-5)
    assert r.train.max_steps == 7
    assert r.peft.modules_to_save == ["lm_head"]
    assert r.engine.overrides == {"gradient_clipping": 0.5}


def test_bad_override_is_named(tmp_path):
    f = write(tmp_path / "r.yaml", {})
    with pytest.raises(RecipeError, match=r"train.stepz: unknown key"):
        load_recipe(f, ["train.stepz=3"])
    with pytest.raises(RecipeError, match="expected key.path=value"):
        load_recipe(f, ["train.lr"])


def test_extends_merges_nested_and_detects_cycles(tmp_path):
    write(tmp_path / "base.yaml", {"train": {"lr": 0.5, "max_steps": 3}, "model": {"seed": 4}})
    child = write(tmp_path / "child.yaml", {"extends": "base.yaml", "train": {"lr": 0.25}})
    r = load_recipe(child)
    assert (r.train.lr, r.train.max_steps, r.model.seed) == (0.25, 3, 4)
    write(tmp_path / "x.yaml", {"extends": "y.yaml"})
    write(tmp_path / "y.yaml", {"extends": "x.yaml"})
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "x.yaml")


def test_extends_missing_base(tmp_path):
    f = write(tmp_path / "r.yaml", {"extends": "nope.yaml"})
    with pytest.raises(RecipeError, match="extends: 'nope.yaml'"):
        load_recipe(f)


def test_yaml_is_safe_loaded(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(f)


def test_checks_missing_shards_and_unknown_model(tmp_path):
    f = write(
        tmp_path / "r.yaml",
        {"model": {"name": "not a model"}, "data": {"train": str(tmp_path / "nope")}},
    )
    problems = check_recipe(load_recipe(f))
    assert any(p.startswith("model.name:") for p in problems)
    assert any(p.startswith("data.train:") and "does not exist" in p for p in problems)
    (tmp_path / "shards").mkdir()
    f2 = write(tmp_path / "r2.yaml", {"data": {"train": str(tmp_path / "shards")}})
    assert any("no manifest.json" in p for p in check_recipe(load_recipe(f2)))


def test_shipped_recipes_dir_exists():
    assert RECIPES_DIR.is_dir()
