"""Recipes: the commands that do the work of one plan step (contract: docs/recipes.md).

A recipe is found through the pipeline registry (``soda_reduce.pipelines``):
``kast.science`` belongs to the ``kast`` plug-in, and only that plug-in is
loaded to run it. ``core.*`` recipes belong to the machinery itself. External
commands can also be declared without code, by a JSON file named in
``SODA_REDUCE_EXTERNAL_RECIPES`` (see ``soda_reduce.recipe.external``).
"""

from __future__ import annotations

from soda_reduce.recipe.contract import Recipe


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (KeyError naming the known recipes if there is none)."""
    from soda_reduce.pipelines import PipelineError, find_recipe
    from soda_reduce.recipe.external import external_recipes

    external = external_recipes()
    if name in external:
        return external[name]
    try:
        return find_recipe(name)
    except (KeyError, PipelineError) as exc:
        known = ", ".join(recipe_names())
        raise KeyError(f"unknown recipe {name!r}: {exc.args[0]} (known: {known})") from None


def recipe_names() -> list[str]:
    from soda_reduce.pipelines import recipe_names as registered
    from soda_reduce.recipe.external import external_recipes

    return sorted({*registered(), *external_recipes()})


__all__ = ["Recipe", "get_recipe", "recipe_names"]
