"""Recipe schema, YAML loading, `a.b=value` overrides and validation: the one place a recipe is read."""

from vlalign.config.loading import load_recipe, recipe_to_yaml, resolve_recipe_dict
from vlalign.config.schema import Recipe

__all__ = ["Recipe", "load_recipe", "recipe_to_yaml", "resolve_recipe_dict"]
