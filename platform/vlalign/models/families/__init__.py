"""Model families: one module per family, found through the catalog.

`family(name)` imports the module `vlalign.catalog.FAMILIES[name].module` names and returns its
`FAMILY` object (a `vlalign.models.families.base.Family`). `family_of(model)` finds the family of
a loaded transformers model by its config's model_type. To add a family: write its module (a
`Family` subclass overriding what differs, and `FAMILY = ThatFamily()`), add its catalog entry.
"""

from __future__ import annotations

import importlib
from functools import cache

from vlalign import catalog
from vlalign.errors import VlalignError
from vlalign.models.families.base import Family


@cache
def family(name: str) -> Family:
    """The family object of catalog family `name`."""
    info = catalog.FAMILIES.get(name)
    if info is None:
        raise VlalignError(
            f"model.family: unknown family {name!r} (known: {', '.join(catalog.FAMILIES)})"
        )
    obj = importlib.import_module(info.module).FAMILY
    if obj.name != name:
        raise VlalignError(f"{info.module}.FAMILY is {obj.name!r}, not {name!r}")
    return obj


def all_families() -> list[Family]:
    """Every catalog family, in catalog order."""
    return [family(n) for n in catalog.FAMILIES]


def family_of(model) -> Family | None:
    """The family of a (possibly PEFT/DeepSpeed-wrapped) transformers model, or None."""
    config = getattr(model, "config", None)
    while config is None or not hasattr(config, "model_type"):
        inner = getattr(model, "get_base_model", None)
        if inner is not None:
            model = inner()
        elif hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "policy"):
            model = model.policy
        else:
            return None
        config = getattr(model, "config", None)
    name = catalog.family_of_model_type(config.model_type)
    return family(name) if name else None


__all__ = ["Family", "all_families", "family", "family_of"]
