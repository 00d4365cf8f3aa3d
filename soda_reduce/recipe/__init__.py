"""Recipes: the commands that do the work of one plan step (contract: docs/recipes.md).

The registry maps recipe names to the modules that define them and imports a
module only when its recipe is called: ``python -m soda_reduce.recipe
core.noop`` must not pay for importing ccdproc. External pipelines (esorex,
aaorun, PypeIt...) are added without code by a JSON file named in
``SODA_REDUCE_EXTERNAL_RECIPES`` (see ``soda_reduce.recipe.external``).
"""

from __future__ import annotations

from importlib import import_module

from soda_reduce.recipe.contract import Recipe

# recipe name -> module whose RECIPES dict defines it
BUILTIN: dict[str, str] = {
    "ccd.master_bias": "soda_reduce.pipelines.ccd.recipes_calib",
    "ccd.master_dark": "soda_reduce.pipelines.ccd.recipes_calib",
    "ccd.master_flat": "soda_reduce.pipelines.ccd.recipes_calib",
    "ccd.science": "soda_reduce.pipelines.ccd.recipes_science",
    "ccd.stack": "soda_reduce.pipelines.ccd.recipes_stack",
    "core.noop": "soda_reduce.recipe.noop",
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (KeyError naming the known recipes if there is none)."""
    module = BUILTIN.get(name)
    if module is not None:
        return import_module(module).RECIPES[name]
    from soda_reduce.recipe.external import external_recipes

    external = external_recipes()
    if name in external:
        return external[name]
    known = ", ".join(recipe_names())
    raise KeyError(f"unknown recipe {name!r} (known: {known})")


def recipe_names() -> list[str]:
    from soda_reduce.recipe.external import external_recipes

    return sorted({*BUILTIN, *external_recipes()})


__all__ = ["BUILTIN", "Recipe", "get_recipe", "recipe_names"]
