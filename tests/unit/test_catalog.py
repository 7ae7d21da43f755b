"""The catalog is the one list: every method, loss and family in it validates in a recipe and
resolves to its implementation, and nothing is implemented that the catalog does not name."""

from __future__ import annotations

import importlib
import typing

import pytest

from vlalign import catalog
from vlalign.config.loading import load_recipe, shipped_recipes
from vlalign.config.schema import METHOD_SECTIONS, ModelConfig, Recipe
from vlalign.losses import FUNCTIONS, LOSSES, resolve_loss
from vlalign.methods.base import Method, load_method


def _method_for(loss: str) -> str:
    kind = catalog.LOSSES[loss].kind
    return next(m.name for m in catalog.METHODS.values() if m.loss_kind == kind)


@pytest.mark.parametrize("name", list(catalog.METHODS))
def test_every_method_validates_and_loads(name):
    info = catalog.METHODS[name]
    recipe = Recipe(method={"name": name})
    assert recipe.method.name == name and recipe.method.loss == info.default_loss
    assert type(recipe.method) is METHOD_SECTIONS[name]
    method = load_method(recipe.method)
    assert isinstance(method, Method)
    assert method.batch_kind == info.batch_kind
    assert type(method) is importlib.import_module(info.module).METHOD


@pytest.mark.parametrize("name", list(catalog.LOSSES))
def test_every_loss_validates_in_a_recipe_and_resolves_to_its_function(name):
    info = catalog.LOSSES[name]
    method = _method_for(name)
    section = {"name": method, "loss": name}
    if info.reference_free and "reference" in METHOD_SECTIONS[method].model_fields:
        section["reference"] = "none"
    recipe = Recipe(method=section)
    assert recipe.method.loss == name
    spec = resolve_loss(method, name)
    assert spec.fn is FUNCTIONS[name]
    assert (spec.kind, spec.reference_free, spec.uses_label_smoothing) == (
        info.kind,
        info.reference_free,
        info.label_smoothing,
    )


def test_no_loss_function_outside_the_catalog():
    assert set(FUNCTIONS) == set(catalog.LOSSES) == set(LOSSES)
    assert set(METHOD_SECTIONS) == set(catalog.METHODS)


@pytest.mark.parametrize("name", catalog.losses_for("dpo"))
def test_label_smoothing_only_where_the_loss_takes_it(name):
    section = {"name": "dpo", "loss": name, "label_smoothing": 0.1}
    if catalog.LOSSES[name].reference_free:
        section["reference"] = "none"
    if catalog.LOSSES[name].label_smoothing:
        assert Recipe(method=section).method.label_smoothing == 0.1
    else:
        with pytest.raises(ValueError, match="label_smoothing"):
            Recipe(method=section)


def test_a_method_knob_is_not_a_field_of_another_method():
    with pytest.raises(ValueError, match="beta"):
        Recipe(method={"name": "sft", "beta": 0.1})
    with pytest.raises(ValueError, match="nll_weight"):
        Recipe(method={"name": "kto", "nll_weight": 1.0})


@pytest.mark.parametrize("name", list(catalog.FAMILIES))
def test_every_family_validates_and_its_built_in_resolves(name):
    info = catalog.FAMILIES[name]
    assert ModelConfig(name="org/model", family=name).family == name
    assert name in typing.get_args(ModelConfig.model_fields["family"].annotation)
    if info.builtin:
        assert Recipe(model={"name": info.builtin}).family == name
    for model_type in info.model_types:
        assert catalog.family_of_model_type(model_type) == name
    from vlalign.models.families import family

    assert family(name) is importlib.import_module(info.module).FAMILY


def test_shipped_recipes_say_what_they_train():
    """A recipe named after a loss trains that loss (tiny/dpo-robust trains robust DPO)."""
    for ref, path in shipped_recipes().items():
        recipe = load_recipe(path)
        variant = ref.rsplit("/", 1)[-1].removeprefix("dpo-")
        if variant in catalog.LOSSES:
            assert recipe.method.loss == variant, ref
        if variant in catalog.METHODS:
            assert recipe.method.name == variant, ref
    assert load_recipe(shipped_recipes()["tiny/dpo-robust"]).method.loss == "robust"
    assert load_recipe(shipped_recipes()["tiny/dpo-conservative"]).method.label_smoothing > 0
